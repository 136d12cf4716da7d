"""The tracefs backend of a session: the probe plan's specs as kernel dynamic
events (dynevents.py) in a trace instance of our own, read from its
trace_pipe (tracepipe.py): no BCC, no headers.
"""
from __future__ import annotations

import contextlib
import os
import re
import select
import time
from dataclasses import replace

from bpfprobes.backends.tracefs import dynevents, ftracetask, tracepipe
from bpfprobes.base import signals
from bpfprobes.base.safetext import decode_exact
from bpfprobes.kernel.running import Kernel
from bpfprobes.plan import spec
from bpfprobes.plan.probeplan import Plan

READ_BYTES = 1 << 20
# How long one read of trace_pipe may go on: under a storm the pipe never runs
# dry, and the loop must get back to signals and the duration. At a stop, what
# is still unread after FINISH_S is counted lost (the instance goes with it).
DRAIN_S = 0.05
FINISH_S = 0.5
# Every event of ours also records its task's name ($comm) in the record itself:
# trace_pipe's COMM column is a cache read at print time (a task gone by then
# shows "<...>", a reused PID another task's name; see ftracetask.py)
COMM_FIELD = "bpfprobes_comm"
COMM_ARG = f"{COMM_FIELD}=$comm"


def kind_letter(slot) -> str:
    """A payload slot's type as tracepipe reads values."""
    k = slot.type.kind
    return "symbol" if k == "symbol" else k if k in ("u", "s", "x") else "string"


class TracefsBackend:
    def __init__(self, kernel: Kernel, plan: Plan, buffer_kb: int, stacks: bool) -> None:
        self.kernel, self.plan = kernel, plan
        self.buffer_kb, self.stacks = buffer_kb, stacks
        self.names_of = {p.event: [(s.name, kind_letter(s)) for s in p.layout.slots]
                         + [(COMM_FIELD, "string")] for p in plan.probes}
        self.session: dynevents.Session | None = None
        self.lines: list[str] = []          # each event's line, as shown (the real path)

    def load(self, teardown: contextlib.ExitStack, stop: signals.StopSignals) -> None:
        # the Session removes whatever it holds on the way out; the recorder never
        # raises, so a signal cannot fall between writing an event and recording it
        self.session = teardown.enter_context(
            dynevents.Session(self.kernel.tracefs, buffer_kb=self.buffer_kb, stacks=self.stacks))
        stop.check("creating the trace instance")
        (self.session.instance / "trace_clock").write_text("mono")  # bpf_ktime_get_ns()'s clock

    def transport(self) -> "TracePipe":
        return TracePipe(self.session.pipe(), self.session, self.names_of)

    def attach(self, stop: signals.StopSignals) -> None:
        k = self.kernel
        for p in self.plan.probes:
            stop.check("adding events")
            up = p.uprobe.file_offset if p.uprobe else None
            s = replace(p.spec, group=self.session.group, event=p.event)
            line = spec.to_kprobe_events(s, k.abi, uprobe_offset=up) + " " + COMM_ARG  # shown
            # written: /proc/self/fd/N of the checked file, held open, which the kernel
            # resolves to that inode whatever a directory of the path became
            written = line if p.uprobe is None else spec.to_kprobe_events(
                replace(s, path=p.uprobe.target), k.abi, uprobe_offset=up) + " " + COMM_ARG
            self.session.add("uprobe" if p.spec.is_uprobe else "kprobe", written, p.event)
            self.lines.append(line)
        stop.check("adding events")

    def live(self) -> tuple[list[str], str | None, dict]:
        return list(self.lines), None, {"instance": str(self.session.instance),
                                        "events": list(self.lines)}

    def notes(self) -> list[str]:
        return [f"tracefs: {ln}" for ln in self.lines]

    def while_attached(self) -> dict:
        return {}


