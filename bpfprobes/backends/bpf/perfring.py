"""A direct reader of BPF_PERF_OUTPUT rings: perf_event_open per CPU, mmap, bulk parse.

Why not BCC's reader: it calls back into Python through ctypes once per sample
(~1.5 us each here) and wakes the reader every `wakeup_events` samples. This
reader parses the mapped ring in place, one struct call per record, hands the
samples on in batches (one call per batch, not per sample) and gives their
space back to the kernel batch by batch, so Python keeps up with an open()
storm on one core. The kernel wakes us only when a ring is a quarter full (a
watermark); the run loop's 100 ms poll timeout drains whatever arrived in
between, so quiet events are still shown promptly.

The ring protocol (include/uapi/linux/perf_event.h, perf_event_mmap_page):
page 0 holds data_head (the kernel's write position) and data_tail (ours); the
2^n pages after it are the data, records of {u32 type, u16 misc, u16 size}.
A sample is {header, u32 raw_size, raw bytes (padded to 8)}; PERF_RECORD_LOST
is {header, u64 id, u64 lost}. Positions only grow; offsets are modulo size.

Reading data_head and then the data needs a read barrier on weakly ordered
CPUs, which Python cannot issue: x86-64 (TSO) needs none, so the direct reader
is offered there only (`supported()`); elsewhere callers keep BCC's reader.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import select
import struct
import time
from typing import Callable, Iterable

from bpfprobes.base.errors import UsageError
from bpfprobes.kernel import arch, bpfsys

PAGE = mmap.PAGESIZE

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
ATTR_WATERMARK = 1 << 14            # bit of the flags word: wake by bytes, not samples
ATTR_SIZE = 112                     # PERF_ATTR_SIZE_VER5

PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9

BPF_MAP_LOOKUP_ELEM = 1

# offsets in struct perf_event_mmap_page
_DATA_HEAD = 1024
_DATA_TAIL = 1032

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# {u32 type, u16 misc, u16 size} then, for a sample, u32 raw size
_HEADER = struct.Struct("<IHH")
_RECORD = struct.Struct("<IHHI")
_LOST = struct.Struct("<8xQQ")
BATCH = 256 * 1024          # bytes of records handed on per ring per step
BUDGET = 512 * 1024         # bytes of records per drain() before it returns


def syscalls_known() -> bool:
    """True where bpf(2) and perf_event_open(2) can be called directly (arch table)."""
    abi = _host_abi()
    return abi is not None and abi.nr_bpf > 0


def supported() -> bool:
    """True where this reader is safe (a TSO CPU) and its syscalls are known."""
    abi = _host_abi()
    return abi is not None and abi.tso


_ringbuf: list[bool] = []


def ringbuf_supported() -> bool:
    """True when the direct reader runs here and the kernel creates a BPF ring buffer."""
    if not _ringbuf:
        ok = False
        if supported():
            try:
                os.close(bpf(0, struct.pack("<IIII", bpfsys.MAP_RINGBUF, 0, 0, PAGE)))  # BPF_MAP_CREATE
                ok = True
            except OSError:
                pass
        _ringbuf.append(ok)
    return _ringbuf[0]


def _host_abi() -> arch.Abi | None:
    try:
        return arch.host()
    except UsageError:
        return None


def _syscall(name: str, *args) -> int:
    abi = arch.host()
    nr = {"bpf": abi.nr_bpf, "perf_event_open": abi.nr_perf_event_open}[name]
    ret = _libc.syscall(nr, *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return ret


def perf_event_open(attr: bytes, pid: int, cpu: int, group_fd: int = -1,
                    flags: int = PERF_FLAG_FD_CLOEXEC) -> int:
    buf = ctypes.create_string_buffer(attr, len(attr))
    return _syscall("perf_event_open", buf, ctypes.c_int(pid), ctypes.c_int(cpu),
                    ctypes.c_int(group_fd), ctypes.c_ulong(flags))


def bpf(cmd: int, attr: bytes | bytearray) -> int:
    buf = ctypes.create_string_buffer(bytes(attr), max(len(attr), 128))
    return _syscall("bpf", ctypes.c_int(cmd), buf, ctypes.c_uint(max(len(attr), 128)))


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value's bytes, or None when the key is absent."""
    k, v = ctypes.create_string_buffer(key), ctypes.create_string_buffer(value_size)
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, struct.pack("<IxxxxQQQ", map_fd, ctypes.addressof(k),
                                             ctypes.addressof(v), 0))
    except FileNotFoundError:
        return None
    return v.raw


BPF_MAP_GET_NEXT_KEY = 4


