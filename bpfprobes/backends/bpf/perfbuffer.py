"""The BPF backend's transport: a program's events map (a BPF ring buffer or a
perf event array), read by perfring's direct reader where it is safe, else by
BCC's, and the loss of a run counted from the program's own counters.

Waking the reader on every sample is what throttles a traced program (peers
run 3-6x slower under an open storm), so nothing here does: a BPF ring buffer
(OUTPUT_RINGBUF, where the kernel has one) is written without wakeups and
polled, a perf buffer wakes the reader when a ring is a quarter full (BCC's
reader: every `wakeup_events` samples), and the poll loop drains whatever is
there on every timeout. perfring.py's direct reader (x86-64) keeps up with a
storm where BCC's per-sample ctypes callback cannot. Loss is the BPF program's
`drops` counter (every failed submit), or perf's LOST records without one,
plus the kernel's recursion misses of the run's programs (runs it skipped:
events that happened, never shown).
"""
from __future__ import annotations

from typing import Protocol

from bpfprobes.backends.bpf import perfring
from bpfprobes.backends.bpf.loaded import LoadedProgram
from bpfprobes.kernel import bpfsys

DEFAULT_PAGES = 1024   # per CPU: 4 MiB (a ring buffer: that times the CPUs, in one),
                       # ~40k opensnoop events each, ~150 ms of a storm
DEFAULT_WAKEUP = 0     # 0: wake the reader when a ring is a quarter full (a watermark)
BCC_WAKEUP = 64        # BCC's reader wakes by sample count only
FINISH_S = 0.5         # the last read at a stop: at most this long, the rest counted lost




def output_defines(pages: int) -> dict[str, object]:
    """-D defines that choose a program's output map (bpf_c/common.h OUTPUT_*):
    a BPF ring buffer of `pages` per CPU in all where the kernel has it and the
    direct reader runs, else a perf buffer (read with `pages` per CPU)."""
    if not perfring.ringbuf_supported():
        return {}
    total = pages * len(perfring.cpus("possible"))
    return {"OUTPUT_RINGBUF": True, "RINGBUF_PAGES": 1 << (total - 1).bit_length()}


THROTTLED_MAP = "throttled"       # bpf_c/common.h: events over --rate-limit


class Sampler(Protocol):
    """Where samples go (session.loop.Gate)."""

    def __call__(self, raw: bytes) -> None: ...

    def feed(self, samples: list[bytes]) -> None: ...


class PerfBuffer:
    """The events map, read by perfring's direct reader where it is safe (x86-64),
    else by BCC's perf reader. A BPF ring buffer map (OUTPUT_RINGBUF) or a perf
    event array, found from the map itself. Same calls: open, poll, drain, lost."""

    def __init__(self, loaded: LoadedProgram, map_name: str = "events", pages: int = DEFAULT_PAGES,
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

    @property
    def perf_lost(self) -> int:
        """Samples perf dropped because a ring was full (PERF_RECORD_LOST)."""
        return self._rings.lost if self._rings is not None else self._bcc_lost

    def open(self, gate: Sampler) -> None:
        """Samples go to `gate` (session.loop.Gate): in batches from the direct
        reader, one by one from BCC's."""
        if not self.direct:
            def lost(count):
                self._bcc_lost += count
            self._loaded.open_perf_reader(self._map, gate, self._pages, lost,
                                          self._wakeup or BCC_WAKEUP)
            return
        fd = self._loaded.map_fd(self._map)
        if bpfsys.map_info(fd)["type"] == bpfsys.MAP_RINGBUF:
            self._rings = perfring.RingBuffer(fd)
            self.kind = "ring_buffer"
        else:
            self._rings = perfring.PerfRings(fd, self._pages, wakeup_events=self._wakeup)
        self._rings.on_samples = gate.feed

    def poll(self, timeout_ms: int) -> None:
        if self._rings is not None:
            self._rings.poll(timeout_ms)
        else:
            self._loaded.poll_perf(timeout_ms)

    def drain(self) -> None:
        """Read what batched wakeups left in the buffers."""
        if self._rings is not None:
            self._rings.drain()
        else:
            self._loaded.consume_perf()

    def kernel_drops(self) -> int:
        """The BPF program's count of samples that did not reach a ring (common.h)."""
        return self._loaded.per_cpu_sum(self._drops_map) if self._drops_map else 0

    @property
    def throttled(self) -> int:
        """Events over --rate-limit, not sent (common.h `throttled`)."""
        if self._throttled_map is None:
            self._throttled_map = THROTTLED_MAP if self._loaded.has_map(THROTTLED_MAP) else ""
        return self._loaded.per_cpu_sum(self._throttled_map) if self._throttled_map else 0

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
