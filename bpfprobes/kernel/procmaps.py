"""User addresses named after their process has gone.

A stack counted in the kernel is named at the end of the run, when a short-lived
process is long gone and its /proc/PID/maps with it. So a process's executable
file mappings are read when it is first seen (`remember`), checked to be of the
very incarnation the kernel saw (its start time, and where its exec put code and
stack, in /proc/PID/stat before and after the read: an exec or a reused pid since
makes the read a miss, never another program's names), and each mapped file is
opened then, through /proc/PID/map_files/ (the very inode it mapped: a
container's file in its own mount namespace, a binary replaced or deleted since)
and held open, one ELF per file shared by every process mapping it. Names come
from the ELF symbol tables (elfsym.Elf: .symtab, then .dynsym), PIE and shared
libraries alike: address - mapping start + file offset, then the segment's vaddr.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass

from bpfprobes.kernel.elfsym import Elf, ElfError

MAX_PROCESSES = 20_000          # address spaces remembered (the kernel's seen table: 10,240)
MAX_FILES = 1_024               # files held open; past them a frame is named by its file


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int                 # file offset of `start`
    path: str                   # as the process saw it (its mount namespace)
    file: tuple[str, int]       # (device, inode) as maps gives them: the file's identity

    @property
    def deleted(self) -> bool:
        """Replaced or removed since it was mapped: the path names another file, or none."""
        return self.path.endswith(" (deleted)")

    @property
    def file_path(self) -> str:
        return self.path.removesuffix(" (deleted)")

    @property
    def basename(self) -> str:
        return os.path.basename(self.file_path) or self.path

    def map_file(self, proc: str, pid: int) -> str:
        """/proc/PID/map_files/START-END: the mapped file itself (its name has no zero
        padding, unlike the addresses in maps)."""
        return f"{proc}/{pid}/map_files/{self.start:x}-{self.end:x}"


@dataclass(frozen=True)
class Incarnation:
    """What the kernel saw of a process (bpf_c/probe.h struct probe_space) that
    /proc/PID/stat shows too; all 0: unknown (no BTF), not checked."""
    start_boottime_ns: int = 0
    start_code: int = 0
    start_stack: int = 0

    def matches(self, stat: str, hz: int) -> bool:
        """Whether a /proc/PID/stat text is of this incarnation (starttime, field 22,
        in clock ticks; startcode 26; startstack 28)."""
        if not (self.start_boottime_ns or self.start_code or self.start_stack):
            return True
        fields = stat.rpartition(")")[2].split()     # the comm may hold ") "
        try:
            start, code, stack = int(fields[19]), int(fields[23]), int(fields[25])
        except (IndexError, ValueError):
            return False
        return (start == self.start_boottime_ns * hz // 1_000_000_000
                and code == self.start_code and stack == self.start_stack)


def parse_maps(text: str, executable: bool = True) -> list[Mapping]:
    """The mappings of files in a /proc/PID/maps text (executable ones only, or all)."""
    out = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or (executable and "x" not in parts[1]) \
                or not parts[5].startswith("/"):
            continue
        try:
            start, end = (int(x, 16) for x in parts[0].split("-", 1))
            out.append(Mapping(start, end, int(parts[2], 16), parts[5], (parts[3], int(parts[4]))))
        except ValueError:
            continue                # not a line of the kernel's format: skipped
    return out


class UserSymbols:
    """Names of user addresses by (pid, address space), kept from first sight."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.spaces: dict[tuple[int, int], list[Mapping]] = {}
        self.files: dict[tuple[str, int], Elf | None] = {}    # None: not an ELF we can read
        self.missed: set[tuple[int, int]] = set()             # gone before they were read
        self.starts: dict[tuple[int, int], list[int]] = {}     # each space's starts, sorted
        self.hz = os.sysconf("SC_CLK_TCK")

    def remember(self, pid: int, space: int, seen: Incarnation = Incarnation()) -> bool:
        """Read process `pid`'s maps now, as the address space `space` (the kernel's
        name for this incarnation) and open its files; False when the process is gone,
        or is no longer the incarnation `seen` (an exec, a reused pid), or has no
        executable mappings left (exiting): its frames stay unnamed."""
        key = (pid, space)
        if key in self.spaces:
            return True
        if len(self.spaces) >= MAX_PROCESSES:
            self.missed.add(key)
            return False
        base = f"{self.proc}/{pid}"
        try:
            before = _read(f"{base}/stat")
            maps = parse_maps(_read(f"{base}/maps"))
            after = _read(f"{base}/stat")
        except OSError:
            self.missed.add(key)
            return False
        if not maps or not (seen.matches(before, self.hz) and seen.matches(after, self.hz)):
            self.missed.add(key)
            return False
        for m in maps:
            self._open(pid, m)
        maps.sort(key=lambda m: m.start)
        self.spaces[key] = maps
        self.starts[key] = [m.start for m in maps]
        return True

    def _open(self, pid: int, m: Mapping) -> None:
        if m.file in self.files or len(self.files) >= MAX_FILES:
            return
        elf = None
        for path in (m.map_file(self.proc, pid), f"{self.proc}/{pid}/root{m.file_path}"):
            try:
                elf = Elf(path)
                break
            except ElfError:
                continue
        self.files[m.file] = elf

    def name(self, pid: int, space: int, addr: int) -> str:
        """The function containing `addr`, `[FILE]` where the file has no symbol for
        it, `[unknown]` where no mapping of the process (as first seen) holds it."""
        maps = self.spaces.get((pid, space))
        if maps is None:
            return "[unknown]"
        i = bisect.bisect_right(self.starts[(pid, space)], addr) - 1
        m = maps[i] if i >= 0 else None
        if m is None or addr >= m.end:
            return "[unknown]"
        elf = self.files.get(m.file)
        if elf is not None:
            vaddr = elf.offset_to_vaddr(addr - m.start + m.offset)
            hit = elf.function_at(vaddr) if vaddr is not None else None
            if hit is not None:
                return hit[0]
        return f"[{m.basename}]"

    def close(self) -> None:
        for elf in self.files.values():
            if elf is not None:
                elf.close()
        self.files.clear()


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()
