import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_configure(config):
    _stop_signals_as_from_a_terminal()
    _basetemp(config)


def _stop_signals_as_from_a_terminal() -> None:
    """The tools the tests start are stopped as a user at a terminal stops them
    (Ctrl-C, Ctrl-\\). A shell's background job (`make test &`, nohup, a CI step
    run with &) starts us with SIGINT and SIGQUIT ignored, which every child would
    inherit, and a tool rightly keeps a signal its starter ignored
    (base/signals.py): give the children the terminal's default instead."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _basetemp(config) -> None:
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
