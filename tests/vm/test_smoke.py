"""Proof of life in the VM: doctor's facts on a kernel with kprobes, the guest's
architecture as the kernel matrix names it."""
import json
import subprocess
import sys

import pytest

import kernels
from tooling import ROOT

pytestmark = pytest.mark.smoke


def test_doctor_sees_kprobes_and_matching_headers(vm_kernel):
    out = subprocess.run([sys.executable, "-m", "bpfprobes.cli.main", "doctor", "--json"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    k = kernels.get(vm_kernel)
    assert r["kernel"]["arch"] == k.arch, r["kernel"]
    assert k.release_matches(r["kernel"]["release"]), r["kernel"]
    assert r["features"]["kprobes"] is True, r["evidence"]
    assert r["features"]["kretprobes"] is True, r["evidence"]
    assert r["headers"]["status"] == "matching", r["headers"]
    assert r["tools"]["opensnoop"].startswith("kprobes")
    assert r["syscall_prefix"] == {"x86_64": "__x64_sys_", "aarch64": "__arm64_sys_"}[k.arch]
