"""The process's one handler of stop signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT):
installed first thing in a tool's main, before anything is planned or created,
it only records. Set-up checks between its steps (Stopped at the next phase
boundary), the poll loop reads what it recorded, and a blocking wait in the
BPF backend (an in-process BCC compile, the compile child) asks `recorder()`.
"""
from __future__ import annotations

import atexit
import signal
import threading

# The signals that end a run. SIGPIPE is not among them: Python ignores it, and a
# write to a closed stdout raises BrokenPipeError, which ends the run as
# "output-closed" (a handler for it would also fire for any socket we write).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Stopped(Exception):
    """A stop signal seen during set-up (before the run loop): raised by
    StopSignals.check at the next phase boundary, so that every `with`/ExitStack
    on the way out tears down what exists; cli/common.main says it in one line."""

    def __init__(self, signum: int, phase: str) -> None:
        self.signum = signum
        self.phase = phase
        super().__init__(f"stopped by {self.name} during set-up ({phase})")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopSignals:
    """The process's one handler of stop signals, installed at the start of a
    tool's main (install_stop_signals), before anything is planned or created.

    The handler only records: it never raises, because an exception at an
    arbitrary bytecode could fall between creating a kernel object and recording
    it for teardown, and a second Ctrl-C could cut a teardown half way. Set-up
    calls check(phase) between its steps, the run loop reads `caught`, and a
    blocking wait below this layer (progcache's compile child) finds the
    recorder through `recorder()` and reads `caught` too."""

    def __init__(self) -> None:
        self.caught: int | None = None      # the first stop signal; later ones change nothing
        self.reloads = 0                    # SIGHUPs, where a tool made it mean "reload"
        self._reload: set[int] = set()
        self._saved: dict = {}

    def __call__(self, signum: int, _frame) -> None:
        if signum in self._reload:
            self.reloads += 1
        elif self.caught is None:
            self.caught = signum

    def reload_on(self, signum: int) -> None:
        """From now on `signum` (serve: SIGHUP) asks for a reload, counted in
        `reloads`, and no longer stops the run: handled even where it was ignored
        (nohup), since a reload is what a service's SIGHUP means."""
        self._reload.add(signum)
        if signum not in self._saved:
            self._saved[signum] = signal.signal(signum, self)

    def check(self, phase: str) -> None:
        """Raise Stopped if a stop signal came; `phase` says where set-up was."""
        if self.caught is not None:
            raise Stopped(self.caught, phase)

    @property
    def reason(self) -> str | None:
        """The run's stop reason (`signal:SIGINT`), or None."""
        return None if self.caught is None else f"signal:{signal.Signals(self.caught).name}"

    def install(self) -> "StopSignals":
        for s in STOP_SIGNALS:
            # ignored by whoever started us (nohup; a script's background job, whose
            # SIGINT/SIGQUIT the shell ignores): it stays ignored, as they meant
            if signal.getsignal(s) != signal.SIG_IGN:
                self._saved[s] = signal.signal(s, self)
        return self

    # a context manager for library callers that run without a tool's main
    def __enter__(self) -> "StopSignals":
        return self

    def __exit__(self, *exc) -> None:
        pass


_process: StopSignals | None = None


def install_stop_signals() -> StopSignals:
    """The one place that installs the stop-signal handlers (cli/common.main calls
    it first thing); idempotent: later callers get the same recorder. Off the main
    thread (a library caller's worker) nothing can be installed: a recorder that
    sees no signal is returned, and the caller's own handling stays."""
    global _process
    if _process is None:
        if threading.current_thread() is not threading.main_thread():
            return StopSignals()
        _process = StopSignals().install()
        atexit.register(_ignore_from_now_on, _process)
    return _process


def _ignore_from_now_on(recorder: StopSignals) -> None:
    """At interpreter exit, after teardown: Python would put the default actions
    back for its last steps, and one more Ctrl-C would then kill the process and
    change its exit status; ignored, it cannot."""
    for s in recorder._saved:
        signal.signal(s, signal.SIG_IGN)


def recorder() -> StopSignals | None:
    """The recorder a tool's main installed, or None (a library caller's own
    handling is left alone)."""
    return _process


def forget() -> None:
    """In a forked child that leaves stopping to its parent (progcache's compile
    child ignores stop signals): no recorder, so a blocking call there runs
    plainly rather than on a thread watched for a signal that cannot come."""
    global _process
    _process = None


def stop_signals() -> StopSignals:
    """The process's recorder: installed by the tool's main, else here (a caller
    that uses this module without a tool's main, e.g. a test)."""
    return install_stop_signals()
