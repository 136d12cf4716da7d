"""Bytes from the kernel -> events (dicts). Layouts mirror bpf_c/*.h once, as data.

Each layout is a table of (field, C type) in the header's order; from it we
build a ctypes.Structure (sizes and offsets follow the C ABI, and a unit test
compiles the real header with gcc to prove they agree) and a struct.Struct
that unpacks a sample in one call on the hot path.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from functools import cached_property

from .safetext import decode_exact

_CTYPES = {"u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32,
           "u64": ctypes.c_uint64, "s8": ctypes.c_int8, "s16": ctypes.c_int16,
           "s32": ctypes.c_int32, "s64": ctypes.c_int64}
_STRUCT_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "s8": "b", "s16": "h",
                 "s32": "i", "s64": "q"}


def _ctype(ctype: str):
    if ctype.startswith("char["):
        return ctypes.c_char * int(ctype[5:-1])
    return _CTYPES[ctype]


@dataclass(frozen=True)
class Layout:
    """A C struct whose last field may be a variable-length tail (sent partly)."""

    c_name: str
    fields: tuple[tuple[str, str], ...]   # (name, "u32" | "s64" | "char[16]" ...)
    tail: tuple[str, int] | None = None   # (name, capacity) of the trailing char array

    @cached_property
    def ctype(self) -> type[ctypes.Structure]:
        fields = [(n, _ctype(t)) for n, t in self.fields]
        if self.tail:
            fields.append((self.tail[0], ctypes.c_char * self.tail[1]))
        return type(self.c_name, (ctypes.Structure,), {"_fields_": fields})

    @cached_property
    def head(self) -> struct.Struct:
        """Unpacker of the fixed part, padding placed where the C compiler puts it."""
        fmt, pos = "<", 0
        for name, ctype in self.fields:
            off = getattr(self.ctype, name).offset
            fmt += "x" * (off - pos)
            fmt += f"{ctype[5:-1]}s" if ctype.startswith("char[") else _STRUCT_CODES[ctype]
            pos = off + ctypes.sizeof(_ctype(ctype))
        end = getattr(self.ctype, self.tail[0]).offset if self.tail else ctypes.sizeof(self.ctype)
        return struct.Struct(fmt + "x" * (end - pos))

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.fields)

    def unpack(self, raw: bytes) -> dict:
        out = dict(zip(self.names, self.head.unpack_from(raw)))
        if self.tail:
            out[self.tail[0]] = raw[self.head.size:]
        return out


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


class _Texts(dict):
    """C string bytes -> text, remembered: comms and hot paths come back again and
    again, and a dict hit is cheaper than split + decode (the storm path)."""

    LIMIT = 4096

    def __missing__(self, raw: bytes) -> str:
        if len(self) >= self.LIMIT:
            self.clear()
        text = self[raw] = cstr(raw)
        return text


_texts = _Texts()
_OPEN_HEAD = OPEN_EVENT.head
_OPEN_PATH = _OPEN_HEAD.size
# open_event() spells the fields out (a dict display costs half of dict(zip(...)));
# this keeps it honest against the layout
assert OPEN_EVENT.names == ("ts_ns", "pid", "tid", "uid", "ret", "flags", "mode", "syscall",
                            "truncated", "path_len", "comm")


def open_event(raw: bytes, _unpack=_OPEN_HEAD.unpack_from, _texts=_texts) -> dict:
    """An opensnoop sample -> event fields (path and comm as text)."""
    ts, pid, tid, uid, ret, flags, mode, sc, trunc, plen, comm = _unpack(raw)
    return {"ts_ns": ts, "pid": pid, "tid": tid, "uid": uid, "ret": ret, "flags": flags,
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
