"""proberows (the probe tool's storm path) against probefmt (the definition):
for any sample of any of these plans, the same ftrace line and the same JSON
line, byte for byte, and the same --summary counts. Hypothesis draws the
samples: hostile comms and strings (controls, `%`, quotes, non-UTF-8), every
width and sign, faults, truncation, short samples, unknown probe indexes."""
from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from bpfprobes.kernel.kallsyms import Kallsyms
from bpfprobes.plan import probefilter, tpformat
from bpfprobes.plan.probeplan import Uprobe
from bpfprobes.present import decode, probefmt, proberows
from bpfprobes.present.output import dumps
from tests.unit.test_probe_codegen import plan_for, raw_event

TP_FMT = "\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n"
UP = {0: Uprobe("/bin/x", 0x1000, 0x401000), 1: Uprobe("/bin/x", 0x1200, 0x401200)}
# where a name comes from the traced system, it is hostile: % directives, quotes,
# terminal controls, non-UTF-8 (a symbol, a module, a binary's file name)
KSYMS = Kallsyms(text=b"ffffffff81000000 T _stext\n"
                      b"ffffffff81200000 T do_sys_openat2\n"
                      b"ffffffff81200400 T do_sys_open\n"
                      b"ffffffff81300000 T arch_rethook_trampoline\n"
                      b"ffffffff81400000 T do_%s_%d%%\"q\n"
                      b"ffffffffc0001000 t p9_virtio_request\t[9p%s\x1b[2J]\n")
HOSTILE_BINARY = 'p:/tmp/a%sb%%d"q:0x10'

PLANS = {
    # every scalar type, two strings (the last one trimmed), a symbol
    "scalars": dict(texts=["p:myopen do_sys_openat2 " +
                           " ".join(f"{k}{b}=%di:{k}{b}" for k in "usx" for b in (8, 16, 32, 64)) +
                           " sym=%si:symbol mid=+0(%dx):string last=+0(%cx):string"],
                    string_size=16),
    # return probes: errno in text and JSON (sN, ERR_PTR xN), callers, latency, no args
    "returns": dict(texts=["p:do_sys_openat2", "r:do_sys_openat2 ret=$retval p=$retval:x64 "
                           "small=$retval:x16 u=$retval:u32", "r:do_sys_open"]),
    "latency": dict(texts=["r:do_sys_openat2"], latency=True),
    "tracepoint": dict(texts=["t:syscalls:sys_exit_openat ret"],
                       fields={0: tpformat.parse(TP_FMT)}),
    # uprobes: callers named by user symbols, -1 not an errno, a return with latency;
    # a user string, the task's comm as an argument
    "uprobes": dict(texts=["p:/bin/x:f a=$arg1 s=+0($arg2):ustring c=$comm",
                           "r:/bin/x:0x1200 ret=$retval:s32"], uprobes=UP, latency=True),
    # only strings; a location from a hostile file name
    "strings": dict(texts=[HOSTILE_BINARY + " s=+0($arg1):ustring t=+0($arg2):ustring"],
                    uprobes={0: Uprobe("/tmp/a%sb%%d\"q", 0x10, 0x400010)}),
    # a userspace filter: that probe always goes through the decoder
    "filtered": dict(texts=["p:f file=+0(%si):string", "p:g n=%di"],
                     filter=probefilter.parse('file ~ "*.so"')),
}
BUILT = {name: plan_for(**kw) for name, kw in PLANS.items()}

ADDRESSES = [0, 0xffffffff81200010, 0xffffffff81200400, 0xffffffff81300004,
             0xffffffff81400008, 0xffffffffc0001010, 0x401234, 0x401235, 0xdead]
TEXTS = [b"", b"cat", b"%s%d%%", b'a"b\\c', b"tab\there\nnl", b"\x1b[31mred", b"\xff\xfe bad",
         "caf\u00e9 \u202e".encode(), b"x" * 40]


def ucaller(addr: int, pid: int) -> str:
    """User names as hostile as the kernel's (a binary's symbols are anyone's)."""
    return f'main%s"\x1b+0x{addr & 0xff:x}' if addr & 1 else f"0x{addr:x}"