class TracePipe:
    """Our instance's trace_pipe as a loop.run transport: parsed Lines go to the
    sample callback (a Gate), the buffer's overrun is the loss. Each read() is
    checked as a whole by tracepipe.Reader against the records it consumed (the
    per-CPU `read events` counters: nobody else reads our instance), so a line
    that a string value or a comm forged is never handed on as a normal event.
    A Line is handed on once its stack lines (-s) are in: when the next event
    comes, or a poll finds nothing more."""

    kind = "trace_pipe"
    throttled = 0               # no rate limit here (refused up front)
    recursion_misses = 0        # no BPF program to skip

    def __init__(self, fd: int, session: dynevents.Session | None,
                 names_of: dict[str, list]) -> None:
        self.fd, self.session = fd, session
        self.reader = tracepipe.Reader(names_of)
        self.on_sample = None
        self.partial = b""
        self.partial_records = 0
        self.skipped = 0                    # left unread at a stop: counted lost
        self.stats = _open_stats(session)
        self.consumed = self._records_read()

    def open(self, on_sample) -> None:
        self.on_sample = on_sample

    def poll(self, timeout_ms: int) -> None:
        # poll, not select(): a descriptor may be past 1023 (fdlimit)
        waiting = select.poll()
        waiting.register(self.fd, select.POLLIN)
        waiting.poll(timeout_ms)

    def drain(self) -> None:
        """What trace_pipe has now, read without waiting: its poll wakes only at
        buffer_percent, so a quiet trickle is read on the run loop's timer."""
        if not self._read(DRAIN_S):
            self._hand_on(self.reader.flush())  # no more stack lines can follow a quiet poll
        else:
            self._hand_on(self.reader.take())

    def finish(self) -> None:
        """What was traced up to the stop, within FINISH_S; the rest is counted
        lost, not left unsaid."""
        self._read(FINISH_S)
        self.skipped = self._unread()
        if self.partial:                    # a line the kernel never ended: not trusted
            self.reader.feed([decode_exact(self.partial)], -1)   # -1 records: tainted
            self.partial = b""
        self._hand_on(self.reader.flush())

    def close(self) -> None:
        """The pipe and the per-CPU stats files: open, they keep the instance
        from being removed (teardown closes this before the instance goes)."""
        for f in self.stats:
            os.close(f)
        self.stats = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def lost(self) -> int:
        """Overrun from the stats files held open (read every poll; the Session's
        own count, which opens them, where they could not be held), plus what a
        stop left unread."""
        if self.stats:
            overrun = sum(v or 0 for v in self._stat_values(_OVERRUN))
        else:
            overrun = self.session.overrun() if self.session is not None else 0
        return overrun + self.skipped

    def _hand_on(self, lines: list) -> None:
        for ln in lines:                # the name the record holds, where it reads as one
            comm = ln.values.pop(COMM_FIELD, None)
            if comm is not None and comm != tracepipe.FAULT:
                ln.comm = comm
        if self.session is not None:    # ftrace's process column is a cache: checked
            ftracetask.resolve(lines, self.session.tracefs)
        for line in lines:
            self.on_sample(line)

    def _stat_values(self, field: re.Pattern) -> list[int | None]:
        """One field of each CPU's stats file (None where it cannot be read)."""
        out: list[int | None] = []
        for f in self.stats:
            try:
                m = field.search(os.pread(f, 4096, 0))
            except OSError:
                m = None
            out.append(int(m.group(1)) if m else None)
        return out

    def _records_read(self) -> int | None:
        """Records consumed from our instance so far (every CPU), or None."""
        values = self._stat_values(_READ_EVENTS)
        return None if not values or None in values else sum(values)

    def _unread(self) -> int:
        """Records still in our instance's buffers (every CPU)."""
        return sum(v or 0 for v in self._stat_values(_ENTRIES))

    def _read(self, budget_s: float) -> bool:
        """Read what trace_pipe has, for at most budget_s; whether anything came."""
        got_any = False
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            try:
                chunk = os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                return got_any
            if not chunk:
                return got_any
            got_any = True
            now = self._records_read()
            records = None if now is None or self.consumed is None else now - self.consumed
            self.consumed = now
            # the kernel fills a read with whole records, each ending in a newline; a
            # read that does not end in one is kept and checked with the next
            data, self.partial = self.partial + chunk, b""
            if records is not None:
                records += self.partial_records
            if not data.endswith(b"\n"):
                self.partial, self.partial_records = data, records or 0
                continue
            self.partial_records = 0
            # split as bytes, then decode each whole line keeping every byte (the
            # kernel prints strings raw, not always UTF-8)
            lines = [decode_exact(raw) for raw in data.split(b"\n")[:-1]]
            self.reader.feed(lines, records)
        return got_any


_READ_EVENTS = re.compile(rb"^read events: (\d+)", re.M)
_ENTRIES = re.compile(rb"^entries: (\d+)", re.M)
_OVERRUN = re.compile(rb"^overrun: (\d+)", re.M)


def _open_stats(session: dynevents.Session | None) -> list[int]:
    """Our instance's per-CPU stats files, open for the run (read with pread)."""
    if session is None:
        return []
    per_cpu = session.instance / "per_cpu"
    fds = []
    try:
        for cpu in sorted(per_cpu.iterdir()):
            fds.append(os.open(cpu / "stats", os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        for f in fds:
            os.close(f)
        return []
    return fds