def map_next_key(map_fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after `key` (None: the first), or None after the last."""
    k = ctypes.create_string_buffer(key or b"\0" * key_size, key_size)
    nxt = ctypes.create_string_buffer(key_size)
    try:
        bpf(BPF_MAP_GET_NEXT_KEY, struct.pack("<IxxxxQQQ", map_fd,
                                              ctypes.addressof(k) if key is not None else 0,
                                              ctypes.addressof(nxt), 0))
    except FileNotFoundError:
        return None
    return nxt.raw


BPF_OBJ_GET_INFO_BY_FD = 15

# struct bpf_prog_info (include/uapi/linux/bpf.h): offsets checked with offsetof
# against the uapi header; recursion_misses came in 5.12, so an older kernel's
# info is shorter than its end and the count is 0 there.
_PROG_INFO_SIZE = 232                    # sizeof(struct bpf_prog_info), 6.x
_PROG_INFO_ID = struct.Struct("<4xI")    # __u32 id at 4
_RECURSION_MISSES = struct.Struct("<Q")  # __u64 recursion_misses at 208
_RECURSION_MISSES_AT = 208


def parse_prog_info(raw: bytes, info_len: int) -> dict:
    """The fields we use of a bpf_prog_info the kernel filled `info_len` bytes of."""
    (prog_id,) = _PROG_INFO_ID.unpack_from(raw)
    misses = 0
    if info_len >= _RECURSION_MISSES_AT + _RECURSION_MISSES.size:
        (misses,) = _RECURSION_MISSES.unpack_from(raw, _RECURSION_MISSES_AT)
    return {"id": prog_id, "recursion_misses": misses}


def prog_info(prog_fd: int) -> dict:
    """A program's id and recursion_misses (BPF_OBJ_GET_INFO_BY_FD): runs the
    kernel skipped because another BPF program was running on that CPU."""
    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    # the kernel writes back how much of the info it filled (attr.info.info_len):
    # this attr buffer, not a copy, so that it can be read
    attr = ctypes.create_string_buffer(struct.pack("<IIQ", prog_fd, _PROG_INFO_SIZE,
                                                   ctypes.addressof(info)), 128)
    _syscall("bpf", ctypes.c_int(BPF_OBJ_GET_INFO_BY_FD), attr, ctypes.c_uint(128))
    (info_len,) = struct.unpack_from("<I", attr.raw, 4)
    return parse_prog_info(info.raw, info_len)


def cpus(kind: str = "online") -> list[int]:
    """CPU numbers from /sys/devices/system/cpu/{online,possible} ("0-3,6")."""
    text = open(f"/sys/devices/system/cpu/{kind}").read().strip()
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def output_attr(wakeup_events: int = 0, watermark_bytes: int = 0) -> bytes:
    """perf_event_attr of a BPF output event: raw samples, woken by count or by bytes."""
    flags = ATTR_WATERMARK if watermark_bytes else 0
    wakeup = watermark_bytes or max(1, wakeup_events)
    return struct.pack("<IIQQQQQI", PERF_TYPE_SOFTWARE, ATTR_SIZE, PERF_COUNT_SW_BPF_OUTPUT,
                       1, PERF_SAMPLE_RAW, 0, flags, wakeup).ljust(ATTR_SIZE, b"\0")


def read_records(buf, base: int, size: int, pos: int, stop: int) -> tuple[list[bytes], int, int]:
    """Parse the ring `buf[base:base + size]` from position `pos` (it only grows;
    offsets are modulo size) until `stop` or just past it, whole records only.
    Returns (the samples' raw bytes, the count in LOST records, the new position)."""
    unpack, end = _RECORD.unpack_from, base + size
    samples: list[bytes] = []
    keep, lost = samples.append, 0
    while pos < stop:
        off = base + pos % size
        if off + 16 <= end:            # a record starts 8-aligned: its header never wraps
            kind, _misc, rsize, raw_size = unpack(buf, off)
            rec, at = buf, off
            if off + rsize > end:      # the rare record that wraps: copy it whole
                rec, at = buf[off:end] + buf[base:base + rsize - (end - off)], 0
        else:                          # its raw size (or all its data) sits past the end
            rsize = _HEADER.unpack_from(buf, off)[2]
            rec, at = buf[off:end] + buf[base:base + rsize - (end - off)], 0
            kind, _misc, rsize, raw_size = unpack(rec, 0)
        if kind == PERF_RECORD_SAMPLE:
            keep(rec[at + 12:at + 12 + raw_size])
        elif kind == PERF_RECORD_LOST:
            lost += _LOST.unpack_from(rec, at)[1]
        if rsize == 0:                 # never written by a kernel; would loop forever
            return samples, lost, stop
        pos += rsize
    return samples, lost, pos


class Ring:
    """One CPU's perf ring: the perf event's fd and its mmap."""

    def __init__(self, cpu: int, pages: int, attr: bytes) -> None:
        if pages <= 0 or pages & (pages - 1):
            raise ValueError("ring pages must be a power of two")
        self.cpu = cpu
        self.size = pages * PAGE
        self.fd = perf_event_open(attr, -1, cpu)
        try:
            self.mm = mmap.mmap(self.fd, PAGE + self.size, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(self.fd)
            raise
        self._head = ctypes.c_uint64.from_buffer(self.mm, _DATA_HEAD)
        self._tail = ctypes.c_uint64.from_buffer(self.mm, _DATA_TAIL)

    def read(self, limit: int) -> tuple[list[bytes], int, bool]:
        """Samples of the records from our position on, about `limit` bytes of
        them; the count in LOST records among them; whether more is waiting.
        Their space goes back to the kernel at once (the samples are copies)."""
        head = self._head.value        # one 8-byte load: never torn
        tail = self._tail.value
        if tail >= head:
            return [], 0, False
        samples, lost, pos = read_records(self.mm, PAGE, self.size, tail,
                                          min(head, tail + limit))
        self._tail.value = pos         # the kernel may reuse the space now
        return samples, lost, pos < head

    def finish(self, deadline: float, on_samples: Callable[[list[bytes]], None]) -> tuple[int, int]:
        """Read up to where the kernel is now, until `deadline`; skip the rest of
        that, counting it. Returns (LOST records' count, samples skipped)."""
        end, lost = self._head.value, 0
        while self._tail.value < end and time.monotonic() < deadline:
            samples, n, _ = self.read(min(BATCH, end - self._tail.value))
            lost += n
            on_samples(samples)
        samples, n, pos = read_records(self.mm, PAGE, self.size, self._tail.value, end)
        self._tail.value = max(pos, self._tail.value)
        return lost + n, len(samples)

    def close(self) -> None:
        if self.mm is not None:
            del self._head, self._tail     # ctypes views pin the mmap open
            self.mm.close()
            self.mm = None
            os.close(self.fd)


class PerfRings:
    """The rings of one BPF_PERF_OUTPUT map, one per online CPU, polled together."""

    def __init__(self, map_fd: int, pages: int, wakeup_events: int = 0,
                 watermark_bytes: int | None = None, cpu_list: Iterable[int] | None = None) -> None:
        if watermark_bytes is None:
            watermark_bytes = 0 if wakeup_events else pages * PAGE // 4
        attr = output_attr(wakeup_events, watermark_bytes)
        self.rings: list[Ring] = []
        self.lost = 0
        self._backlog = False
        self._epoll = select.epoll()
        try:
            for cpu in (cpus() if cpu_list is None else cpu_list):
                ring = Ring(cpu, pages, attr)
                self.rings.append(ring)
                self._epoll.register(ring.fd, select.EPOLLIN)
                bpfsys.map_update(map_fd, struct.pack("<I", cpu), struct.pack("<I", ring.fd))
        except BaseException:
            self.close()
            raise
        # the consumer of a batch of samples (a list of bytes, in ring order)
        self.on_samples: Callable[[list[bytes]], None] = lambda samples: None

    def poll(self, timeout_ms: int) -> int:
        """Wait until a ring passes its watermark or the timeout (not at all when
        the last drain left a backlog); then read the rings."""
        self._epoll.poll(0 if self._backlog else max(timeout_ms, 0) / 1000)
        return self.drain()

    def drain(self) -> int:
        """Read the rings in turn until they are empty or BUDGET bytes were read;
        return the samples read. The budget keeps a storm from holding the run
        loop away from its signal and deadline checks; what it leaves is read
        on the next call, which then does not wait (`poll`)."""
        got = budget = 0
        more = True
        while more and budget < BUDGET:
            more = False
            for ring in self.rings:
                samples, lost, left = ring.read(BATCH)
                self.lost += lost
                more |= left
                if samples:
                    got += len(samples)
                    budget += BATCH
                    self.on_samples(samples)
        self._backlog = more
        return got

    def finish(self, seconds: float) -> int:
        """The last read, at a stop: everything written up to now, for at most
        `seconds`. What time leaves unread is skipped and counted (returned):
        shown + lost still add up, and exit stays prompt in a storm."""
        deadline, skipped = time.monotonic() + seconds, 0
        for ring in self.rings:
            lost, n = ring.finish(deadline, self.on_samples)
            self.lost += lost
            skipped += n
        return skipped

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        self.rings = []
        if not self._epoll.closed:
            self._epoll.close()


# ---- BPF ring buffer (BPF_MAP_TYPE_RINGBUF, kernel 5.8+) ---------------------------------
#
# One ring shared by all CPUs, written with bpf_ringbuf_output(). Cheaper for
# the traced program than a perf buffer (~0.8 us less per event in an open
# storm here: no perf sample to prepare) and, written with BPF_RB_NO_WAKEUP,
# it never wakes us: the run loop reads it on every poll timeout, at once
# again while a backlog remains. Layout (kernel/bpf/ringbuf.c): page 0 holds
# consumer_pos (ours, writable); the next page producer_pos; then the data,
# mapped twice in a row so that a record that wraps reads as one piece.
# Records: {u32 len | BUSY (bit 31) | DISCARD (bit 30), u32 page offset},
# then len bytes, the whole rounded up to 8.

RB_BUSY = 1 << 31
RB_DISCARD = 1 << 30
_RB_HEADER = struct.Struct("<I")


def read_ring_records(buf, base: int, size: int, pos: int, stop: int) -> tuple[list[bytes], int]:
    """Samples from `pos` to `stop` in a ring whose data is mapped twice from
    `buf[base]`; stops early at a record still being written. Returns the
    samples and the new position."""
    unpack, mask = _RB_HEADER.unpack_from, size - 1
    samples: list[bytes] = []
    keep = samples.append
    while pos < stop:
        off = base + (pos & mask)
        (head,) = unpack(buf, off)
        if head & RB_BUSY:
            break
        n = head & ~(RB_BUSY | RB_DISCARD)
        if not head & RB_DISCARD:
            keep(buf[off + 8:off + 8 + n])
        pos += (n + 8 + 7) & ~7
    return samples, pos


class RingBuffer:
    """A BPF ring buffer map read in place; the same calls as PerfRings."""

    def __init__(self, map_fd: int) -> None:
        self.size = bpfsys.map_info(map_fd)["max_entries"]
        self.lost = 0                   # a full ring is the program's drops counter
        self._backlog = False
        self._cons_mm = mmap.mmap(map_fd, PAGE, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self.mm = mmap.mmap(map_fd, PAGE + 2 * self.size, mmap.MAP_SHARED,
                                mmap.PROT_READ, offset=PAGE)
        except OSError:
            self._cons_mm.close()
            raise
        self._cons = ctypes.c_uint64.from_buffer(self._cons_mm, 0)
        self.on_samples: Callable[[list[bytes]], None] = lambda samples: None

    def _producer(self) -> int:
        return struct.unpack_from("<Q", self.mm, 0)[0]

    def poll(self, timeout_ms: int) -> int:
        """Sleep the timeout (nothing wakes us: NO_WAKEUP), unless a backlog waits."""
        if not self._backlog and timeout_ms > 0:
            select.select([], [], [], timeout_ms / 1000)
        return self.drain()

    def drain(self) -> int:
        """Read up to BUDGET bytes of records; the rest on the next call."""
        got, pos = 0, self._cons.value
        limit = pos + BUDGET
        while True:
            prod = self._producer()
            stop = min(prod, pos + BATCH)
            if pos >= stop:
                break
            samples, new = read_ring_records(self.mm, PAGE, self.size, pos, stop)
            self._cons.value = new          # the space is the kernel's again
            if new == pos:
                break                       # a record still being written
            pos = new
            got += len(samples)
            self.on_samples(samples)
            if pos >= limit:
                break
        self._backlog = pos < self._producer()
        return got

    def finish(self, seconds: float) -> int:
        """As PerfRings.finish: read up to the producer's position now, for at
        most `seconds`; skip the rest of it and return how many samples that was."""
        deadline, end = time.monotonic() + seconds, self._producer()
        pos = self._cons.value
        while pos < end and time.monotonic() < deadline:
            samples, new = read_ring_records(self.mm, PAGE, self.size, pos, min(end, pos + BATCH))
            if new == pos:
                break                       # a record still being written
            pos = self._cons.value = new
            self.on_samples(samples)
        samples, new = read_ring_records(self.mm, PAGE, self.size, pos, end)
        self._cons.value = new
        return len(samples)

    def close(self) -> None:
        if self.mm is not None:
            del self._cons                  # the ctypes view pins its mmap open
            self._cons_mm.close()
            self.mm.close()
            self.mm = None
