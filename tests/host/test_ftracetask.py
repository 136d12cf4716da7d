"""ftracetask.resolve against this machine's real /proc and ftrace: trace_pipe's
TGID and COMM columns are caches read at print time, so a TID that once
belonged to another process's thread prints that process (the CI failure this
guards: a `-p PID` run dropped every event of its target, whose TID had been a
thread of another process). Checked with real tasks whose ids and start times
are known; the lines are what tracepipe makes of a trace_pipe line."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from bpfprobes.backends.tracefs import ftracetask
from bpfprobes.backends.tracefs.ftracetask import UNKNOWN_COMM
from bpfprobes.backends.tracefs.tracepipe import Line

TRACEFS = Path("/sys/kernel/tracing")


def _mono_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _line(tid: int, tgid: int | None, comm: str, ts_ns: int) -> Line:
    return Line(event="e", comm=comm, tid=tid, pid=tgid, cpu=0, flags="....", ts_ns=ts_ns,
                where=None, values={})


def _resolved(tid: int, tgid: int | None, comm: str, ts_ns: int) -> tuple[int, str]:
    ln = _line(tid, tgid, comm, ts_ns)
    ftracetask.resolve([ln], TRACEFS)
    return ln.pid, ln.comm


class _Thread:
    """A live thread of this process, its TID known, until the block ends."""

    def __enter__(self) -> int:
        self.done, self.ready = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)
        return self.tid

    def _run(self) -> None:
        self.tid = threading.get_native_id()
        self.ready.set()
        self.done.wait(30)

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(10)


def test_a_stale_process_column_is_corrected_from_the_live_task():
    other = os.getppid()                      # a real process that does not hold the thread
    with _Thread() as tid:
        assert tid != os.getpid()
        assert _resolved(tid, other, "cached-name", _mono_ns()) == (os.getpid(), "cached-name")


def test_dashes_and_an_unknown_name_are_filled_from_the_live_task():
    with _Thread() as tid:
        got = _resolved(tid, None, UNKNOWN_COMM, _mono_ns())
        name = open(f"/proc/{os.getpid()}/task/{tid}/comm").read().rstrip("\n")
    assert got == (os.getpid(), name)


def test_a_right_column_is_kept():
    with _Thread() as tid:
        assert _resolved(tid, os.getpid(), "x", _mono_ns()) == (os.getpid(), "x")


def test_a_task_born_after_the_event_is_not_the_events_task():
    """The TID's holder now was born after the event: the event's task has
    exited, and the process is ftrace's entry for the TID as it is now (the
    column was printed before; here it names a process that never held it)."""
    before = _mono_ns() - 2_000_000_000        # two seconds: well over one clock tick
    child = subprocess.Popen(["sleep", "30"])
    try:
        now = ftracetask.saved_tgids(TRACEFS).get(child.pid)
        got, _ = _resolved(child.pid, 4242, "old", before)
        assert got == (now or 4242)
        # the same task, asked about a moment it was alive, is itself
        assert _resolved(child.pid, 4242, "old", _mono_ns()) == (child.pid, "old")
    finally:
        child.kill()
        child.wait()


def test_a_gone_task_takes_ftraces_entry_as_it_is_now():
    child = subprocess.Popen(["true"])
    child.wait()                               # reaped: no task holds its id now
    entry = ftracetask.saved_tgids(TRACEFS).get(child.pid)
    assert _resolved(child.pid, 777, "gone", _mono_ns()) == (entry or 777, "gone")
    assert _resolved(child.pid, None, UNKNOWN_COMM, _mono_ns()) == \
        (entry or child.pid, UNKNOWN_COMM)


def test_saved_tgids_reads_numbers_only():
    got = ftracetask.saved_tgids(TRACEFS)
    assert all(isinstance(k, int) and isinstance(v, int) for k, v in got.items())
