"""opensnoop's JSON lines (openjson's templates) are what json.dumps writes of
the event dict, byte for byte, for any sample: hostile comms and paths
(controls, quotes, `%`, non-UTF-8, bidi), every flag set, every result."""
from __future__ import annotations

import errno
import json

from hypothesis import given, settings, strategies as st

from bpfprobes.kernel import openflags
from bpfprobes.present import decode, openjson
from bpfprobes.present.output import dumps

TEXTS = [b"", b"cat", b"%s%d%%", b'a"b\\c', b"tab\there\nnl", b"\x1b[31mred", b"\xff\xfe bad",
         "caf\u00e9 \u202e".encode(), b"x" * 40, b"/etc/passwd"]


def wall(ns: int) -> float:
    return ((ns + 500) // 1000) / 1e6 + 1.7e9


def event(raw: bytes) -> dict:
    """The schema, spelled out: what the line must say."""
    e = decode.open_event(raw)
    ret = e["ret"]
    return {"type": "event", "pid": e["pid"], "tid": e["tid"], "uid": e["uid"],
            "comm": e["comm"], "fd": e["fd"], "err": e["err"],
            "errno": errno.errorcode.get(-ret) if ret < 0 else None,
            "flags": e["flags"], "flags_names": openflags.describe(e["flags"]),
            "mode": e["mode"], "syscall": e["syscall"], "path": e["path"],
            "truncated": e["truncated"], "ts": wall(e["ts_ns"])}


@st.composite
def samples(draw):
    h = decode.OPEN_EVENT.ctype()
    path = draw(st.sampled_from(TEXTS) | st.binary(max_size=64)) + b"\0"
    values = dict(ts_ns=draw(st.integers(0, 2**64 - 1)), pid=draw(st.integers(0, 2**32 - 1)),
                  tid=draw(st.integers(0, 2**32 - 1)), uid=draw(st.integers(0, 2**32 - 1)),
                  ret=draw(st.integers(-2**31, 2**31 - 1) | st.sampled_from([-2, -13, -4095, 0,
                                                                             -600])),
                  flags=draw(st.integers(0, 2**64 - 1) | st.sampled_from([0, 0o101, 0o2100000])),
                  mode=draw(st.integers(0, 2**32 - 1)), syscall=draw(st.integers(0, 5)),
                  truncated=draw(st.integers(0, 1)), path_len=len(path),
                  comm=(draw(st.sampled_from(TEXTS))[:15] + b"\0").ljust(16, b"\0"))
    for k, v in values.items():
        setattr(h, k, v)
    return bytes(h)[:decode.OPEN_EVENT.head.size] + path


@settings(max_examples=2000, deadline=None)
@given(samples())
def test_every_line_is_what_json_dumps_writes(raw):
    line = openjson.lines(wall)(raw)
    assert line == dumps(event(raw))
    assert json.loads(line) == event(raw)


def test_the_name_filter_reads_the_comm():
    h = decode.OPEN_EVENT.ctype()
    h.comm, h.path_len = b"nginx: worker", 3
    raw = bytes(h)[:decode.OPEN_EVENT.head.size] + b"/x\0"
    assert openjson.lines(wall, "worker")(raw) is not None
    assert openjson.lines(wall, "apache")(raw) is None


def test_remembered_texts_are_bounded_in_entries_and_bytes():
    """Any user can name files as long and as many as they like: a string past
    KEPT_MAX bytes is made each time, and the table is cleared at LIMIT entries."""
    texts = decode.Texts(lambda raw: raw.hex())
    long = b"\xff" * (decode.Texts.KEPT_MAX + 1)
    assert texts[long] == long.hex() and long not in texts
    for i in range(decode.Texts.LIMIT + 10):
        assert texts[b"%d" % i] == (b"%d" % i).hex()
    assert len(texts) <= decode.Texts.LIMIT
