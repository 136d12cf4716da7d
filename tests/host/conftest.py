"""Host tier: real BPF on this machine's kernel. It cannot run without root and
BCC, and says so by failing, never by skipping."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tooling import build_probe_target, unprivileged_copy


@pytest.fixture(autouse=True, scope="session")
def _real_bpf_possible():
    if os.geteuid() != 0:
        pytest.fail("the host tier needs root (real BPF): run `make test` as root", pytrace=False)
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.fail("BCC is not importable: run the tests from .venv (make test)", pytrace=False)


@pytest.fixture(scope="session")
def target_bin(tmp_path_factory) -> str:
    """The probe target at -O0 (every PROBED function a real call), shared by the tests."""
    return build_probe_target(tmp_path_factory.mktemp("target"), "-O0")


@pytest.fixture(scope="session")
def world_readable_package():
    """This checkout's package and its dependencies in a root-owned 0755 directory
    (removed after): what an ordinary user can import when the checkout itself
    sits in a 0700 directory, as a clone in /root or `mktemp -d` does."""
    dest = Path(tempfile.mkdtemp(prefix="bpfprobes-unpriv-"))
    try:
        yield unprivileged_copy(dest)
    finally:
        shutil.rmtree(dest)
