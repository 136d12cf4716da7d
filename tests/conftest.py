import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_configure(config):
    """Each session its own temporary root: pytest's shared /tmp/pytest-of-USER keeps
    only the last three sessions' directories, so a second run on the machine (another
    checkout's tests) would delete this one's files under its running tests."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="bpfprobes-tests-")
        config._bpfprobes_basetemp = config.option.basetemp


def pytest_unconfigure(config):
    made = getattr(config, "_bpfprobes_basetemp", None)
    if made is not None:
        import shutil
        shutil.rmtree(made, ignore_errors=True)
