"""ELF symbols of a user binary, and exactly where a uprobe on it lands.

uprobe_events and the uprobe PMU take a *file offset*, while symbol tables
hold *virtual addresses*: the PT_LOAD segment that contains an address says
how to convert (offset = vaddr - p_vaddr + p_offset). `Elf.place` computes
both once, for SYM+OFFS or a raw file offset; every backend uses that one
result. `boundary_problem` says when such a place is not the start of an
instruction (a breakpoint there corrupts the code the traced process runs).

The file is read with pread: the ELF header, program and section headers and
the symbol and string tables, each checked against the file's size and a
limit, so a hostile ELF is an ElfError, never a MemoryError or a traceback.
Bounds (a crafted ELF must cost neither minutes nor gigabytes): a table is
read only up to MAX_TABLE_BYTES, a single symbol is found by scanning its
table a chunk at a time (no index is built), and only a wildcard (count)
indexes the names it matches, at most MAX_INDEXED of them.

Opening (issue 11, F4): O_PATH|O_NOFOLLOW on the resolved path never opens a
device or a FIFO (an O_PATH open runs no driver code); its fstat decides, and
only a regular file is reopened for reading, through /proc/self/fd/N, so what
is read is the inode that was checked whatever a directory of the path
becomes meanwhile.

Attaching (issue 11, F1): the kernel looks a uprobe's path up again when it
attaches; a directory of it swapped for a symlink after the check would put the
breakpoint into another binary. `Elf.hold()` keeps the checked file open for
the rest of the process and returns /proc/self/fd/N, which the kernel resolves
(in the writer's/attacher's context: uprobe_events written by us, and BCC's
perf_event_open) to exactly that inode. BCC does not prefix /proc/PID/root to a
path under /proc, so -p keeps working.
"""
from __future__ import annotations

import bisect
import os
import re
import stat
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

from bpfprobes.base.errors import BpfprobesError
from bpfprobes.kernel import arch

_SHT_SYMTAB, _SHT_STRTAB, _SHT_DYNSYM, _SHT_GNU_VERSYM = 2, 3, 11, 0x6FFFFFFF
_SHT_NOBITS = 8
_VERSYM_HIDDEN = 0x8000         # memcpy@GLIBC_2.2.5: an old version, not what `memcpy` means
_PT_LOAD = 1
_PF_X = 1
_STT_NAMES = {0: "notype", 1: "object", 2: "func", 3: "section", 4: "file", 5: "common",
              6: "tls", 10: "ifunc"}
_CODE_KINDS = ("func", "ifunc", "notype")       # a probe on anything else hits data
_ET_NAMES = {1: "rel", 2: "exec", 3: "dyn", 4: "core"}
_STB_LOCAL = 0
_ELF_MACHINES = {3: "i386", 62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv64",
                 21: "ppc64", 22: "s390x", 8: "mips"}

# Bounds on what is read: a table larger than this is refused, not allocated.
MAX_TABLE_BYTES = 32 << 20      # one symbol or string table (libLLVM's .symtab: ~10 MiB)
MAX_INDEXED = 1 << 17           # names a wildcard may match (count's --limit is far below)
_SCAN_CHUNK = 1 << 20           # a symbol table is read this much at a time
_VALUES_KEPT = 5                # distinct addresses of an ambiguous name kept for the message
MAX_SECTIONS = 1 << 20
MAX_SECTION_NAMES = 1 << 20     # .shstrtab
MAX_DECODE_BYTES = 1 << 20      # the longest stretch decoded to check one boundary
MAX_INSN_BYTES = 15             # x86's longest instruction

# (header struct, program header struct, section header struct, symbol struct) by class
_LAYOUTS = {
    64: ("HHIQQQIHHHHHH", "IIQQQQQQ", "IIQQQQIIQQ", "IBBHQQ"),
    32: ("HHIIIIIHHHHHH", "IIIIIIII", "IIIIIIIIII", "IIIBBH"),
}
_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))

# Checked files kept open (dev, ino) -> fd, so the kernel attaches to exactly them
# (see Elf.hold). An attached uprobe holds the inode itself: one fd per binary.
_HELD: dict[tuple[int, int], int] = {}


class ElfError(BpfprobesError):
    """A uprobe target that is not a usable ELF file."""


@dataclass(frozen=True)
class ElfSymbol:
    name: str
    value: int          # virtual address (ARM Thumb: with bit 0 set)
    size: int
    kind: str           # func | object | ifunc | notype ...
    rank: int = 0       # 0 global, 1 an old (hidden) symbol version, 2 local


