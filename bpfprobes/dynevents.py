"""The kernel's own dynamic events as a tracing backend: kprobe_events and
uprobe_events lines, enabled in a trace instance of our own, read from its
trace_pipe. No BCC, no compiler, no headers.

Everything we create is named for this process: the events' group is
`bpfprobes_PID`, the instance `instances/bpfprobes-PID`. Other users of
tracefs (their events, the top-level buffer, their instances) are never
touched; a run killed before it could clean up is cleaned by the next start,
which removes only groups and instances whose PID is gone. Removing the
instance first matters: an event enabled anywhere cannot be deleted.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from .errors import KernelError

GROUP = "bpfprobes_{pid}"
INSTANCE = "bpfprobes-{pid}"
_OUR_GROUP = re.compile(r"^[pr]\d*:(bpfprobes_(\d+)/\S+)\s", re.M)
_OUR_INSTANCE = re.compile(r"^bpfprobes-(\d+)$")
EVENT_FILES = {"kprobe": "kprobe_events", "uprobe": "uprobe_events"}


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _append(path: Path, line: str) -> None:
    """One write of one line, without truncating: Python's open(..., "a") seeks to
    the end, which these files refuse (EINVAL)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def remove_dead_events(tracefs: Path, pattern: re.Pattern) -> list[str]:
    """Remove the kprobe/uprobe events `pattern` matches (group 1: GROUP/EVENT,
    group 2: the PID that made them) whose PID is gone; what was removed."""
    removed = []
    for name in EVENT_FILES.values():
        path = tracefs / name
        try:
            text = path.read_text()
        except OSError:
            continue
        for m in pattern.finditer(text):
            if not _alive(int(m.group(2))):
                try:
                    _append(path, f"-:{m.group(1)}")
                    removed.append(m.group(1))
                except OSError:
                    pass            # enabled somewhere still: the next start tries again
    return removed


def reap(tracefs: Path) -> list[str]:
    """Remove the instances and events of our runs that are gone; what was removed."""
    removed = []
    instances = tracefs / "instances"
    if instances.is_dir():
        for d in instances.iterdir():
            m = _OUR_INSTANCE.match(d.name)
            if m and not _alive(int(m.group(1))):
                try:
                    d.rmdir()
                    removed.append(f"instances/{d.name}")
                except OSError:
                    pass
    return removed + remove_dead_events(tracefs, _OUR_GROUP)


class Session:
    """Our instance and our events, removed on close (a context manager)."""

    def __init__(self, tracefs: Path, pid: int | None = None, buffer_kb: int = 4096,
                 stacks: bool = False) -> None:
        self.tracefs = tracefs
        self.pid = os.getpid() if pid is None else pid
        self.group = GROUP.format(pid=self.pid)
        self.instance = tracefs / "instances" / INSTANCE.format(pid=self.pid)
        self.events: list[tuple[str, str]] = []       # (kprobe|uprobe, event name)
        try:
            self.instance.mkdir()
        except OSError as e:
            raise KernelError(f"cannot create the trace instance {self.instance}: {e.strerror}",
                              "tracefs instances need root and a kernel with them (4.2+)")
        try:
            self._write("buffer_size_kb", str(buffer_kb))
            if (self.instance / "buffer_percent").exists():
                self._write("buffer_percent", "0")        # wake the reader at any event
            self._write("options/record-tgid", "1")      # the process, not only the thread
            if stacks:
                self._write("options/stacktrace", "1")
        except BaseException:
            self.close()
            raise

    def _write(self, rel: str, text: str) -> None:
        (self.instance / rel).write_text(text)

    def add(self, kind: str, line: str, event: str) -> None:
        """Register one kprobe_events/uprobe_events `line` (its group is ours) and
        enable it in our instance only."""
        path = self.tracefs / EVENT_FILES[kind]
        try:
            _append(path, line)
        except OSError as e:
            reason = {errno.ENOENT: "no such function or file offset",
                      errno.EINVAL: "the kernel refused the definition",
                      errno.EEXIST: "the event exists already"}.get(e.errno, e.strerror)
            log = self._error_log()
            raise KernelError(f"cannot add {EVENT_FILES[kind]} line {line!r}: {reason}",
                              log or "see the kernel's tracing/error_log") from e
        self.events.append((kind, event))
        try:
            self._write(f"events/{self.group}/{event}/enable", "1")
        except OSError as e:
            raise KernelError(f"cannot enable {self.group}/{event}: {e.strerror}") from e

    def _error_log(self) -> str:
        try:
            lines = (self.tracefs / "error_log").read_text().strip().splitlines()
        except OSError:
            return ""
        return " ".join(ln.strip() for ln in lines[-3:])

    def pipe(self) -> int:
        """A non-blocking fd on our instance's trace_pipe."""
        return os.open(self.instance / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)

    def overrun(self) -> int:
        """Events the ring buffer overwrote before they were read (every CPU)."""
        total = 0
        per_cpu = self.instance / "per_cpu"
        for cpu in per_cpu.iterdir() if per_cpu.is_dir() else ():
            try:
                stats = (cpu / "stats").read_text()
            except OSError:
                continue
            m = re.search(r"^overrun: (\d+)", stats, re.M)
            total += int(m.group(1)) if m else 0
        return total

    def close(self) -> None:
        """Instance first (it disables what is enabled in it), then our events."""
        try:
            self.instance.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            for kind, event in self.events:
                try:
                    self._write(f"events/{self.group}/{event}/enable", "0")
                except OSError:
                    pass
            try:
                self.instance.rmdir()
            except OSError:
                pass            # the next start reaps it
        for kind, event in reversed(self.events):
            try:
                _append(self.tracefs / EVENT_FILES[kind], f"-:{self.group}/{event}")
            except OSError:
                pass            # the next start reaps it
        self.events = []

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
