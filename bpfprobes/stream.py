"""Event transport and the run loop.

Waking the reader on every sample is what throttles a traced program (peers
run 3-6x slower under an open storm), so nothing here does: a BPF ring buffer
(OUTPUT_RINGBUF, where the kernel has one) is written without wakeups and
polled, a perf buffer wakes the reader when a ring is a quarter full (BCC's
reader: every `wakeup_events` samples), and the loop drains whatever is there
on every poll timeout, at once again while a backlog remains. perfring.py's
direct reader (x86-64) keeps up with a storm where BCC's per-sample ctypes
callback cannot. Loss is the BPF program's `drops` counter (every failed
submit), or perf's LOST records without one, plus the kernel's recursion misses
of the run's programs (runs it skipped: events that happened, never shown).
"""
from __future__ import annotations

import atexit
import ctypes
import signal
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from . import perfring

POLL_MS = 100          # also the longest a batched sample waits before it is read
DEFAULT_PAGES = 1024   # per CPU: 4 MiB (a ring buffer: that times the CPUs, in one),
                       # ~40k opensnoop events each, ~150 ms of a storm
DEFAULT_WAKEUP = 0     # 0: wake the reader when a ring is a quarter full (a watermark)
BCC_WAKEUP = 64        # BCC's reader wakes by sample count only
FINISH_S = 0.5         # the last read at a stop: at most this long, the rest counted lost


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


def output_defines(pages: int) -> dict[str, object]:
    """-D defines that choose a program's output map (bpf_c/common.h OUTPUT_*):
    a BPF ring buffer of `pages` per CPU in all where the kernel has it and the
    direct reader runs, else a perf buffer (read with `pages` per CPU)."""
    if not perfring.ringbuf_supported():
        return {}
    total = pages * len(perfring.cpus("possible"))
    return {"OUTPUT_RINGBUF": True, "RINGBUF_PAGES": 1 << (total - 1).bit_length()}


THROTTLED_MAP = "throttled"       # bpf_c/common.h, with --rate-limit


