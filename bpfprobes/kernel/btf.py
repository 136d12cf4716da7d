"""A small reader of the kernel's BTF (/sys/kernel/btf/vmlinux).

Used where headers cannot be trusted: struct member offsets (task_struct->
real_parent when the installed headers are another kernel's) and function
parameter names (`p:do_sys_openat2 filename:string`). Pure Python, no root.
"""
from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

# kind -> (bytes after the 12-byte header that do not depend on vlen, bytes per vlen entry)
_KIND_EXTRA = {1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0),
               8: (0, 0), 9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0),
               15: (0, 12), 16: (0, 0), 17: (4, 0), 18: (0, 0), 19: (0, 12)}
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, \
    FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(1, 20)
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


class BtfError(Exception):
    pass


@dataclass(frozen=True)
class Param:
    name: str
    index: int          # 1-based
    c_type: str         # readable C spelling, e.g. "const char *"
    size: int           # bytes
    signed: bool
    is_char_pointer: bool


class Btf:
    def __init__(self, data: bytes) -> None:
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data, 0)
        if magic != 0xEB9F:
            raise BtfError("not BTF data (bad magic)")
        self._data = data
        self._types = hdr_len + type_off
        self._types_end = self._types + type_len
        self._strs = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self._pos: array | None = None

    @classmethod
    def load(cls, path: Path = VMLINUX) -> "Btf":
        try:
            return cls(path.read_bytes())
        except OSError as e:
            raise BtfError(f"cannot read {path}: {e.strerror}") from e

    def _index(self) -> array:
        """Start offset of every type, by id (id 0 is void)."""
        if self._pos is None:
            pos = array("I", [0])
            data, off, end, unpack, extra = self._data, self._types, self._types_end, \
                struct.unpack_from, _KIND_EXTRA
            while off < end:
                info = unpack("<I", data, off + 4)[0]
                fixed, per = extra[(info >> 24) & 0x1F]
                pos.append(off)
                off += 12 + fixed + per * (info & 0xFFFF)
            self._pos = pos
        return self._pos

    def _name(self, name_off: int) -> str:
        end = self._strs.index(b"\0", name_off)
        return self._strs[name_off:end].decode()

    def _header(self, tid: int) -> tuple[int, int, int, int, int]:
        """(name_off, kind, vlen, kind_flag, size_or_type) of a type id."""
        off = self._index()[tid]
        name_off, info, st = struct.unpack_from("<III", self._data, off)
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, st

    def _name_offsets(self, name: str) -> set[int]:
        """Offsets of `name` in the string section (usually one: strings are deduplicated)."""
        key, out, start = b"\0" + name.encode() + b"\0", set(), 0
        if self._strs.startswith(key[1:]):
            out.add(0)
        while (i := self._strs.find(key, start)) >= 0:
            out.add(i + 1)
            start = i + 1
        return out

    def find(self, name: str, kind: int) -> int:
        """Type id of the first type of `kind` named `name`."""
        offs = self._name_offsets(name)
        if offs:
            pos, data, unpack = self._index(), self._data, struct.unpack_from
            for tid in range(1, len(pos)):
                name_off, info = unpack("<II", data, pos[tid])
                if name_off in offs and (info >> 24) & 0x1F == kind:
                    return tid
        raise BtfError(f"{name} is not in the kernel's BTF")

    def _members(self, tid: int):
        name_off, kind, vlen, kflag, _ = self._header(tid)
        base = self._index()[tid] + 12
        for i in range(vlen):
            m_name, m_type, m_off = struct.unpack_from("<III", self._data, base + 12 * i)
            yield self._name(m_name), m_type, (m_off & 0xFFFFFF) if kflag else m_off

    def resolve(self, tid: int) -> int:
        """Skip typedefs and qualifiers."""
        while True:
            _, kind, _, _, st = self._header(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = st

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of `member` in `struct struct_name`, looking into anonymous members."""
        found = self._member_bits(self.find(struct_name, STRUCT), member)
        if found is None:
            raise BtfError(f"struct {struct_name} has no member {member}")
        if found % 8:
            raise BtfError(f"{struct_name}.{member} is a bitfield")
        return found // 8

    def _member_bits(self, tid: int, member: str) -> int | None:
        for name, m_type, bits in self._members(tid):
            if name == member:
                return bits
            if not name:
                inner = self.resolve(m_type)
                if self._header(inner)[1] in (STRUCT, UNION):
                    sub = self._member_bits(inner, member)
                    if sub is not None:
                        return bits + sub
        return None

    def size_of(self, tid: int) -> int:
        tid = self.resolve(tid)
        _, kind, _, _, st = self._header(tid)
        if kind == PTR:
            return 8
        if kind == ARRAY:
            off = self._index()[tid] + 12
            elem, _idx, n = struct.unpack_from("<III", self._data, off)
            return n * self.size_of(elem)
        return st if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT) else 0

    def type_name(self, tid: int) -> str:
        """C spelling of a type, enough to show users (no function pointers' details)."""
        if tid == 0:
            return "void"
        name_off, kind, _, _, st = self._header(tid)
        name = self._name(name_off)
        prefix = {STRUCT: "struct ", UNION: "union ", ENUM: "enum ", ENUM64: "enum ",
                  FWD: "struct "}.get(kind, "")
        if kind == PTR:
            return self.type_name(st) + " *" if self._header(st)[1] != FUNC_PROTO else "void *"
        if kind in (CONST, VOLATILE, RESTRICT):
            word = {CONST: "const", VOLATILE: "volatile", RESTRICT: "restrict"}[kind]
            return f"{word} {self.type_name(st)}"
        if kind == TYPE_TAG:
            return self.type_name(st)
        return prefix + name if name else prefix + "<anon>"

    def _is_signed(self, tid: int) -> bool:
        tid = self.resolve(tid)
        _, kind, _, _, _ = self._header(tid)
        if kind != INT:
            return kind in (ENUM,)
        enc = struct.unpack_from("<I", self._data, self._index()[tid] + 12)[0]
        return bool((enc >> 24) & 0x1)

    def _is_char_pointer(self, tid: int) -> bool:
        tid = self.resolve(tid)
        _, kind, _, _, st = self._header(tid)
        if kind != PTR:
            return False
        target = self.resolve(st)
        t_name, t_kind, _, _, t_size = self._header(target)
        return t_kind == INT and t_size == 1 and self._name(t_name) in ("char", "unsigned char",
                                                                         "signed char")

    def func_return(self, func: str) -> tuple[int, bool, bool] | None:
        """(size, is a pointer, signed) of what kernel function `func` returns;
        None when it returns void."""
        ret = self._header(self._header(self.find(func, FUNC))[4])[4]
        if ret == 0:
            return None
        return (self.size_of(ret), self._header(self.resolve(ret))[1] == PTR,
                self._is_signed(ret))

    def func_params(self, func: str) -> list[Param]:
        """Parameters of kernel function `func`, in order."""
        proto = self._header(self.find(func, FUNC))[4]
        base, vlen = self._index()[proto] + 12, self._header(proto)[2]
        out = []
        for i in range(vlen):
            name_off, ptype = struct.unpack_from("<II", self._data, base + 8 * i)
            out.append(Param(self._name(name_off), i + 1, self.type_name(ptype),
                             self.size_of(ptype), self._is_signed(ptype),
                             self._is_char_pointer(ptype)))
        return out
