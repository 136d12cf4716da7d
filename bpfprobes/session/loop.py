"""The poll loop of a session: a transport polled until a stop signal, the
duration or the event limit, loss and throttled counts reported as they grow,
then one bounded last read. Nothing here wakes per sample: the loop drains on
every poll timeout (POLL_MS)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from bpfprobes.base.signals import StopSignals, stop_signals

POLL_MS = 100          # also the longest a batched sample waits before it is read


class Transport(Protocol):
    """What the loop polls (perfbuffer.PerfBuffer, tracefs TracePipe, count's tables)."""
    kind: str

    def open(self, on_sample: Callable) -> None: ...
    def poll(self, timeout_ms: int) -> None: ...
    def drain(self) -> None: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...

    @property
    def lost(self) -> int: ...

    @property
    def throttled(self) -> int: ...

    @property
    def recursion_misses(self) -> int: ...


@dataclass
class Limits:
    duration: float | None = None      # seconds
    max_events: int | None = None


@dataclass
class Summary:
    events: int = 0
    lost: int = 0
    reason: str = "running"            # signal:SIGINT | duration | max-events | output-closed
    elapsed: float = 0.0
    extra: dict = field(default_factory=dict)
    throttled: int = 0                 # over --rate-limit, not sent (reported, never silent)
    recursion_misses: int = 0          # of `lost`: program runs the kernel skipped


class Gate:
    """The sample callback: counts what is shown and ends the run at --max-events.

    `on_event(raw)` returns True when the event was shown (it passed the
    userspace filters), which is what the limit counts. A consumer that can
    also take a whole batch has a `many(samples) -> shown` (session.core's
    decoding): the storm path, with no call per sample between the layers.
    """

    def __init__(self, on_event: Callable[[bytes], bool], max_events: int | None) -> None:
        self.on_event = on_event
        self.many: Callable[[list[bytes]], int] | None = getattr(on_event, "many", None)
        self.max_events = max_events
        self.events = 0
        self.stop: str | None = None

    def feed(self, samples: list[bytes]) -> None:
        """Samples in a batch, as calling the gate on each but with less per
        sample (the storm path); a limit to count down goes one by one."""
        if self.stop is not None or self.max_events is not None:
            for raw in samples:
                self(raw)
            return
        if self.many is not None:
            try:
                self.events += self.many(samples)
            except BrokenPipeError:         # its events are not counted (a part may be out)
                self.stop = "output-closed"
            return
        on_event, shown = self.on_event, 0
        try:
            for raw in samples:
                if on_event(raw):
                    shown += 1
        except BrokenPipeError:
            self.stop = "output-closed"
        finally:
            self.events += shown

    def __call__(self, raw: bytes) -> None:
        # after a signal or the duration, samples already in the buffer still
        # count (they happened before the stop); after the limit, none do
        if self.stop in ("max-events", "output-closed"):
            return
        try:
            shown = self.on_event(raw)
        except BrokenPipeError:
            self.stop = "output-closed"
            return
        if shown:
            self.events += 1
            if self.max_events is not None and self.events >= self.max_events:
                self.stop = "max-events"


def run(transport: Transport, gate: Gate, limits: Limits,
        on_lost: Callable[[int, int], None], on_tick: Callable[[], None] | None = None,
        poll_ms: int = POLL_MS, signals: StopSignals | None = None,
        on_throttled: Callable[[int, int], None] | None = None) -> Summary:
    """Poll an opened transport until a signal, the duration or the event limit.

    New loss is reported as it grows (`on_lost(delta, total)`), then once more
    after the final drain so that nothing counted is left unsaid; events over
    --rate-limit likewise (`on_throttled`), at most once a second. `signals`:
    the process's StopSignals (the default: stop_signals()).
    """
    start = time.monotonic()
    deadline = start + limits.duration if limits.duration is not None else None
    reported = 0
    throttled = [0, start]              # reported so far, when last said

    def report_loss(final: bool = False) -> None:
        nonlocal reported
        lost = transport.lost
        if lost > reported:
            on_lost(lost - reported, lost)
            reported = lost
        if on_throttled is None:
            return
        now = time.monotonic()
        if final or now - throttled[1] >= 1.0:
            total = transport.throttled
            if total > throttled[0]:
                on_throttled(total - throttled[0], total)
                throttled[:] = [total, now]

    sig = signals if signals is not None else stop_signals()
    while not gate.stop:
        wait = poll_ms if deadline is None else \
            max(0, min(poll_ms, int((deadline - time.monotonic()) * 1000)))
        transport.poll(wait)
        transport.drain()
        try:
            report_loss()
            if on_tick is not None:
                on_tick()
        except BrokenPipeError:             # stdout closed under a flush: as in the Gate
            gate.stop = gate.stop or "output-closed"
        if sig.caught is not None:
            gate.stop = gate.stop or sig.reason
        elif deadline is not None and time.monotonic() >= deadline:
            gate.stop = gate.stop or "duration"
    transport.finish()                  # bounded, the rest counted lost
    try:
        report_loss(final=True)
    except BrokenPipeError:
        gate.stop = gate.stop or "output-closed"
    return Summary(events=gate.events, lost=reported, reason=gate.stop,
                   elapsed=time.monotonic() - start, throttled=throttled[0],
                   recursion_misses=transport.recursion_misses)