class PerfBuffer:
    """The events map, read by perfring's direct reader where it is safe (x86-64),
    else by BCC's perf reader. A BPF ring buffer map (OUTPUT_RINGBUF) or a perf
    event array, found from the map itself. Same calls: open, poll, drain, lost."""

    def __init__(self, loaded, map_name: str = "events", pages: int = DEFAULT_PAGES,
                 wakeup_events: int = DEFAULT_WAKEUP, drops_map: str | None = "drops",
                 direct: bool | None = None) -> None:
        if pages <= 0 or pages & (pages - 1):
            raise ValueError("buffer pages must be a power of two")
        self._loaded = loaded
        self._map = map_name
        self._pages = pages
        self._wakeup = wakeup_events
        self._drops_map = drops_map
        self.direct = perfring.supported() if direct is None else direct
        self.kind = "perf_buffer"              # or ring_buffer, seen at open()
        self._rings: perfring.PerfRings | perfring.RingBuffer | None = None
        self._bcc_lost = 0
        self.skipped = 0                       # left unread at a stop (finish), counted lost
        self._throttled_map: str | None = None     # "" once known absent
        self._misses = 0                       # last read: kept once the programs are closed
        self._ncpu = 0                         # possible CPUs, once counted

    @property
    def perf_lost(self) -> int:
        """Samples perf dropped because a ring was full (PERF_RECORD_LOST)."""
        return self._rings.lost if self._rings is not None else self._bcc_lost

    def open(self, on_sample: Callable[[bytes], None]) -> None:
        if self.direct:
            fd = self._loaded[self._map].map_fd
            if perfring.map_info(fd)["type"] == perfring.MAP_RINGBUF:
                self._rings = perfring.RingBuffer(fd)
                self.kind = "ring_buffer"
            else:
                self._rings = perfring.PerfRings(fd, self._pages, wakeup_events=self._wakeup)

            def each(samples: list[bytes]) -> None:
                for raw in samples:
                    on_sample(raw)
            self._rings.on_samples = getattr(on_sample, "feed", None) or each  # a Gate: batches
            return
        string_at = ctypes.string_at

        def sample(_cpu, data, size):
            on_sample(string_at(data, size))

        def lost(count):
            self._bcc_lost += count

        self._loaded[self._map].open_perf_buffer(sample, page_cnt=self._pages, lost_cb=lost,
                                                 wakeup_events=self._wakeup or BCC_WAKEUP)

    def poll(self, timeout_ms: int) -> None:
        if self._rings is not None:
            self._rings.poll(timeout_ms)
        else:
            self._loaded.bpf.perf_buffer_poll(timeout_ms)

    def drain(self) -> None:
        """Read what batched wakeups left in the buffers."""
        if self._rings is not None:
            self._rings.drain()
        else:
            self._loaded.bpf.perf_buffer_consume()

    def _per_cpu_total(self, name: str) -> int:
        """The sum over CPUs of a one-slot per-CPU u64 counter of the program."""
        table = self._loaded[name]
        if not self.direct:
            per_cpu = table[table.Key(0)]
            return sum(per_cpu[i] for i in range(len(per_cpu)))
        ncpu = self._ncpu = self._ncpu or len(perfring.cpus("possible"))
        raw = perfring.map_lookup(table.map_fd, b"\0" * 4, 8 * ncpu)
        return sum(struct.unpack(f"<{ncpu}Q", raw)) if raw else 0

    def kernel_drops(self) -> int:
        """The BPF program's count of samples that did not reach a ring (common.h)."""
        return self._per_cpu_total(self._drops_map) if self._drops_map else 0

    @property
    def throttled(self) -> int:
        """Events over --rate-limit, not sent (common.h `throttled`); 0 without a limit."""
        if self._throttled_map is None:
            try:
                self._loaded[THROTTLED_MAP]
                self._throttled_map = THROTTLED_MAP
            except KeyError:
                self._throttled_map = ""
        return self._per_cpu_total(self._throttled_map) if self._throttled_map else 0

    @property
    def recursion_misses(self) -> int:
        """Runs of the run's programs the kernel skipped since they were loaded
        (one would have nested in another BPF program on that CPU: an interrupt
        in a tracer). Each is an event that happened and was never submitted."""
        total = 0
        for fd in self._loaded.prog_fds():
            try:
                total += perfring.prog_info(fd)["recursion_misses"]
            except OSError:
                pass        # closed meanwhile: its count is in the last total
        self._misses = max(self._misses, total)
        return self._misses

    @property
    def lost(self) -> int:
        """Every failed submit is in the program's drops counter, full rings
        included; perf's LOST records count those same samples again (and only
        once a ring has room), so they are the figure only without a counter.
        Plus what a stop left unread (finish), plus the runs the kernel skipped
        (recursion misses: never submitted, so in no other count)."""
        return ((self.kernel_drops() if self._drops_map else self.perf_lost) + self.skipped
                + self.recursion_misses)

    def finish(self) -> None:
        """The last read, at a stop: what was written up to now, within FINISH_S;
        the rest is counted lost, not left unsaid."""
        if self._rings is not None:
            self.skipped += self._rings.finish(FINISH_S)
        else:
            self.drain()

    def close(self) -> None:
        """Unmap the rings (BCC's own reader is freed with the program)."""
        if self._rings is not None:
            self._rings.close()


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
    recorder with signal.getsignal() and reads `caught` too (duck-typed: those
    modules sit below this one and cannot import it)."""

    def __init__(self) -> None:
        self.caught: int | None = None      # the first stop signal; later ones change nothing
        self._saved: dict = {}

    def __call__(self, signum: int, _frame) -> None:
        if self.caught is None:
            self.caught = signum

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


def stop_signals() -> StopSignals:
    """The process's recorder: installed by the tool's main, else here (a caller
    that uses this module without a tool's main, e.g. a test)."""
    return install_stop_signals()


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

    def feed(self, samples: list[bytes]) -> None:
        """Samples in a batch, as calling the gate on each but one call less per
        sample (the storm path); a limit to count down goes one by one."""
        if self.stop is not None or self.max_events is not None:
            for raw in samples:
                self(raw)
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


def run(transport: PerfBuffer, gate: Gate, limits: Limits,
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
