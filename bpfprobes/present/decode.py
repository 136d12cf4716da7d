"""Bytes from the kernel -> events (dicts). Each event's layout mirrors its
bpf_c/*.h struct once, as data (cstruct.Layout)."""
from __future__ import annotations

from typing import Callable

from bpfprobes.base.cstruct import Layout
from bpfprobes.base.safetext import decode_exact


def cstr(raw: bytes) -> str:
    """A C string (up to the first NUL) as text that keeps every byte: bytes that
    are not UTF-8 become surrogate escapes (safetext.decode_exact), shown as
    `\\xNN` on a terminal and given back exactly by JSON."""
    return decode_exact(raw.split(b"\0", 1)[0])


OPEN_EVENT = Layout("open_event", (
    ("ts_ns", "u64"), ("pid", "u32"), ("tid", "u32"), ("uid", "u32"), ("ret", "s32"),
    ("flags", "u64"), ("mode", "u32"), ("syscall", "u16"), ("truncated", "u16"),
    ("path_len", "u32"), ("comm", "char[16]")), tail=("path", 4096))

OPEN_SYSCALLS = ("open", "openat", "openat2")


class Memo(dict):
    """key -> `make(key)`, remembered, at most LIMIT entries (then cleared): the
    storm path's texts of values that come back again and again."""

    LIMIT = 4096

    def __init__(self, make: Callable) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key):
        if len(self) >= self.LIMIT:
            self.clear()
        value = self[key] = self.make(key)
        return value


class Texts(Memo):
    """C string bytes -> text (by `make`: cstr, or a line's own quoting), remembered:
    comms and hot paths come back again and again, and a dict hit is cheaper than
    split + decode (the storm path). Bounded in entries, and in bytes: a string
    longer than KEPT_MAX is made each time (any user names files as long and as
    many as they like; a 4 KiB one would pin ~28 KiB here as JSON)."""

    KEPT_MAX = 256

    def __init__(self, make: Callable[[bytes], str] | None = None) -> None:
        super().__init__(make or cstr)

    def __missing__(self, raw: bytes) -> str:
        if len(raw) > self.KEPT_MAX:
            return self.make(raw)
        return super().__missing__(raw)


_texts = Texts()
_OPEN_HEAD = OPEN_EVENT.head
_OPEN_PATH = _OPEN_HEAD.size
# open_event() spells the fields out (a dict display costs half of dict(zip(...)));
# this keeps it honest against the layout
assert OPEN_EVENT.names == ("ts_ns", "pid", "tid", "uid", "ret", "flags", "mode", "syscall",
                            "truncated", "path_len", "comm")


def open_event(raw: bytes, _unpack=_OPEN_HEAD.unpack_from, _texts=_texts) -> dict:
    """An opensnoop sample -> event fields (path and comm as text; the result
    also as fd, -1 on failure, and err, 0 on success)."""
    ts, pid, tid, uid, ret, flags, mode, sc, trunc, plen, comm = _unpack(raw)
    return {"ts_ns": ts, "pid": pid, "tid": tid, "uid": uid, "ret": ret,
            "fd": ret if ret >= 0 else -1, "err": -ret if ret < 0 else 0, "flags": flags,
            "mode": mode, "syscall": OPEN_SYSCALLS[sc] if sc < 3 else str(sc),
            "truncated": trunc != 0, "path_len": plen, "comm": _texts[comm],
            "path": _texts[raw[_OPEN_PATH:_OPEN_PATH + plen]]}


# ---- execsnoop (bpf_c/execsnoop.h) ----
EXEC_ARGS_SIZE = 16384
EXEC_ARG_MAX = 8192
EXEC_ARG_CUT = 0x8000

EXEC_EVENT = Layout("exec_event", (
    ("ts_ns", "u64"), ("pid", "u32"), ("tid", "u32"), ("ppid", "u32"), ("uid", "u32"),
    ("ret", "s32"), ("syscall", "u16"), ("flags", "u16"), ("argc", "u16"), ("reserved", "u16"),
    ("args_len", "u32"), ("comm", "char[16]")), tail=("args", EXEC_ARGS_SIZE))

EXEC_SYSCALLS = ("execve", "execveat")
# EXEC_TRUNC_* bit -> the name JSON gives the reason
EXEC_TRUNCATION = ((1, "max-args"), (2, "space"), (4, "arg-cut"), (8, "fault"))
EXEC_ARGS_MISSING = 1 | 2 | 8    # flags meaning argv has more than was captured


