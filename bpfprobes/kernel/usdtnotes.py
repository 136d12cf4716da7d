"""USDT probes of a binary: its `.note.stapsdt` notes (what <sys/sdt.h> emits; the
format systemtap, BCC, bpftrace and perf read). Each note is one site of a probe:
the address of its nop, the semaphore to count up for it to fire (0: none), and
its arguments' locations as the assembler wrote them (`-4@%edi`, `8@-16(%rbp)`,
`8@[sp, 16]`), which plan/usdtargs.py turns into fetchargs. Addresses become file
offsets (what a uprobe and its reference counter take) through the segments, after
the prelink adjustment `.stapsdt.base` calls for.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from bpfprobes.kernel.elfsym import Elf, ElfError

NT_STAPSDT = 3
MAX_NOTES_BYTES = 8 << 20        # libjvm's ~560 probes: ~60 KiB


@dataclass(frozen=True)
class Site:
    provider: str
    name: str
    file_offset: int             # of the probe's nop
    semaphore: int | None        # file offset of its semaphore (a u16 counter), 0: none,
                                 # None: one not in the file (.bss): no uprobe can raise it
    args: tuple[str, ...]        # argument locations as written, e.g. ("-4@%edi", "8@%rsi")

    @property
    def full_name(self) -> str:
        return f"{self.provider}:{self.name}"


def _cstr(data: bytes, at: int) -> tuple[str, int]:
    end = data.find(b"\0", at)
    if end < 0:
        raise ElfError("a USDT note's strings are not terminated")
    return data[at:end].decode("utf-8", "replace"), end + 1


def sites(elf: Elf) -> list[Site]:
    """Every USDT site in the file, in note order."""
    notes = elf.section_bytes(".note.stapsdt", MAX_NOTES_BYTES)
    if not notes:
        return []
    base_sec = elf.named_sections.get(".stapsdt.base")
    word = "Q" if elf.bits == 64 else "I"
    size = struct.calcsize(word)
    end = "<" if elf._end == "<" else ">"       # noqa: SLF001 - the file's byte order
    out, at = [], 0
    while at + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from(end + "III", notes, at)
        name_at = at + 12
        desc_at = name_at + (namesz + 3 & ~3)
        at = desc_at + (descsz + 3 & ~3)
        if at > len(notes) + 3 or desc_at + descsz > len(notes):
            raise ElfError(f"{elf.given}: a truncated USDT note")
        if kind != NT_STAPSDT or notes[name_at:name_at + namesz].rstrip(b"\0") != b"stapsdt":
            continue
        desc = notes[desc_at:desc_at + descsz]
        if len(desc) < 3 * size:
            raise ElfError(f"{elf.given}: a USDT note too short for its addresses")
        pc, base, semaphore = struct.unpack_from(end + word * 3, desc, 0)
        provider, pos = _cstr(desc, 3 * size)
        name, pos = _cstr(desc, pos)
        args, _ = _cstr(desc, pos) if pos < len(desc) else ("", pos)
        if base_sec is not None and base:     # prelinked since it was built: move with it
            delta = base_sec[1] - base
            pc += delta
            semaphore = semaphore + delta if semaphore else 0
        offset = elf.vaddr_to_offset(pc)
        if offset is None:
            continue                           # not in a loaded segment: cannot be probed
        sem = elf.vaddr_to_offset(semaphore) if semaphore else 0
        out.append(Site(provider, name, offset, sem, tuple(args.split())))
    return out
