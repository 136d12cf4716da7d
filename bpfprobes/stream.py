"""Event transport and the run loop.

The perf buffer is opened with batched wakeups: waking the reader on every
sample is what throttles a traced program (peers run 5x slower under an open
storm), so the kernel wakes us every `wakeup_events` samples and the loop
drains whatever is left on every poll timeout. Loss is counted from both
places it can happen: perf's own lost records, and the BPF program's `drops`
counter for samples that never reached the buffer.
"""
from __future__ import annotations

import ctypes
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

POLL_MS = 100          # also the longest a batched sample waits before it is read
DEFAULT_PAGES = 256    # per CPU: 1 MiB, rides out a storm between drains
DEFAULT_WAKEUP = 64


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


class PerfBuffer:
    """One BPF_PERF_OUTPUT map read through BCC's perf reader."""

    def __init__(self, loaded, map_name: str = "events", pages: int = DEFAULT_PAGES,
                 wakeup_events: int = DEFAULT_WAKEUP, drops_map: str | None = "drops") -> None:
        if pages <= 0 or pages & (pages - 1):
            raise ValueError("buffer pages must be a power of two")
        self._loaded = loaded
        self._map = map_name
        self._pages = pages
        self._wakeup = wakeup_events
        self._drops_map = drops_map
        self.perf_lost = 0

    def open(self, on_sample: Callable[[bytes], None]) -> None:
        string_at = ctypes.string_at

        def sample(_cpu, data, size):
            on_sample(string_at(data, size))

        def lost(count):
            self.perf_lost += count

        self._loaded[self._map].open_perf_buffer(sample, page_cnt=self._pages, lost_cb=lost,
                                                 wakeup_events=self._wakeup)

    def poll(self, timeout_ms: int) -> None:
        self._loaded.bpf.perf_buffer_poll(timeout_ms)

    def drain(self) -> None:
        """Read what batched wakeups left in the buffers."""
        self._loaded.bpf.perf_buffer_consume()

    def kernel_drops(self) -> int:
        if not self._drops_map:
            return 0
        table = self._loaded[self._drops_map]
        per_cpu = table[table.Key(0)]
        return sum(per_cpu[i] for i in range(len(per_cpu)))

    @property
    def lost(self) -> int:
        return self.perf_lost + self.kernel_drops()


class _Signals:
    """SIGINT/SIGTERM/SIGHUP set a flag; the loop notices within one poll."""

    NAMES = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.caught: int | None = None
        self._saved: dict = {}

    def _handler(self, signum, _frame):
        self.caught = signum

    def __enter__(self) -> "_Signals":
        for s in self.NAMES:
            self._saved[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._saved.items():
            signal.signal(s, h)


class Gate:
    """The sample callback: counts what is shown and ends the run at --max-events.

    `on_event(raw)` returns True when the event was shown (it passed the
    userspace filters), which is what the limit counts.
    """

    def __init__(self, on_event: Callable[[bytes], bool], max_events: int | None) -> None:
        self.on_event = on_event
        self.max_events = max_events
        self.events = 0
        self.stop: str | None = None

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


def run(transport: PerfBuffer, gate: Gate, limits: Limits,
        on_lost: Callable[[int, int], None], on_tick: Callable[[], None] | None = None,
        poll_ms: int = POLL_MS) -> Summary:
    """Poll an opened transport until a signal, the duration or the event limit.

    New loss is reported as it grows (`on_lost(delta, total)`), then once more
    after the final drain so that nothing counted is left unsaid.
    """
    start = time.monotonic()
    deadline = start + limits.duration if limits.duration is not None else None
    reported = 0

    def report_loss() -> None:
        nonlocal reported
        lost = transport.lost
        if lost > reported:
            on_lost(lost - reported, lost)
            reported = lost

    with _Signals() as sig:
        while not gate.stop:
            wait = poll_ms if deadline is None else \
                max(0, min(poll_ms, int((deadline - time.monotonic()) * 1000)))
            transport.poll(wait)
            transport.drain()
            report_loss()
            if on_tick is not None:
                on_tick()
            if sig.caught is not None:
                gate.stop = gate.stop or f"signal:{signal.Signals(sig.caught).name}"
            elif deadline is not None and time.monotonic() >= deadline:
                gate.stop = gate.stop or "duration"
        transport.drain()
        report_loss()
    return Summary(events=gate.events, lost=reported, reason=gate.stop,
                   elapsed=time.monotonic() - start)
