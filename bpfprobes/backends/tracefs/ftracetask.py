"""Which process an ftrace text event's task belonged to.

trace_pipe prints TID exactly (the record's own), but the TGID and COMM
columns come from ftrace's caches *as they are when the line is read*. The
kernel refreshes them for a task at the first context switch after it traced
something, so a task read before that shows "(-------)" and "<...>", or, when
its TID once belonged to another task, that task's process and name: a stale
TGID files the event under the wrong process and `-p PID` drops it.

So each line is checked against the task holding its TID when it is handled:

- one that started no later than the event (/proc/TID/stat starttime, boot
  clock, whole clock ticks) is the event's own task, as a TID names one live
  task: its process is /proc's (and its name too, where ftrace had none);
- otherwise the event's task has exited, and exiting switched it out, which
  refreshed ftrace's entry for its TID. The column, printed earlier, may
  predate that, so the entry is read again now (saved_tgids: numbers only,
  unlike saved_cmdlines, whose names a traced program controls).

Left open: a TID reused within one clock tick of its event, and a TID reused
(and its holder switched) between the event's exit and the re-read.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple, Sequence

from bpfprobes.backends.tracefs.tracepipe import Line
from bpfprobes.base.safetext import decode_exact

UNKNOWN_COMM = "<...>"          # ftrace's name for a task its comm cache does not hold
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
_SLACK_NS = 1_000               # the text's timestamps are in whole microseconds


class Task(NamedTuple):
    started_ns: int             # boot clock, rounded down to a tick
    pid: int
    where: str                  # its /proc directory


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _started_ns(stat: bytes) -> int | None:
    try:    # the comm field is in parentheses and may hold anything: fields follow the last ")"
        return int(stat[stat.rindex(b")") + 2:].split()[19]) * _TICK_NS
    except (ValueError, IndexError):
        return None


def _tgid(status: bytes) -> int | None:
    for line in status.splitlines():
        if line.startswith(b"Tgid:"):
            return int(line.split()[1])
    return None


def live_task(tid: int, tgid: int | None) -> Task | None:
    """The task holding TID now, or None. Where ftrace's column names its
    process, one read says so; else its own /proc entry is asked."""
    if tgid is not None:
        stat = _read(f"/proc/{tgid}/task/{tid}/stat")
        started = _started_ns(stat) if stat else None
        if started is not None:
            return Task(started, tgid, f"/proc/{tgid}/task/{tid}")
    stat, status = _read(f"/proc/{tid}/stat"), _read(f"/proc/{tid}/status")
    started = _started_ns(stat) if stat else None
    pid = _tgid(status) if status else None
    return None if started is None or pid is None else Task(started, pid, f"/proc/{tid}")


def saved_tgids(tracefs: Path) -> dict[int, int]:
    """ftrace's TID -> process cache as it is now."""
    text = _read(str(tracefs / "saved_tgids")) or b""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[0])] = int(parts[1])
    return out


def _boot_minus_mono_ns() -> int:
    """The boot clock (task start times) less the mono clock (our trace_clock)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def resolve(lines: Sequence[Line], tracefs: Path) -> None:
    """Set each line's pid to its task's process, and a "<...>" comm to the
    live task's name where there is one."""
    offset = _boot_minus_mono_ns() + _SLACK_NS
    gone, seen = [], {}
    for ln in lines:
        if (ln.tid, ln.pid) not in seen:
            seen[(ln.tid, ln.pid)] = live_task(ln.tid, ln.pid)
        task = seen[(ln.tid, ln.pid)]
        if task is None or task.started_ns > ln.ts_ns + offset:
            gone.append(ln)
            continue
        ln.pid = task.pid
        if ln.comm == UNKNOWN_COMM:
            name = _read(f"{task.where}/comm")
            ln.comm = decode_exact(name.removesuffix(b"\n")) or ln.comm if name else ln.comm
    if gone:
        now = saved_tgids(tracefs)          # read after every check above found them gone
        for ln in gone:
            ln.pid = now.get(ln.tid) or ln.pid or ln.tid
