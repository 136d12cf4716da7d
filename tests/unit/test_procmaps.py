"""User frames named from a process's maps as first read (kernel/procmaps.py): the
maps format, map_files names, and a real library's symbols at a made-up load address."""
import os

from bpfprobes.kernel import procmaps
from bpfprobes.kernel.elfsym import Elf

LIBC = "/lib/x86_64-linux-gnu/libc.so.6" if os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") \
    else "/lib/aarch64-linux-gnu/libc.so.6"


def stat_line(comm: str, start_ticks: int, code: int, stack: int) -> str:
    """A /proc/PID/stat line with the fields the check reads (22, 26, 28)."""
    fields = ["0"] * 50
    fields[22 - 3], fields[26 - 3], fields[28 - 3] = str(start_ticks), str(code), str(stack)
    return f"42 ({comm}) " + " ".join(fields) + "\n"


def test_maps_lines():
    text = ("00400000-00452000 r-xp 00000000 08:01 17 /usr/bin/old\n"
            "7f00a000-7f00b000 r--p 00001000 08:01 18 /usr/lib/libx.so\n"
            "7f00b000-7f00c000 r-xp 00002000 08:01 18 /usr/lib/libx.so\n"
            "7f00d000-7f00e000 r-xp 00000000 08:01 19 /tmp/gone so (deleted)\n"
            "7ffd0000-7ffe0000 r-xp 00000000 00:00 0 [vdso]\n"
            "garbage line\n")
    maps = procmaps.parse_maps(text)
    assert [m.basename for m in maps] == ["old", "libx.so", "gone so"]
    # map_files/ names carry no zero padding, unlike maps' addresses
    assert maps[0].map_file("/proc", 7) == "/proc/7/map_files/400000-452000"
    assert maps[1].offset == 0x2000 and maps[1].file == ("08:01", 18)
    assert maps[2].deleted and maps[2].file_path == "/tmp/gone so"
    assert len(procmaps.parse_maps(text, executable=False)) == 4


def test_a_library_frame_is_named_after_its_process_is_gone(tmp_path):
    with Elf(LIBC) as elf:
        seg = next(s for s in elf.segments if s.flags & 1)
        malloc = elf.vaddr_to_offset(elf.code_address(elf.symbol("malloc")))
    offset = seg.offset & ~0xfff                        # mapped from its page
    start = 0x7f0000000000
    base = start - offset                               # where file offset 0 would be
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "root").symlink_to("/")
    (proc / "42" / "maps").write_text(
        f"{start:x}-{start + seg.filesz + 0x2000 & ~0xfff:x} r-xp {offset:08x} 08:01 99 {LIBC}\n")
    hz = os.sysconf("SC_CLK_TCK")
    seen = procmaps.Incarnation(123 * 1_000_000_000, 0x5000, 0x7ffd0000)
    (proc / "42" / "stat").write_text(stat_line("a) b", 123 * hz, 0x5000, 0x7ffd0000))
    users = procmaps.UserSymbols(str(proc))
    # another exec since (its stack elsewhere), or another process with the pid: not read
    assert not users.remember(42, 0xabc, procmaps.Incarnation(123 * 10**9, 0x5000, 0x1000))
    assert not users.remember(42, 0xabd, procmaps.Incarnation(124 * 10**9, 0x5000, 0x7ffd0000))
    assert users.remember(42, 0xabc, seen)
    (proc / "42" / "maps").unlink()                     # the process is gone
    assert users.name(42, 0xabc, base + malloc + 3) == "malloc"
    assert users.name(42, 0xabc, 0x1000) == "[unknown]"
    assert users.name(42, 0xdef, base + malloc) == "[unknown]"     # another address space
    assert not users.remember(43, 0)                    # never seen alive: not named
    assert (43, 0) in users.missed
    users.close()
