"""perfring's record parsers and progcache's pure parts, on bytes made here (no kernel).

The rings are built the way the kernel writes them: perf records
{u32 type, u16 misc, u16 size}[u32 raw size, raw bytes padded to 8] modulo the
ring size; BPF ring buffer records {u32 len | busy | discard, u32 pgoff}[len
bytes, rounded to 8] with the data mapped twice in a row.
"""
from __future__ import annotations

import struct

import pytest

from bpfprobes.backends.bpf import perfring, progcache
from bpfprobes.gen.codegen import Program
from bpfprobes.kernel.headers import Headers

BASE = 64          # data starts here in the test buffers (the kernel's is one page)


def perf_sample(raw: bytes) -> bytes:
    pad = -(4 + len(raw)) % 8
    body = struct.pack("<I", len(raw) + pad) + raw + b"\0" * pad
    return struct.pack("<IHH", perfring.PERF_RECORD_SAMPLE, 0, 8 + len(body)) + body


def perf_lost(count: int) -> bytes:
    return struct.pack("<IHHQQ", perfring.PERF_RECORD_LOST, 0, 24, 7, count)


def perf_ring(records: list[bytes], size: int, start: int) -> tuple[bytearray, int]:
    """A ring of `size` bytes holding `records` written from position `start`."""
    buf = bytearray(BASE + size)
    pos = start
    for rec in records:
        for i, b in enumerate(rec):
            buf[BASE + (pos + i) % size] = b
        pos += len(rec)
    return buf, pos


def test_samples_and_lost_records_in_order():
    raws = [b"a" * 5, b"bb" * 10, b"c" * 4]
    buf, end = perf_ring([perf_sample(raws[0]), perf_lost(3), perf_sample(raws[1]),
                          perf_lost(2), perf_sample(raws[2])], 512, 0)
    samples, lost, pos = perfring.read_records(buf, BASE, 512, 0, end)
    assert [s.rstrip(b"\0") for s in samples] == raws
    assert lost == 5 and pos == end


@pytest.mark.parametrize("start", range(512 - 64, 512, 8))
def test_records_that_wrap_the_ring_end_read_whole(start):
    """Every place the ring end can fall: in the data, at the raw size, after it."""
    raws = [bytes(range(i, i + 29)) for i in range(6)]
    records = [perf_sample(r) for r in raws]
    buf, end = perf_ring(records, 512, start)
    samples, lost, pos = perfring.read_records(buf, BASE, 512, start, end)
    assert [s[:29] for s in samples] == raws
    assert lost == 0 and pos == end


def test_a_limit_stops_at_a_record_boundary_and_resumes():
    raws = [bytes([i]) * 20 for i in range(10)]
    buf, end = perf_ring([perf_sample(r) for r in raws], 1024, 0)
    first, _, pos = perfring.read_records(buf, BASE, 1024, 0, 50)
    rest, _, pos2 = perfring.read_records(buf, BASE, 1024, pos, end)
    assert pos % 8 == 0 and 50 <= pos < end
    assert [s[:20] for s in first + rest] == raws and pos2 == end


def ring_record(raw: bytes, busy: bool = False, discard: bool = False) -> bytes:
    head = len(raw) | (perfring.RB_BUSY if busy else 0) | (perfring.RB_DISCARD if discard else 0)
    rec = struct.pack("<II", head, 0) + raw
    return rec + b"\0" * (-len(rec) % 8)


def bpf_ring(records: list[bytes], size: int, start: int) -> tuple[bytearray, int]:
    """Data mapped twice, as the kernel maps a BPF ring buffer."""
    data = bytearray(size)
    pos = start
    for rec in records:
        for i, b in enumerate(rec):
            data[(pos + i) % size] = b
        pos += len(rec)
    return bytearray(BASE) + data + data, pos


def test_ring_buffer_records_skip_discarded_and_stop_at_busy():
    recs = [ring_record(b"one"), ring_record(b"gone", discard=True), ring_record(b"three"),
            ring_record(b"late", busy=True), ring_record(b"after")]
    buf, _ = bpf_ring(recs, 256, 0)
    samples, pos = perfring.read_ring_records(buf, BASE, 256, 0, 10_000)
    assert samples == [b"one", b"three"]
    assert pos == sum(len(r) for r in recs[:3])       # waits at the busy one


def test_ring_buffer_record_across_the_end_reads_through_the_second_mapping():
    raw = bytes(range(40))
    buf, end = bpf_ring([ring_record(raw)], 64, 48)
    samples, pos = perfring.read_ring_records(buf, BASE, 64, 48, end)
    assert samples == [raw] and pos == end


def test_output_attr_is_a_bpf_output_event_woken_by_bytes():
    attr = perfring.output_attr(watermark_bytes=4096)
    kind, size, config, period, sample_type = struct.unpack_from("<IIQQQ", attr)
    flags, wakeup = struct.unpack_from("<QI", attr, 40)
    assert (kind, size, config) == (perfring.PERF_TYPE_SOFTWARE, perfring.ATTR_SIZE,
                                    perfring.PERF_COUNT_SW_BPF_OUTPUT)
    assert period == 1 and sample_type == perfring.PERF_SAMPLE_RAW
    assert flags & perfring.ATTR_WATERMARK and wakeup == 4096
    by_count = perfring.output_attr(wakeup_events=64)
    assert not struct.unpack_from("<Q", by_count, 40)[0] & perfring.ATTR_WATERMARK


# ---- progcache: what can be checked without a kernel ----

PROG = Program("x.bpf.c", "int f(void *ctx) { return 0; }", ("-w", "-DINFLIGHT_MAX=16384"),
               b"settings of one run")
HEADERS = Headers("nearest", "/usr/src/h", "test", "6.1.0")


def test_the_cache_key_is_the_programs_shape_not_its_settings():
    """A run's settings (its PID, a -p filter) are map data (runconfig.py): the
    key never sees them, while any define, the text or the headers change it."""
    other_run = Program(PROG.name, PROG.text, PROG.cflags, b"another run's settings")
    key = progcache.cache_key(PROG, HEADERS)
    assert key == progcache.cache_key(other_run, HEADERS)
    bigger = Program(PROG.name, PROG.text, ("-w", "-DINFLIGHT_MAX=8192"), PROG.config)
    assert key != progcache.cache_key(bigger, HEADERS)
    assert key != progcache.cache_key(Program(PROG.name, PROG.text + " ", PROG.cflags), HEADERS)
    assert key != progcache.cache_key(PROG, Headers("nearest", "/usr/src/other", "test", "6.1.0"))


def test_no_instruction_is_patched_with_a_value():
    """The magic-immediate machinery is gone: progcache relocates map fds only."""
    assert not hasattr(progcache, "RUNTIME_DEFINES") and not hasattr(progcache, "split_runtime")


def insn(op: int, regs: int, imm: int) -> bytes:
    return struct.pack("<BBhi", op, regs, 0, imm)


def test_map_fd_sites_are_found_in_bytecode():
    code = (insn(0x18, 0x11, 7) + insn(0, 0, 0)             # r1 = map fd 7 (ld_imm64)
            + insn(0x55, 0x01, 4242)                         # if r1 != 4242 goto
            + insn(0x18, 0x01, 5) + insn(0, 0, 0)            # r1 = 5 (plain 64-bit constant)
            + insn(0x95, 0, 0))
    assert progcache._map_sites(code, {7: "events"}) == [(0, "events")]
    with pytest.raises(ValueError):                          # an fd we do not know
        progcache._map_sites(code, {8: "other"})