@dataclass(frozen=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int          # PF_X = 1, PF_W = 2, PF_R = 4


@dataclass(frozen=True)
class Placement:
    """Where one probe lands: what uprobe_events takes (path, file_offset) and what
    BCC's attach_uprobe(addr=) takes (vaddr), computed once."""
    path: str               # resolved: the file that was checked
    vaddr: int
    file_offset: int
    symbol: ElfSymbol | None    # the function containing it, if any
    offset: int             # into that function

    @property
    def where(self) -> str:
        if self.symbol is None:
            return f"{self.path}:{self.file_offset:#x}"
        return f"{self.symbol.name}+{self.offset:#x} in {self.path}"


def _dev_ino(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _kind_of(st: os.stat_result) -> str | None:
    if stat.S_ISREG(st.st_mode):
        return None
    return next((what for test, what in _FILE_KINDS if test(st.st_mode)), "not a regular file")


# a process's own view: its root (mount namespace) or a file it has mapped
_PROC_LINK = re.compile(r"/proc/[0-9]+/(root/|map_files/[0-9a-f]+-[0-9a-f]+$)")


def _open_regular(given: str) -> tuple[str, int, os.stat_result]:
    """(resolved path, fd, fstat) of a regular file. O_PATH|O_NOFOLLOW first: that
    opens no device (no driver code runs) and no FIFO, whatever a directory of the
    path was swapped for; its fstat decides; only a regular file is reopened for
    reading, through /proc/self/fd/N, i.e. that very inode. Every OSError is one
    ElfError line."""
    hint = "give the path of an executable or shared library"
    # realpath reads /proc/PID/root and map_files/ as plain links; the magic links
    # themselves lead into that process's mount namespace, or to a file since
    # replaced: those are opened as given (O_PATH opens nothing; fstat still decides)
    proc_link = _PROC_LINK.match(given) is not None
    path = given if proc_link else os.path.realpath(given)
    fd = -1
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC | (0 if proc_link else os.O_NOFOLLOW))
        try:
            st = os.fstat(pfd)
            if _dev_ino(st) != _dev_ino(os.stat(given)):
                raise ElfError(f"{given} resolves to {path}, which is another file",
                               "give the binary's own path")
            what = _kind_of(st)
            if what is not None:
                raise ElfError(f"{given} is {what}, not a binary", hint)
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY |
                         os.O_CLOEXEC)
        finally:
            os.close(pfd)
        got = os.fstat(fd)
    except OSError as e:
        if fd >= 0:
            os.close(fd)
        raise ElfError(f"cannot read {given}: {e.strerror or e}", hint) from e
    if _kind_of(got) is not None or _dev_ino(got) != _dev_ino(st):
        os.close(fd)
        raise ElfError(f"{given} changed while it was being checked",
                       "is something replacing it? try again")
    return path, fd, got


