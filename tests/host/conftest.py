"""Host tier: real BPF on this machine's kernel. It cannot run without root and
BCC, and says so by failing, never by skipping."""
import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _real_bpf_possible():
    if os.geteuid() != 0:
        pytest.fail("the host tier needs root (real BPF): run `make test` as root", pytrace=False)
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.fail("BCC is not importable: run the tests from .venv (make test)", pytrace=False)