def exec_args(raw: bytes, argc: int) -> tuple[list[str], list[int]]:
    """args[] records (2-byte little-endian length | cut bit, then bytes with their NUL)
    -> (arguments as text, indexes of the arguments that were cut)."""
    argv: list[str] = []
    cut: list[int] = []
    pos = 0
    for i in range(argc):
        if pos + 2 > len(raw):
            break
        head = raw[pos] | raw[pos + 1] << 8
        n = head & ~EXEC_ARG_CUT
        arg = raw[pos + 2:pos + 2 + n].split(b"\0", 1)[0]     # an argument never holds a NUL
        argv.append(decode_exact(arg))
        if head & EXEC_ARG_CUT:
            cut.append(i)
        pos += 2 + n
    return argv, cut


def exec_event(raw: bytes) -> dict:
    """An execsnoop sample -> event fields (comm and argv as text)."""
    e = EXEC_EVENT.unpack(raw)
    e["comm"] = cstr(e["comm"])
    e["argv"], e["cut"] = exec_args(e.pop("args")[:e["args_len"]], e["argc"])
    e["syscall"] = EXEC_SYSCALLS[e["syscall"]] if e["syscall"] < 2 else str(e["syscall"])
    e["truncation"] = [name for bit, name in EXEC_TRUNCATION if e["flags"] & bit]
    return e




# bpf_c/context.h's struct exec_ctx, as it sits inside an event (tracectx.py reads it)
EXEC_CTX = (("ctx.cpu", "u32"), ("ctx.preempt", "u32"), ("ctx.source", "u8"),
            ("ctx.implied", "u8"), ("ctx.reserved", "u16"))


def _lift_ctx(e: dict) -> None:
    """ctx.* fields -> e["ctx"] (for tracectx.Decoder) and e["cpu"]."""
    e["ctx"] = {"cpu": e.pop("ctx.cpu"), "preempt": e.pop("ctx.preempt"),
                "source": e.pop("ctx.source"), "implied": e.pop("ctx.implied")}
    e["cpu"] = e["ctx"]["cpu"]
    del e["ctx.reserved"]


# bpf_c/probe_event.h: the header of every `bpfprobes probe` event; the payload after
# it is laid out per probe by probelayout.py (the same computation codegen used).
PROBE_EVENT = Layout("probe_event", (
    ("ts_ns", "u64"), ("latency_ns", "u64"), ("ret_ip", "u64"), ("faults", "u64"),
    ("truncated", "u64"), ("pid", "u32"), ("tid", "u32"), ("probe", "u32"), *EXEC_CTX,
    ("kstack", "s32"), ("ustack", "s32"), ("comm", "char[16]")), tail=("payload", 8))


def probe_event(raw: bytes) -> dict:
    """A probe sample -> header fields (comm as text, the context under "ctx")
    and the raw payload bytes."""
    e = PROBE_EVENT.unpack(raw)
    e["comm"] = cstr(e["comm"])
    _lift_ctx(e)
    return e

# bpf_c/irq.h
IRQ_EVENT = Layout("irq_event", (
    ("ts_ns", "u64"), ("duration_ns", "u64"), ("func", "u64"), ("irq", "s32"), ("ret", "s32"),
    ("pid", "u32"), ("tid", "u32"), ("kstack", "s32"), ("kind", "u8"), ("reserved", "char[3]"),
    *EXEC_CTX, ("comm", "char[16]")))
IRQ_KINDS = ("hardirq", "softirq", "tasklet", "tasklet_schedule")


def irq_event(raw: bytes) -> dict:
    """An irq sample -> event fields (texts decoded, the context under "ctx")."""
    e = IRQ_EVENT.unpack(raw)
    _lift_ctx(e)
    del e["reserved"]
    e["comm"] = cstr(e["comm"])
    e["kind"] = IRQ_KINDS[e["kind"]] if e["kind"] < len(IRQ_KINDS) else str(e["kind"])
    return e


# bpf_c/metrics.h: a row's labels in the in-kernel metrics table, and the fixed
# head of its value (the log2 latency buckets follow: value_size says how many)
METRIC_ARGS = 4
METRIC_KEY = Layout("metric_key", (("probe", "u32"), ("pid", "u32"), ("err", "s32"),
                                   ("reserved", "u32"), ("comm", "char[16]"),
                                   ("args", f"u64[{METRIC_ARGS}]")))
METRIC_VALUE = Layout("metric_value", (("count", "u64"), ("sum_ns", "u64")))
