"""Proof of life in the VM: doctor's facts on a kernel with kprobes."""
import json
import subprocess
import sys

from tooling import ROOT


def test_doctor_sees_kprobes_and_matching_headers():
    out = subprocess.run([sys.executable, "-m", "bpfprobes.cli.main", "doctor", "--json"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    assert r["features"]["kprobes"] is True, r["evidence"]
    assert r["features"]["kretprobes"] is True, r["evidence"]
    assert r["headers"]["status"] == "matching", r["headers"]
    assert r["tools"]["opensnoop"].startswith("kprobes")
