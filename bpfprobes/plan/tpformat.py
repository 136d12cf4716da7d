"""Tracepoint format files (tracefs events/SUBSYS/EVENT/format) -> fields.

A tracepoint program reads its fields at the offsets the format file gives;
this module says where each field is and what a value of it means, so that
`t:syscalls:sys_enter_openat filename:string` needs nothing else.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from bpfprobes.base.errors import UsageError
from bpfprobes.plan.spec import ArgType, TYPES

_FIELD_RE = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);"
                       r"\s*signed:(?P<signed>\d+);")
_DECL_RE = re.compile(r"(?P<type>.*?)\s*\b(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*"
                      r"(?:\[(?P<len>[0-9]*)\])?\s*$")
# C integer types whose values are signed although syscall formats say signed:0
# (they widen every argument to a long)
_SIGNED_C = {"int", "long", "short", "long long", "signed char", "ssize_t", "pid_t", "off_t",
             "loff_t", "s8", "s16", "s32", "s64", "__s8", "__s16", "__s32", "__s64", "time64_t",
             "clockid_t", "key_serial_t", "long int", "short int", "long long int"}
# Widths of C types narrower than their slot (syscall formats widen every argument to 8
# bytes, and an int there carries garbage or zeros above bit 31)
_C_BITS = {"char": 8, "signed char": 8, "unsigned char": 8, "short": 16, "unsigned short": 16,
           "int": 32, "unsigned int": 32, "unsigned": 32, "umode_t": 16, "pid_t": 32,
           "uid_t": 32, "gid_t": 32, "key_serial_t": 32, "clockid_t": 32, "u8": 8, "s8": 8,
           "u16": 16, "s16": 16, "u32": 32, "s32": 32, "__u32": 32, "__s32": 32, "bool": 8}
_QUALIFIERS = re.compile(r"\b(const|volatile)\b")


@dataclass(frozen=True)
class TpField:
    name: str
    c_type: str          # as the format file writes it ("const char *", "char[16]")
    offset: int
    size: int
    signed: bool
    pointer: bool        # an address (a string argument reads what it points to)
    array: int | None    # element count of a fixed array (char comm[16] -> 16)
    dynamic: str | None  # '__data_loc' | '__rel_loc': the bytes live later in the record

    @property
    def is_char_array(self) -> bool:
        base = re.sub(r"\s+", " ", _QUALIFIERS.sub("", re.sub(r"\[\d*\]", "", self.c_type)))
        return (self.array is not None or self.dynamic is not None) and base.strip() == "char"

    def default_type(self, pointer_bits: int = 64) -> ArgType:
        """The type an argument gets when the user gave none."""
        if self.is_char_array:
            return TYPES["string"]
        if self.pointer:
            return TYPES[f"x{pointer_bits}"]
        if self.array is not None or self.dynamic is not None or self.size not in (1, 2, 4, 8):
            raise UsageError(f"field {self.name} ({self.c_type}, {self.size} bytes) is an array "
                             "or aggregate", "give it a type to read its first element, e.g. "
                             f"{self.name}:u64")
        base = re.sub(r"\s+", " ", _QUALIFIERS.sub("", self.c_type)).strip()
        signed = self.signed or base in _SIGNED_C
        bits = min(self.size * 8, _C_BITS.get(base, 64))
        return TYPES[f"{'s' if signed else 'u'}{bits}"]


def parse(text: str) -> dict[str, TpField]:
    """Every field of a format file, common_* included, by name."""
    out: dict[str, TpField] = {}
    for m in _FIELD_RE.finditer(text):
        decl = m["decl"].strip()
        dynamic = next((d for d in ("__data_loc", "__rel_loc") if decl.startswith(d + " ")), None)
        if dynamic:
            decl = decl[len(dynamic):].strip()
        d = _DECL_RE.match(decl)
        if d is None:
            continue
        c_type = d["type"].replace("[]", "").strip()
        array = int(d["len"]) if d["len"] else None
        if d["len"] == "" or dynamic:          # `char[] name` / `char name[]`
            c_type += "[]"
        elif array is not None:
            c_type += f"[{array}]"
        out[d["name"]] = TpField(d["name"], c_type, int(m["off"]), int(m["size"]),
                                 m["signed"] == "1", "*" in c_type and array is None and
                                 not dynamic, array, dynamic)
    return out
