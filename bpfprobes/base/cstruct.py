"""C structs mirrored once in Python, as data.

A layout is a table of (field, C type) in the header's order; from it come a
ctypes.Structure (sizes and offsets follow the C ABI, and a unit test compiles
the real header with gcc to prove they agree) and a struct.Struct that unpacks
a sample in one call on the hot path.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from functools import cached_property

_CTYPES = {"u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32,
           "u64": ctypes.c_uint64, "s8": ctypes.c_int8, "s16": ctypes.c_int16,
           "s32": ctypes.c_int32, "s64": ctypes.c_int64}
_STRUCT_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "s8": "b", "s16": "h",
                 "s32": "i", "s64": "q"}


def ctype_of(ctype: str):
    """The ctypes type of a C type as layouts write it: "u32", "char[16]", "s32[16]"."""
    base, bracket, count = ctype.partition("[")
    if bracket:
        return (ctypes.c_char if base == "char" else _CTYPES[base]) * int(count[:-1])
    return _CTYPES[ctype]


@dataclass(frozen=True)
class Layout:
    """A C struct whose last field may be a variable-length tail (sent partly)."""

    c_name: str
    fields: tuple[tuple[str, str], ...]   # (name, "u32" | "s64" | "char[16]" ...)
    tail: tuple[str, int] | None = None   # (name, capacity) of the trailing char array

    @cached_property
    def ctype(self) -> type[ctypes.Structure]:
        fields = [(n, ctype_of(t)) for n, t in self.fields]
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
            # an array is its bytes (char[]: a C string, cut at its NUL by the decoder)
            fmt += f"{ctypes.sizeof(ctype_of(ctype))}s" if "[" in ctype else _STRUCT_CODES[ctype]
            pos = off + ctypes.sizeof(ctype_of(ctype))
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