class Elf:
    """Header, PT_LOAD segments and the symbol tables (.symtab, then .dynsym) of a
    regular file, read on demand. `path` is the resolved path: give that one to the
    kernel. Close it (or use `with`) when done; the descriptor is not inherited."""

    def __init__(self, path: str | Path) -> None:
        self.given = str(path)
        self.path, self._fd, st = _open_regular(self.given)
        self.size = st.st_size
        self.dev_ino = (st.st_dev, st.st_ino)
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ reading

    def hold(self) -> str:
        """The path to give the kernel: /proc/self/fd/N of this checked file, kept
        open until the process exits (the kernel resolves it to this inode when it
        attaches, so a directory swapped meanwhile cannot redirect the probe)."""
        if self._fd < 0:
            raise ElfError(f"{self.given} is closed")
        fd = _HELD.get(self.dev_ino)
        if fd is None:
            fd = _HELD[self.dev_ino] = os.dup(self._fd)     # not inheritable, as _fd
        return f"/proc/self/fd/{fd}"

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Elf":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            os.close(fd)

    def _check_range(self, offset: int, size: int, what: str) -> None:
        """Refuse a table larger than MAX_TABLE_BYTES or outside the file."""
        if size > MAX_TABLE_BYTES:
            raise ElfError(f"{self.given}: its {what} claims {size} bytes, more than the "
                           f"{MAX_TABLE_BYTES >> 20} MiB read at most",
                           "a corrupt or hostile ELF file?")
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ElfError(f"{self.given}: its {what} lies outside the file "
                           "(a truncated or corrupt ELF file)")

    def _read(self, offset: int, size: int, what: str) -> bytes:
        """`size` bytes at `offset`, checked against the file and MAX_TABLE_BYTES."""
        self._check_range(offset, size, what)
        if self._fd < 0:
            raise ElfError(f"{self.given} is closed")
        chunks, got = [], 0
        while got < size:
            try:
                chunk = os.pread(self._fd, size - got, offset + got)
            except OSError as e:                          # EIO and the like: one line too
                raise ElfError(f"cannot read {self.given}: {e.strerror or e}") from e
            if not chunk:
                raise ElfError(f"{self.given} shrank while being read")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _read_header(self) -> None:
        ident = self._read(0, min(64, self.size), "ELF header")
        if ident[:4] != b"\x7fELF":
            raise ElfError(f"{self.given} is not an ELF file", "uprobes need a compiled binary, "
                           "not a script: probe its interpreter instead")
        if len(ident) < 16 or ident[4] not in (1, 2) or ident[5] not in (1, 2):
            raise ElfError(f"{self.given}: unknown ELF class or byte order")
        self.bits = 32 if ident[4] == 1 else 64
        self._end = "<" if ident[5] == 1 else ">"
        self._fmt = _LAYOUTS[self.bits]
        (self.type, self.machine, _ver, _entry, self._phoff, self._shoff, self.flags, _ehsize,
         self._phentsize, self._phnum, self._shentsize, self._shnum,
         self._shstrndx) = self._unpack(self._fmt[0], ident, 16, "ELF header")

    def _unpack(self, fmt: str, data: bytes, offset: int, what: str) -> tuple:
        try:
            return struct.unpack_from(self._end + fmt, data, offset)
        except struct.error as e:
            raise ElfError(f"{self.given}: truncated {what}") from e

    def _table(self, offset: int, count: int, entsize: int, fmt: str,
               what: str) -> Iterator[tuple]:
        """`count` entries of `fmt`, `entsize` bytes apart, read in one pread."""
        need = struct.calcsize(self._end + fmt)
        if count and entsize < need:
            raise ElfError(f"{self.given}: {what} entries of {entsize} bytes are too small "
                           f"(at least {need})")
        data = self._read(offset, count * entsize, what)
        if entsize == need:
            yield from struct.iter_unpack(self._end + fmt, data)
        else:
            for i in range(count):
                yield struct.unpack_from(self._end + fmt, data, i * entsize)

    @property
    def kind(self) -> str:
        return _ET_NAMES.get(self.type, str(self.type))

    @property
    def machine_name(self) -> str:
        return _ELF_MACHINES.get(self.machine, f"machine {self.machine}")

    @cached_property
    def segments(self) -> tuple[Segment, ...]:
        if self._phnum == 0xFFFF:                        # PN_XNUM: never in real binaries
            raise ElfError(f"{self.given}: extended program header numbering is not supported")
        out = []
        for ph in self._table(self._phoff, self._phnum, self._phentsize, self._fmt[1],
                              "program headers"):
            if self.bits == 64:
                p_type, p_flags, p_offset, p_vaddr, _pa, p_filesz, p_memsz, _al = ph
            else:
                p_type, p_offset, p_vaddr, _pa, p_filesz, p_memsz, p_flags, _al = ph
            if p_type == _PT_LOAD:
                out.append(Segment(p_vaddr, p_offset, p_filesz, p_memsz, p_flags))
        return tuple(out)

    def _sections(self) -> list[tuple[int, int, int, int, int]]:
        """(sh_type, sh_offset, sh_size, sh_link, sh_entsize) of every section."""
        return self._section_list

    @cached_property
    def _section_list(self) -> list[tuple[int, int, int, int, int]]:
        if not self._shoff:
            return []
        count = self._shnum
        if count == 0:                                   # extended numbering: in section 0
            first = next(self._table(self._shoff, 1, self._shentsize, self._fmt[2],
                                     "section headers"))
            count = first[5]
            if count > MAX_SECTIONS:
                raise ElfError(f"{self.given}: {count} sections, more than {MAX_SECTIONS}")
        out = []
        for sh in self._table(self._shoff, count, self._shentsize, self._fmt[2],
                              "section headers"):
            _n, sh_type, _fl, _addr, sh_offset, sh_size, sh_link, _info, _al, sh_entsize = sh
            out.append((sh_type, sh_offset, sh_size, sh_link, sh_entsize))
        return out

    @cached_property
    def named_sections(self) -> dict[str, tuple[int, int, int, int]]:
        """{name: (sh_type, sh_addr, sh_offset, sh_size)} (the first of a name)."""
        if not self._shoff or self._shstrndx >= max(self._shnum, 1):
            return {}
        raw = list(self._table(self._shoff, self._shnum, self._shentsize, self._fmt[2],
                               "section headers"))
        _n, _t, _f, _a, str_off, str_size, *_ = raw[self._shstrndx]
        names = self._read(str_off, min(str_size, MAX_SECTION_NAMES), "section names")
        out: dict[str, tuple[int, int, int, int]] = {}
        for sh in raw:
            name_off, sh_type, _fl, sh_addr, sh_offset, sh_size = sh[:6]
            end = names.find(b"\0", name_off)
            name = names[name_off:end if end >= 0 else len(names)].decode(errors="replace")
            out.setdefault(name, (sh_type, sh_addr, sh_offset, sh_size))
        return out

    def section_bytes(self, name: str, limit: int) -> bytes | None:
        """The contents of section `name` (at most `limit` bytes), or None if absent."""
        sec = self.named_sections.get(name)
        if sec is None or sec[0] == _SHT_NOBITS:
            return None
        return self._read(sec[2], min(sec[3], limit), name)

    @cached_property
    def _symbol_tables(self) -> tuple[tuple[int, int, int, int, int], ...]:
        """(section index, offset, count, entsize, string table index) of .symtab, then
        .dynsym; each checked against the file and the bounds before anything is read."""
        sections = self._sections()
        need = struct.calcsize(self._end + self._fmt[3])
        out = []
        for wanted in (_SHT_SYMTAB, _SHT_DYNSYM):
            for index, (sh_type, sh_offset, sh_size, sh_link, sh_entsize) in enumerate(sections):
                if sh_type != wanted or not sh_entsize or sh_link >= len(sections) \
                        or sections[sh_link][0] != _SHT_STRTAB:
                    continue
                if sh_entsize < need:
                    raise ElfError(f"{self.given}: symbol table entries of {sh_entsize} bytes "
                                   f"are too small (at least {need})")
                count = sh_size // sh_entsize
                self._check_range(sh_offset, count * sh_entsize, "symbol table")
                self._check_range(sections[sh_link][1], sections[sh_link][2], "string table")
                out.append((index, sh_offset, count, sh_entsize, sh_link))
        return tuple(out)

    def _scan(self, name: str | None = None) -> Iterator[ElfSymbol]:
        """Every defined symbol (or only those called `name`), .symtab first, reading
        each symbol table _SCAN_CHUNK at a time: memory stays bounded by the
        string table, whatever the symbol table's size."""
        sections = self._sections()
        fmt = self._end + self._fmt[3]
        need = struct.calcsize(fmt)
        for index, offset, count, entsize, link in self._symbol_tables:
            strings = self._read(sections[link][1], sections[link][2], "string table")
            starts = None
            if name is not None:                 # where `name` can start: a set lookup per entry
                word = name.encode("utf-8", "surrogateescape")
                starts = {m.start() for m in re.finditer(re.escape(word + b"\0"), strings)}
                if strings.endswith(word):
                    starts.add(len(strings) - len(word))
                if not starts:
                    continue
            versions = self._hidden_versions(sections, index, count)
            per = max(1, _SCAN_CHUNK // entsize)
            for first in range(0, count, per):
                n = min(per, count - first)
                data = self._read(offset + first * entsize, n * entsize, "symbol table")
                rows = struct.iter_unpack(fmt, data) if entsize == need else \
                    (struct.unpack_from(fmt, data, j * entsize) for j in range(n))
                for j, raw in enumerate(rows):
                    if starts is not None and raw[0] not in starts:
                        continue
                    i = first + j
                    hidden = bool(versions) and 2 * i + 2 <= len(versions) and \
                        struct.unpack_from(self._end + "H", versions, 2 * i)[0] & _VERSYM_HIDDEN
                    sym = self._symbol(raw, strings, bool(hidden))
                    if sym is not None:
                        yield sym

    def index(self, wanted: Callable[[str], bool] = lambda name: True,
              limit: int | None = None) -> tuple[dict[str, ElfSymbol],
                                                  dict[str, tuple[int, ...]]]:
        """(chosen symbol by name, names that mean several addresses) of the names
        `wanted` accepts, at most `limit` of them (a wildcard's; a single name is
        looked up with `symbol`). A global definition wins over local ones; two
        different ones of equal standing (two static functions called `init`)
        make the name ambiguous."""
        limit = MAX_INDEXED if limit is None else limit
        best: dict[str, tuple[ElfSymbol, set[int]]] = {}
        for sym in self._scan():
            if sym.name not in best and not wanted(sym.name):
                continue
            if sym.name not in best and len(best) >= limit:
                raise ElfError(f"{self.given}: more than {limit} symbols match",
                               "narrow the pattern")
            self._keep(best, sym)
        return self._choose(best)

    @staticmethod
    def _keep(best: dict[str, tuple[ElfSymbol, set[int]]], sym: ElfSymbol) -> None:
        """Fold one definition into best[name]: (lowest value of the best rank, a few
        of that rank's distinct values)."""
        have = best.get(sym.name)
        if have is None or sym.rank < have[0].rank:
            best[sym.name] = (sym, {sym.value})
            return
        first, values = have
        if sym.rank > first.rank:
            return
        if len(values) < _VALUES_KEPT:
            values.add(sym.value)
        if sym.value < first.value:
            best[sym.name] = (sym, values)

    @staticmethod
    def _choose(best: dict[str, tuple[ElfSymbol, set[int]]]
                ) -> tuple[dict[str, ElfSymbol], dict[str, tuple[int, ...]]]:
        chosen = {name: sym for name, (sym, _v) in best.items()}
        ambiguous = {name: tuple(sorted(v)) for name, (_s, v) in best.items() if len(v) > 1}
        return chosen, ambiguous

    @cached_property
    def symbols(self) -> dict[str, ElfSymbol]:
        """Every defined symbol by name (at most MAX_INDEXED; see `index`)."""
        return self.index()[0]

    def _hidden_versions(self, sections: list, symtab: int, count: int) -> bytes:
        """A .dynsym's .gnu.version entries (2 bytes each; bit 15: an old, hidden version)."""
        for sh_type, sh_offset, sh_size, sh_link, _ent in sections:
            if sh_type == _SHT_GNU_VERSYM and sh_link == symtab and sh_size // 2 >= count:
                return self._read(sh_offset, count * 2, "symbol versions")
        return b""

    def _symbol(self, raw: tuple, strings: bytes, hidden: bool = False) -> ElfSymbol | None:
        if self.bits == 64:
            st_name, st_info, _other, st_shndx, st_value, st_size = raw
        else:
            st_name, st_value, st_size, st_info, _other, st_shndx = raw
        if not st_name or st_shndx == 0 or not st_value or st_name >= len(strings):
            return None                                  # undefined, nameless or corrupt
        end = strings.find(b"\0", st_name)
        name = strings[st_name:end if end >= 0 else len(strings)].decode(errors="replace")
        rank = 2 if (st_info >> 4) == _STB_LOCAL else 1 if hidden else 0
        return ElfSymbol(name, st_value, st_size, _STT_NAMES.get(st_info & 0xF, "other"), rank)

    # ------------------------------------------------------------ addresses

    def _segment_of(self, vaddr: int) -> Segment | None:
        return next((s for s in self.segments if s.vaddr <= vaddr < s.vaddr + s.filesz), None)

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        """File offset of a virtual address, from the PT_LOAD segment that maps it."""
        s = self._segment_of(vaddr)
        return None if s is None else vaddr - s.vaddr + s.offset

    def offset_to_vaddr(self, offset: int) -> int | None:
        for s in self.segments:
            if s.offset <= offset < s.offset + s.filesz:
                return offset - s.offset + s.vaddr
        return None

    def symbol(self, name: str) -> ElfSymbol:
        """The one definition `name` means, found by scanning (no index is built)."""
        best: dict[str, tuple[ElfSymbol, set[int]]] = {}
        for sym in self._scan(name):
            self._keep(best, sym)
        chosen, ambiguous = self._choose(best)
        sym = chosen.get(name)
        if sym is None:
            hint = "check the name with: nm -D " + self.given \
                if any(t[2] for t in self._symbol_tables) else \
                "the binary has no symbol table (stripped?): give PATH:0xOFFSET"
            raise ElfError(f"symbol {name!r} not found in {self.given}", hint)
        values = ambiguous.get(name)
        if values is not None:
            many = f"{len(values)}" if len(values) < _VALUES_KEPT else f"{len(values) - 1}+"
            raise ElfError(f"symbol {name!r} names {many} different places in "
                           f"{self.given}: " + ", ".join(f"{v:#x}" for v in values[:4]),
                           "give the one meant as PATH:0xOFFSET (its file offset)")
        return sym

    def symbol_offset(self, name: str, extra: int = 0) -> int:
        """File offset of SYM+extra, as uprobe_events wants it."""
        return self.place(name, extra).file_offset

    def code_address(self, sym: ElfSymbol) -> int:
        """Where a symbol's code starts: ARM marks Thumb code with bit 0 of the value."""
        abi = arch.by_elf_machine(self.machine)
        return sym.value & ~1 if abi is not None and abi.thumb_align else sym.value

    def place(self, name: str, offset: int = 0) -> Placement:
        """SYM+OFFS: its virtual address and file offset, in an executable segment."""
        return self.place_symbol(self.symbol(name), offset)

    def place_symbol(self, sym: ElfSymbol, offset: int = 0) -> Placement:
        """SYM+OFFS of a symbol already found (count places many from one `index`)."""
        name = sym.name
        if sym.kind not in _CODE_KINDS:
            raise ElfError(f"{name} in {self.given} is {_article(sym.kind)} {sym.kind}, "
                           "not code: a breakpoint there would corrupt data",
                           "probe a function")
        return self._placement(self.code_address(sym) + offset, f"{name}+{offset:#x}",
                               sym, offset)

    def place_file_offset(self, file_offset: int) -> Placement:
        """PATH:0xOFFSET: the file offset itself, and the function containing it."""
        vaddr = self.offset_to_vaddr(file_offset)
        if vaddr is None:
            raise ElfError(f"offset {file_offset:#x} is not in a loadable segment of "
                           f"{self.given}", f"file offsets of functions: readelf -lsW {self.given}")
        hit = self.resolve(vaddr)
        sym, into = hit if hit is not None else (None, 0)
        return self._placement(vaddr, f"{file_offset:#x}", sym, into)

    def _placement(self, vaddr: int, what: str, sym: ElfSymbol | None,
                   into: int) -> Placement:
        seg = self._segment_of(vaddr)
        if seg is None or not seg.flags & _PF_X:
            where = "a loadable segment" if seg is None else "an executable segment"
            raise ElfError(f"{what} in {self.given} is not in {where}",
                           "uprobes go on code: check the address with readelf -lW")
        return Placement(self.path, vaddr, vaddr - seg.vaddr + seg.offset, sym, into)

    def resolve(self, vaddr: int) -> tuple[ElfSymbol, int] | None:
        """The function symbol containing a virtual address, and the offset into it
        (a scan: the nearest start at or below it; a global one on a tie)."""
        best, best_key = None, None
        for sym in self._scan():
            if sym.kind not in ("func", "ifunc"):
                continue
            start = self.code_address(sym)
            key = (start, -sym.rank)
            if start <= vaddr and (best_key is None or key > best_key):
                best, best_key = sym, key
        if best is None:
            return None
        start = self.code_address(best)
        if best.size and vaddr >= start + best.size:
            return None
        return best, vaddr - start

    @cached_property
    def function_table(self) -> tuple[list[int], list[tuple[int, str]]]:
        """(sorted starts, (end, name) per start) of every function, for naming many
        addresses (stack frames) by bisection: resolve() scans per address. At one
        start a global name wins, then the plainest (malloc, not __libc_malloc); an end
        of 0 is a symbol without a size."""
        best: dict[int, tuple[tuple, int, str]] = {}
        for sym in self._scan():
            if sym.kind not in ("func", "ifunc"):
                continue
            start = self.code_address(sym)
            rank = (sym.rank, len(sym.name) - len(sym.name.lstrip("_")), len(sym.name), sym.name)
            have = best.get(start)
            if have is None or rank < have[0]:
                best[start] = (rank, start + sym.size if sym.size else 0, sym.name)
        starts = sorted(best)
        return starts, [(best[a][1], best[a][2]) for a in starts]

    def function_at(self, vaddr: int) -> tuple[str, int] | None:
        """(name, offset) of the function containing a virtual address, by bisection."""
        starts, rest = self.function_table
        i = bisect.bisect_right(starts, vaddr) - 1
        if i < 0:
            return None
        end, name = rest[i]
        if end and vaddr >= end:
            return None
        return name, vaddr - starts[i]

    @cached_property
    def functions(self) -> tuple[ElfSymbol, ...]:
        return tuple(s for s in self.symbols.values() if s.kind in ("func", "ifunc"))

    def functions_matching(self, wanted: Callable[[str], bool]) -> dict[str, Placement]:
        """Entries of the functions whose names `wanted` accepts (a wildcard, for
        count), at most MAX_INDEXED; a name that means two places or no code is
        left out."""
        chosen, ambiguous = self.index(wanted)
        out = {}
        for name, sym in sorted(chosen.items()):
            if sym.kind in ("func", "ifunc") and name not in ambiguous:
                try:
                    out[name] = self.place_symbol(sym)
                except ElfError:
                    pass                    # outside an executable segment: not code
        return out

    def code(self, vaddr: int, size: int) -> bytes:
        """Up to `size` bytes of the file mapped at `vaddr` (shorter at a segment's end)."""
        seg = self._segment_of(vaddr)
        if seg is None:
            return b""
        size = min(size, seg.vaddr + seg.filesz - vaddr)
        return self._read(vaddr - seg.vaddr + seg.offset, size, "code")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


# ---------------------------------------------------------------- instruction boundaries

def _decode_problem(elf: Elf, p: Placement, decoder: tuple[str, str]) -> str | None:
    """Decode from the containing symbol's start up to the place (capstone)."""
    start = p.vaddr - p.offset
    if p.offset > MAX_DECODE_BYTES:
        return (f"{p.where} is {p.offset} bytes into its function, more than the "
                f"{MAX_DECODE_BYTES} decoded to check it")
    try:
        import capstone  # noqa: PLC0415 - only uprobes with an offset need it
    except ImportError:
        return "capstone (the disassembler) is not installed, so it cannot be checked"
    cs_arch, cs_mode = (getattr(capstone, n) for n in decoder)
    md = capstone.Cs(cs_arch, cs_mode)        # x32 binaries (ELFCLASS32) are 64-bit code too
    md.skipdata = False
    code = elf.code(start, p.offset + MAX_INSN_BYTES)
    at, last = start, (start, 0, "")
    for address, size, mnemonic, ops in md.disasm_lite(code, start):
        if address >= p.vaddr:
            break
        at = address + size
        last = (address, size, f"{mnemonic} {ops}".strip())
    else:
        address = at
    if address == p.vaddr:
        return None
    if address > p.vaddr:
        insn_at, size, text = last
        return (f"{p.where} is inside an instruction: {text!r} starts at "
                f"+{insn_at - start:#x} and is {size} bytes long")
    return (f"{p.where} cannot be checked: the code does not decode past "
            f"+{at - start:#x} (data in the function?)")


def boundary_problem(elf: Elf, p: Placement, return_probe: bool = False) -> str | None:
    """Why a probe at `p` may not be on an instruction boundary, or None when it is.
    The binary's ELF machine decides which rules apply (not the host's)."""
    if return_probe:
        # a uretprobe takes over the return address at the entry: anywhere else it
        # would overwrite some other stack word
        if p.symbol is None or p.offset:
            return f"{p.where} is not the entry of a function, where a return probe must sit"
        return None
    if p.symbol is not None and p.offset == 0:
        return None                                   # a function's first byte
    if p.symbol is None:
        return (f"{p.where}: no function symbol contains it, so it cannot be checked "
                "that it starts an instruction")
    if p.symbol.size and p.offset >= p.symbol.size:
        return f"{p.where} is past the end of {p.symbol.name} ({p.symbol.size} bytes)"
    abi = arch.by_elf_machine(elf.machine)
    if abi is None:
        if elf.machine == 3:                          # i386: x86's decoder, 32-bit mode
            return _decode_problem(elf, p, ("CS_ARCH_X86", "CS_MODE_32"))
        return f"instruction boundaries of {elf.machine_name} code are not known to bpfprobes"
    thumb = abi.thumb_align and p.symbol.value & 1
    align = abi.thumb_align if thumb else abi.insn_align
    if p.vaddr % align:
        return (f"{p.where} is not a multiple of {align} bytes, where every "
                f"{abi.name}{' Thumb' if thumb else ''} instruction starts")
    if abi.insn_decoder is not None:
        return _decode_problem(elf, p, abi.insn_decoder)
    return None
