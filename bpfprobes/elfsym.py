"""ELF symbols of a user binary, and where they sit in the file.

uprobe_events and the uprobe PMU take a *file offset*, while symbol tables
hold *virtual addresses*: the PT_LOAD segment that contains an address says
how to convert (offset = vaddr - p_vaddr + p_offset). A small pure-Python
reader: it checks a uprobe target before anything is attached (binary
missing, not ELF, symbol absent) and prints the exact uprobe_events line.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .errors import BpfprobesError

_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_PT_LOAD = 1
_STT_NAMES = {0: "notype", 1: "object", 2: "func", 3: "section", 4: "file", 5: "common",
              6: "tls", 10: "ifunc"}
_ET_NAMES = {1: "rel", 2: "exec", 3: "dyn", 4: "core"}


class ElfError(BpfprobesError):
    """A uprobe target that is not a usable ELF file."""


@dataclass(frozen=True)
class ElfSymbol:
    name: str
    value: int          # virtual address
    size: int
    kind: str           # func | object | ifunc | notype ...


@dataclass(frozen=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int          # PF_X = 1, PF_W = 2, PF_R = 4


class Elf:
    """Header, PT_LOAD segments and the symbol tables (.symtab, then .dynsym)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            with open(path, "rb") as f:
                self._data = f.read()
        except OSError as e:
            raise ElfError(f"cannot read {path}: {e.strerror}",
                           "give the path of an executable or shared library") from e
        d = self._data
        if d[:4] != b"\x7fELF":
            raise ElfError(f"{path} is not an ELF file", "uprobes need a compiled binary, "
                           "not a script: probe its interpreter instead")
        if d[4] not in (1, 2) or d[5] not in (1, 2):
            raise ElfError(f"{path}: unknown ELF class or byte order")
        self.bits = 32 if d[4] == 1 else 64
        self._end = "<" if d[5] == 1 else ">"
        if self.bits == 64:
            (self.type, _machine, _ver, _entry, self._phoff, self._shoff, _flags, _ehsize,
             self._phentsize, self._phnum, self._shentsize, self._shnum,
             _shstrndx) = self._unpack("HHIQQQIHHHHHH", 16)
        else:
            (self.type, _machine, _ver, _entry, self._phoff, self._shoff, _flags, _ehsize,
             self._phentsize, self._phnum, self._shentsize, self._shnum,
             _shstrndx) = self._unpack("HHIIIIIHHHHHH", 16)

    def _unpack(self, fmt: str, offset: int) -> tuple:
        try:
            return struct.unpack_from(self._end + fmt, self._data, offset)
        except struct.error as e:
            raise ElfError(f"{self.path}: truncated ELF file") from e

    @property
    def kind(self) -> str:
        return _ET_NAMES.get(self.type, str(self.type))

    @cached_property
    def segments(self) -> tuple[Segment, ...]:
        out = []
        for i in range(self._phnum):
            off = self._phoff + i * self._phentsize
            if self.bits == 64:
                p_type, p_flags, p_offset, p_vaddr, _pa, p_filesz, p_memsz, _al = \
                    self._unpack("IIQQQQQQ", off)
            else:
                p_type, p_offset, p_vaddr, _pa, p_filesz, p_memsz, p_flags, _al = \
                    self._unpack("IIIIIIII", off)
            if p_type == _PT_LOAD:
                out.append(Segment(p_vaddr, p_offset, p_filesz, p_memsz, p_flags))
        return tuple(out)

    def _sections(self) -> list[tuple[int, int, int, int, int]]:
        """(sh_type, sh_offset, sh_size, sh_link, sh_entsize) of every section."""
        out = []
        for i in range(self._shnum):
            off = self._shoff + i * self._shentsize
            if self.bits == 64:
                _n, sh_type, _fl, _addr, sh_offset, sh_size, sh_link, _info, _al, sh_entsize = \
                    self._unpack("IIQQQQIIQQ", off)
            else:
                _n, sh_type, _fl, _addr, sh_offset, sh_size, sh_link, _info, _al, sh_entsize = \
                    self._unpack("IIIIIIIIII", off)
            out.append((sh_type, sh_offset, sh_size, sh_link, sh_entsize))
        return out

    @cached_property
    def symbols(self) -> dict[str, ElfSymbol]:
        """Defined symbols by name; .symtab wins over .dynsym (it has the local ones too)."""
        sections = self._sections()
        found: dict[str, ElfSymbol] = {}
        for wanted in (_SHT_DYNSYM, _SHT_SYMTAB):        # later tables overwrite earlier
            for sh_type, sh_offset, sh_size, sh_link, sh_entsize in sections:
                if sh_type != wanted or not sh_entsize or sh_link >= len(sections):
                    continue
                strtab = sections[sh_link]
                strings = self._data[strtab[1]:strtab[1] + strtab[2]]
                for i in range(sh_size // sh_entsize):
                    sym = self._symbol(sh_offset + i * sh_entsize, strings)
                    if sym is not None:
                        found[sym.name] = sym
        return found

    def _symbol(self, off: int, strings: bytes) -> ElfSymbol | None:
        if self.bits == 64:
            st_name, st_info, _other, st_shndx, st_value, st_size = self._unpack("IBBHQQ", off)
        else:
            st_name, st_value, st_size, st_info, _other, st_shndx = self._unpack("IIIBBH", off)
        if not st_name or st_shndx == 0 or not st_value:     # undefined or nameless
            return None
        end = strings.find(b"\0", st_name)
        name = strings[st_name:end if end >= 0 else len(strings)].decode(errors="replace")
        return ElfSymbol(name, st_value, st_size, _STT_NAMES.get(st_info & 0xF, "other"))

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        """File offset of a virtual address, from the PT_LOAD segment that maps it."""
        for s in self.segments:
            if s.vaddr <= vaddr < s.vaddr + s.filesz:
                return vaddr - s.vaddr + s.offset
        return None

    def offset_to_vaddr(self, offset: int) -> int | None:
        for s in self.segments:
            if s.offset <= offset < s.offset + s.filesz:
                return offset - s.offset + s.vaddr
        return None

    def symbol(self, name: str) -> ElfSymbol:
        sym = self.symbols.get(name)
        if sym is None:
            hint = "the binary has no symbol table (stripped?): give PATH:0xOFFSET" \
                if not self.symbols else "check the name with: nm -D " + self.path
            raise ElfError(f"symbol {name!r} not found in {self.path}", hint)
        return sym

    def symbol_offset(self, name: str, extra: int = 0) -> int:
        """File offset of SYM+extra, as uprobe_events wants it."""
        sym = self.symbol(name)
        off = self.vaddr_to_offset(sym.value + extra)
        if off is None:
            raise ElfError(f"{name} in {self.path} is not in a loadable segment")
        return off

    def resolve(self, vaddr: int) -> tuple[ElfSymbol, int] | None:
        """The function symbol containing a virtual address, and the offset into it."""
        best = None
        for sym in self.functions:
            if sym.value <= vaddr and (best is None or sym.value > best.value):
                best = sym
        if best is None or (best.size and vaddr >= best.value + best.size):
            return None
        return best, vaddr - best.value

    @cached_property
    def functions(self) -> tuple[ElfSymbol, ...]:
        return tuple(s for s in self.symbols.values() if s.kind in ("func", "ifunc"))