def wall(ns: int) -> float:
    return ((ns + 500) // 1000) / 1e6 + 1.7e9


def c_string(text: bytes, size: int) -> bytes:
    return (text[:size - 1] + b"\0").ljust(size, b"\0")


@st.composite
def samples(draw):
    name = draw(st.sampled_from(sorted(BUILT)))
    plan = BUILT[name]
    index = draw(st.sampled_from([*range(len(plan.probes)), len(plan.probes) + 3]))
    probe = plan.probes[min(index, len(plan.probes) - 1)]
    payload = b""
    for slot in probe.layout.slots:
        if slot.is_string:
            payload += c_string(draw(st.sampled_from(TEXTS)), slot.size)
        else:
            payload += draw(st.integers(0, 2**64 - 1) | st.sampled_from(
                [2**64 - 2, 2**64 - 1, 2**64 - 4095, 2**31, 2**15 - 2, 3])).to_bytes(8, "little")
    # only the used part of the last string is sent; a sample may also arrive short,
    # or end where its scalars end
    scalars_end = len(probe.layout.scalars) * 8
    cut = draw(st.sampled_from([None, None, None, -1, len(payload) // 2, 0, scalars_end,
                                scalars_end - 1]))
    if cut is not None:
        payload = payload[:cut]
    bits = st.sampled_from([0, 0, 0, 0, 1, 2, 1 << 17])
    head = dict(ts_ns=draw(st.integers(0, 2**63)), pid=draw(st.integers(0, 2**32 - 1)),
                tid=draw(st.integers(0, 2**32 - 1)), **{"ctx.cpu": draw(st.integers(0, 4096))},
                latency_ns=draw(st.sampled_from([0, 1, 1530, 2**64 - 1])),
                ret_ip=draw(st.sampled_from(ADDRESSES)), faults=draw(bits),
                truncated=draw(bits), comm=c_string(draw(st.sampled_from(TEXTS)), 16))
    return name, raw_event(index, payload, **head)


def pair(name: str, stats: probefmt.Stats | None = None):
    """A fresh decoder and storm path over one plan (`stats`: its --summary counts)."""
    plan = BUILT[name]
    dec = probefmt.Decoder(plan, KSYMS, usym=ucaller, ucaller=ucaller)
    return dec, proberows.Rows(plan, dec, KSYMS, ucaller, wall,
                               stats.note if stats is not None else None)


# one storm path per plan for the whole run, as in a session: what its caches keep
# from one sample must never show in another's line
NOTED: list = []
LIVE = {name: (proberows.Rows(plan, probefmt.Decoder(plan, KSYMS, usym=ucaller,
                                                      ucaller=ucaller),
                              KSYMS, ucaller, wall, lambda i, lat: NOTED.append((i, lat))))
        for name, plan in BUILT.items()}


@settings(max_examples=2500, deadline=None)
@given(samples())
def test_the_storm_path_writes_what_the_decoder_writes(sample):
    name, raw = sample
    dec = pair(name)[0]                 # the definition, fresh for each sample
    rows = LIVE[name]
    NOTED.clear()
    ev = dec(raw)
    assert rows.text(raw) == (None if ev is None else probefmt.ftrace_text(ev))
    assert rows.json(raw) == (None if ev is None else
                              dumps({"type": "event", **probefmt.json_event(ev, wall)}))
    # a line-only run names no entry's caller (probe.py): the same lines
    lines_only = probefmt.Decoder(BUILT[name], KSYMS, usym=ucaller, ucaller=ucaller,
                                  entry_callers=False)(raw)
    assert (lines_only is None) == (ev is None)
    if ev is not None:
        assert probefmt.ftrace_text(lines_only) == probefmt.ftrace_text(ev)
    # --summary: each shown event counted once, with its latency (text, then JSON)
    assert NOTED == ([] if ev is None else [(ev.probe.index, ev.latency_ns)] * 2)


def same(name: str, raw: bytes) -> None:
    dec, rows = pair(name)
    ev = dec(raw)
    assert rows.text(raw) == (None if ev is None else probefmt.ftrace_text(ev))
    assert rows.json(raw) == (None if ev is None else
                              dumps({"type": "event", **probefmt.json_event(ev, wall)}))


SPECIAL = [0, 3, 2**64 - 1, 2**64 - 2, 2**64 - 4095, 2**64 - 4096, 2**31, 2**31 - 1, 0xffffffff,
           0xfffe, 2**63]


def test_every_special_value_on_every_probe():
    """Each edge value (-1, -2, the errno range's ends, sign bits) in every scalar of
    every probe, with each caller: the cases a random draw may miss."""
    for name, plan in BUILT.items():
        for probe in plan.probes:
            for value in SPECIAL:
                payload = b"".join(value.to_bytes(8, "little") if not s.is_string else
                                   c_string(b"/etc/x", s.size) for s in probe.layout.slots)
                for ip in ADDRESSES:
                    for latency in (0, 1530):
                        same(name, raw_event(probe.index, payload, ret_ip=ip,
                                             latency_ns=latency))


def test_common_samples_take_the_storm_path():
    """The path is taken (the decoder is not called) for a sample it covers; a
    hostile string is still quoted and escaped, and % in it is only text."""
    rows = pair("scalars")[1]
    rows.decoder = None                 # any fallback would fail here
    probe = BUILT["scalars"].probes[0]
    payload = b"".join((2**64 - 2).to_bytes(8, "little") for s in probe.layout.scalars)
    raw = raw_event(0, payload + c_string(b'%s "q"\x1b', 16) + b"/tmp/x\0", comm=b"a%db\n")
    line = rows.text(raw)
    assert line.startswith("           a%db\\n-43      [001]     1.500000: myopen: "
                           "(do_sys_openat2+0x0) u8=254 ")
    assert 's8=-2 ' in line and "x64=0xfffffffffffffffe" in line
    assert line.endswith('mid="%s \\"q\\"\\x1b" last="/tmp/x"')
    event = json.loads(rows.json(raw))
    assert event["args"]["mid"] == '%s "q"\x1b' and event["comm"] == "a%db\n"
    assert event["args"]["s64"] == -2 and event["args"]["u64"] == 2**64 - 2


def test_stacks_and_context_runs_take_the_decoders_way():
    plan = plan_for(["p:do_sys_openat2 a=%di"], kstack=True)
    rows = proberows.Rows(plan, probefmt.Decoder(plan, KSYMS), KSYMS, ucaller, wall)
    assert rows.probes == (None,)
    assert [p is not None for p in pair("filtered")[1].probes] == [False, True]
    assert decode.PROBE_EVENT.head.size == proberows.HEADER


def test_a_line_only_run_names_no_entrys_user_caller():
    """Naming a user address loads libbcc's symbolizer: a run whose lines never
    show an entry's caller must not ask for one (a return's it does)."""
    asked = []

    def named(addr: int, pid: int) -> str:
        asked.append(addr)
        return "main+0x1"
    plan = BUILT["uprobes"]
    dec = probefmt.Decoder(plan, KSYMS, usym=named, ucaller=named, entry_callers=False)
    entry = raw_event(0, b"\0" * 8 + b"x\0" + b"cat\0", ret_ip=0x401235)
    assert dec(entry).caller is None and asked == []
    assert dec(raw_event(1, b"\0" * 8, ret_ip=0x401235)).caller == "main+0x1"
    assert asked == [0x401235]
