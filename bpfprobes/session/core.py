"""One run of any tool on any backend: the session core.

    reap dead runs ─► backend.load ─► transport opened ─► backend.attach
    ─► meta, "live" ─► loop.run (signals, duration, limits, loss, throttled)
    ─► figures read while attached ─► teardown (detach) ─► summary

Every tool goes through Session.run, on the BPF backend (bpfbackend.py) and on
the kernel's dynamic events (tracefsbackend.py) alike. Teardown is registered
before the first kernel object exists: whatever ends set-up or the run (a stop
signal at a phase boundary, an error, a closed stdout) leaves through the one
ExitStack here. Stop signals are the process's one recorder (base/signals.py); a
signal during set-up ends it at the next phase boundary (signals.Stopped), one
during the run ends the run with its summary.

A tool gives: its backend, a sink (output.py's columns or JSON lines, or its
own), a consumer (given the loaded backend: sample -> shown?), its meta line
built from what went live, and hooks for interval reports and last words.
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from bpfprobes.backends.tracefs import dynevents
from bpfprobes.base import signals
from bpfprobes.base.safetext import for_terminal
from bpfprobes.kernel.running import Kernel
from bpfprobes.session import loop


@dataclass(frozen=True)
class Live:
    """What went live, for the tool's meta line."""
    transport: str                  # perf_buffer | ring_buffer | trace_pipe | tables
    attached: list[str]             # each attachment, described
    program: str | None             # compiled | cached (a BPF program); None: none
    startup_s: float
    details: dict = field(default_factory=dict)     # the backend's own (tracefs: its lines)


class Backend(Protocol):
    """Attaches and detaches; hands the session a transport and its figures."""

    def load(self, teardown: contextlib.ExitStack, stop: signals.StopSignals) -> None:
        """Make what will be attached (compile/load a program, create a trace
        instance), its teardown on `teardown` first; nothing fires yet."""

    def transport(self) -> loop.Transport:
        """The reader of what fires (opened by the session, closed by teardown)."""

    def attach(self, stop: signals.StopSignals) -> None:
        """Attach everything (stop.check("attaching") between steps)."""

    def live(self) -> tuple[list[str], str | None, dict]:
        """(attachments described, program origin or None, the backend's own meta)."""

    def notes(self) -> list[str]:
        """What -v says about set-up (fallbacks taken, what was attached)."""

    def while_attached(self) -> dict:
        """Summary figures that can be read only before detaching."""


class Sink(Protocol):
    def meta(self, meta: dict) -> None: ...
    def event(self, e) -> None: ...
    def events(self, es: list) -> None: ...
    def lost(self, count: int, total: int) -> None: ...
    def throttled(self, count: int, total: int) -> None: ...
    def table(self, kind: str, rows: list[dict], text: str) -> None: ...
    def flush(self) -> None: ...
    def summary(self, s: dict) -> None: ...


@dataclass
class Session:
    tool: str
    kernel: Kernel
    backend: Backend
    sink: Sink
    consumer: Callable[[Backend], Callable[[object], bool]]   # sample -> shown (limit counts it)
    limits: loop.Limits
    meta: Callable[[Live], dict]
    verbose: bool = False
    notes: list[str] = field(default_factory=list)   # the tool's own -v lines, said first
    throttled: bool = False                 # --rate-limit: the summary says `throttled`
    on_live: Callable[[], None] | None = None    # the moment tracing began (rates, intervals)
    on_tick: Callable[[], None] | None = None    # after each poll (interval reports)
    at_exit: Callable[[loop.Summary], dict] | None = None   # last words; extra summary keys

    def run(self) -> loop.Summary:
        stop = signals.stop_signals()
        started = time.monotonic()
        with contextlib.ExitStack() as teardown:
            stop.check("planning")          # what the tool did before calling us
            reaped = [f"removed {r}, left by a killed run"
                      for r in dynevents.reap(self.kernel.tracefs)]
            stop.check("reaping")
            self.backend.load(teardown, stop)
            gate = loop.Gate(self.consumer(self.backend), self.limits.max_events)
            transport = self.backend.transport()
            teardown.callback(transport.close)
            transport.open(gate)
            self.backend.attach(stop)
            attached, program, details = self.backend.live()
            live = Live(transport.kind, attached, program, round(time.monotonic() - started, 3),
                        details)
            # every tool's meta says how its program came to be (compiled or cached)
            meta = {**self.meta(live), "program": program}
            if self.verbose:
                origin = f" (program {program})" if program else ""
                for line in [*reaped, *self.notes, *self.backend.notes(),
                             f"live after {live.startup_s} s{origin}"]:
                    print(f"{self.tool}: {for_terminal(line)}", file=sys.stderr)
            self.sink.meta(meta)
            self.sink.flush()
            if self.on_live is not None:
                self.on_live()
            # a signal from here on (one sent on seeing "live" too) ends the run
            # with a summary: the loop reads what the handler recorded
            summary = loop.run(transport, gate, self.limits, self.sink.lost,
                                 on_tick=self._tick, signals=stop,
                                 on_throttled=self.sink.throttled)
            figures = self.backend.while_attached()
        extra = {**figures, **(self.at_exit(summary) if self.at_exit is not None else {})}
        extra["recursion_misses"] = summary.recursion_misses      # of lost: runs skipped
        if self.throttled:
            extra["throttled"] = summary.throttled
        self.sink.summary({"events": summary.events, "lost": summary.lost,
                           "reason": summary.reason, "elapsed": round(summary.elapsed, 3),
                           **extra})
        return summary

    def _tick(self) -> None:
        if self.on_tick is not None:
            self.on_tick()
        self.sink.flush()


def decoding(decode: Callable[[bytes], dict | None], sink: Sink) -> Callable:
    """The consumer of a tool whose events need nothing of the loaded program:
    each sample decoded (None: filtered out in userspace) and given to the sink;
    a batch decoded in one pass and given to the sink at once (loop.Gate.feed)."""
    def consumer(_backend: Backend) -> Callable[[bytes], bool]:
        sink_event, sink_events = sink.event, sink.events

        def on_event(raw: bytes) -> bool:
            e = decode(raw)
            if e is None:
                return False
            sink_event(e)
            return True

        def many(samples: list[bytes]) -> int:
            events = [e for raw in samples if (e := decode(raw)) is not None]
            if events:
                sink_events(events)
            return len(events)
        on_event.many = many                # type: ignore[attr-defined]
        return on_event
    return consumer


def standard_meta(static: dict) -> Callable[[Live], dict]:
    """The ready tools' meta line: theirs, then what went live."""
    def meta(live: Live) -> dict:
        return {**static, "transport": live.transport, "probes": live.attached,
                "startup_s": live.startup_s}
    return meta
