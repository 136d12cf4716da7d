"""Probes land exactly where asked (issue 11, section 1; section 7's odd input).

The address each backend would hand the kernel (the uprobe_events line of
`--backend tracefs`, the BPF Attach that BCC's attach_uprobe(addr=) takes) is
compared with readelf's symbol table and program headers for SYM, SYM+OFFS and
a raw file offset, in PIE and non-PIE executables and a shared library built
here with gcc. A place that is not an instruction's first byte is refused
(x86_64 decoded with capstone; fixed-width arches by alignment, from the ELF's
own machine), what is not a regular file is refused without blocking, and a
hostile ELF is a clean error that never reads the whole file.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import stat
import struct
import subprocess
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from bpfprobes.backends.tracefs import dynevents
from bpfprobes.base.errors import UsageError
from bpfprobes.kernel import arch, elfsym
from bpfprobes.kernel.elfsym import Elf, ElfError
from bpfprobes.plan import countplan, probeplan, spec
from bpfprobes.tools import probe as probe_cli

HOST = arch.host()
# what planning reads of the running kernel: its ABI
FAKE_KERNEL = SimpleNamespace(abi=HOST)

# A function whose bytes are known, so the tests know every instruction boundary:
# +0 a 10-byte movabs, +10 a 3-byte mov, +13 a 4-byte lea, +17 ret (18 bytes).
X86_PLACED = """
asm(".text\\n.globl placed\\n.type placed, @function\\nplaced:\\n"
    "  movabsq $0x1122334455667788, %r11\\n"
    "  movq %rdi, %r10\\n"
    "  leaq 1(%rdi), %rax\\n"
    "  ret\\n"
    ".size placed, .-placed\\n");
"""
X86_BOUNDARIES = {0, 10, 13, 17}
X86_SIZE = 18

SOURCE = """
long placed(long);
__attribute__((noinline, used)) long work(long x) { return placed(x) * 3; }
%s
%s
"""
MAIN = "int main(int argc, char **argv) { (void)argv; return (int)work(argc) != 6; }"


def _gcc(tmp: Path, name: str, *flags: str, main: bool = True) -> str:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (make setup installs it)")
    src = tmp / f"{name}.c"
    src.write_text(SOURCE % (X86_PLACED, MAIN if main else ""))
    out = tmp / name
    subprocess.run(["gcc", "-O1", *flags, "-o", str(out), str(src)], check=True)
    return str(out)


@pytest.fixture(scope="module")
def binaries(tmp_path_factory) -> dict[str, str]:
    if HOST.name != "x86_64":
        pytest.skip("the compiled targets hold x86_64 code; the synthetic ELFs below "
                    "cover every architecture")
    tmp = tmp_path_factory.mktemp("placement")
    return {"non-pie": _gcc(tmp, "nopie", "-no-pie", "-fno-pie"),
            "pie": _gcc(tmp, "pie", "-pie", "-fPIE"),
            "shared": _gcc(tmp, "libplaced.so", "-shared", "-fPIC", main=False)}


# ---------------------------------------------------------------- readelf, the reference

def readelf_symbol(path: str, name: str) -> int:
    out = subprocess.run(["readelf", "-sW", path], capture_output=True, text=True,
                         check=True).stdout
    values = {int(p[1], 16) for p in (ln.split() for ln in out.splitlines())
              if len(p) >= 8 and p[7] == name and p[6] != "UND"}
    assert len(values) == 1, (name, values)
    return values.pop()


def readelf_file_offset(path: str, vaddr: int) -> int:
    """vaddr -> file offset through readelf's executable LOAD segments (BCC's rule)."""
    out = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        p = line.split()
        if p[:1] == ["LOAD"] and "E" in p[6:-1]:
            offset, va, filesz = int(p[1], 16), int(p[2], 16), int(p[4], 16)
            if va <= vaddr < va + filesz:
                return vaddr - va + offset
    raise AssertionError(f"{vaddr:#x} is in no executable LOAD segment of {path}")


def plan_of(texts: list[str], force: bool = False) -> probeplan.Plan:
    k = FAKE_KERNEL
    facts = probeplan.resolve([spec.parse(t, HOST) for t in texts], k, dry_run=True,
                              force=force)
    return probeplan.assemble(facts, probeplan.Options(), HOST)


@pytest.fixture(autouse=True)
def _uprobes_available(monkeypatch):
    """Planning asks the kernel whether uprobes exist; a unit test has no kernel."""
    monkeypatch.setattr(probeplan.features, "check",
                        lambda k, name: SimpleNamespace(available=True, why="unit test"))


def backends(plan: probeplan.Plan) -> list[tuple[str, str, int]]:
    """(uprobe_events target word, BPF attach path, BPF attach address) per probe:
    the line as probe_tracefs writes it, the Attach as the BPF backend makes it."""
    out = []
    for p, a in zip(plan.probes, probe_cli.attachments(FAKE_KERNEL, plan)):
        line = spec.to_kprobe_events(replace(p.spec, event=p.event), HOST,
                                     uprobe_offset=p.uprobe.file_offset)
        assert a.target == "", "BCC must not look the symbol up again"
        # BCC is handed the checked file's held descriptor, shown as its real path
        assert a.kernel_path == p.uprobe.kernel_path and _same_inode(a.kernel_path, a.path)
        out.append((line.split()[1], a.path, a.offset))
    return out


def _same_inode(fd_path: str, path: str) -> bool:
    assert re.fullmatch(r"/proc/self/fd/\d+", fd_path), fd_path
    a, b = os.stat(fd_path), os.stat(path)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# ---------------------------------------------------------------- both backends, one address

@pytest.mark.parametrize("kind", ["non-pie", "pie", "shared"])
def test_both_backends_land_where_readelf_says(binaries, kind):
    path = binaries[kind]
    real = os.path.realpath(path)
    placed, work = readelf_symbol(path, "placed"), readelf_symbol(path, "work")
    raw = readelf_file_offset(path, placed + 13)
    plan = plan_of([f"p:{path}:placed", f"p:{path}:placed+10", f"p:{path}:placed+0xd",
                    f"p:{path}:work", f"p:{path}:{raw:#x}", f"r:{path}:work"])
    want_vaddrs = [placed, placed + 10, placed + 13, work, placed + 13, work]
    got = backends(plan)
    for (word, attach_path, attach_addr), vaddr in zip(got, want_vaddrs):
        assert word == f"{real}:{readelf_file_offset(path, vaddr):#x}"      # tracefs
        assert (attach_path, attach_addr) == (real, vaddr)                  # bpf (addr=)
    if kind == "non-pie":
        assert placed >= 0x400000 and readelf_file_offset(path, placed) != placed
    else:
        assert readelf_file_offset(path, placed) < 0x400000


def test_the_dry_run_line_is_the_tracefs_line(binaries):
    """describe() (what --dry-run and -v print) shows the very same line."""
    path = binaries["pie"]
    plan = plan_of([f"p:{path}:placed+10"])
    text = "\n".join(probe_cli.describe(FAKE_KERNEL, plan))
    off = readelf_file_offset(path, readelf_symbol(path, "placed") + 10)
    assert f"uprobe_events: p:bpfprobes/placed_10 {os.path.realpath(path)}:{off:#x}" in text


def test_offset_is_added_once_not_twice():
    """The tracefs bug of issue 11: SYM+OFFS's file offset got OFFS added again."""
    s = spec.parse("p:/bin/x:xmalloc+4", arch.X86_64)
    assert spec.to_kprobe_events(s, arch.X86_64, uprobe_offset=0x9ac84) == \
        "p:bpfprobes/xmalloc_4 /bin/x:0x9ac84"


def test_a_symlink_is_resolved_once_and_that_file_is_probed(binaries, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(binaries["pie"])
    plan = plan_of([f"p:{link}:placed+10"])
    ((word, attach_path, _),) = backends(plan)
    real = os.path.realpath(binaries["pie"])
    assert attach_path == real and word.startswith(real + ":")
    assert plan.probes[0].spec.path == real and str(link) in plan.probes[0].spec.text


# ---------------------------------------------------------------- instruction boundaries

@pytest.mark.parametrize("kind", ["pie", "shared"])
def test_only_instruction_boundaries_are_accepted(binaries, kind):
    path = binaries[kind]
    for off in range(X86_SIZE):
        if off in X86_BOUNDARIES:
            plan_of([f"p:{path}:placed+{off}"])
        else:
            with pytest.raises(UsageError, match="inside an instruction") as e:
                plan_of([f"p:{path}:placed+{off}"])
            assert "--force" in e.value.hint
    with pytest.raises(UsageError, match="past the end of placed"):
        plan_of([f"p:{path}:placed+{X86_SIZE}"])


def test_a_raw_offset_inside_an_instruction_is_refused(binaries):
    path = binaries["non-pie"]
    inside = readelf_file_offset(path, readelf_symbol(path, "placed") + 11)
    with pytest.raises(UsageError, match=r"placed\+0xb .*inside an instruction"):
        plan_of([f"p:{path}:{inside:#x}"])


def test_force_probes_there_with_a_warning(binaries):
    path = binaries["pie"]
    plan = plan_of([f"p:{path}:placed+5"], force=True)
    assert len(plan.warnings) == 1
    assert plan.warnings[0].startswith("warning: placed+0x5 in ") and \
        "inside an instruction" in plan.warnings[0] and "--force" in plan.warnings[0]
    ((word, _, addr),) = backends(plan)
    assert addr == readelf_symbol(path, "placed") + 5      # exactly where it was asked


def test_a_return_probe_goes_on_a_function_entry_only(binaries):
    path = binaries["pie"]
    entry = readelf_file_offset(path, readelf_symbol(path, "placed"))
    plan_of([f"r:{path}:{entry:#x}"])
    with pytest.raises(UsageError, match="not the entry of a function"):
        plan_of([f"r:{path}:{entry + 10:#x}"])


def test_data_is_not_code(binaries):
    with pytest.raises(ElfError, match="not code"):
        with Elf(binaries["non-pie"]) as e:
            e.place(next(n for n, s in e.symbols.items() if s.kind == "object"))


def test_a_binary_of_another_machine_is_refused(tmp_path):
    path = tmp_path / "arm64"
    path.write_bytes(tiny_elf(183, 64, "<", b"\x1f\x20\x03\xd5" * 4))
    with pytest.raises(UsageError, match="aarch64 code and this kernel is x86_64"):
        probeplan.resolve([spec.parse(f"p:{path}:func", arch.X86_64)],
                          SimpleNamespace(abi=arch.X86_64), dry_run=True)


# ---------------------------------------------------------------- every arch, by ELF machine

def tiny_elf(machine: int, bits: int, end: str, code: bytes, sym_value_bit0: bool = False,
             sym_size: int | None = None, **override) -> bytes:
    """A minimal ELF: one R+X PT_LOAD, `code` at vaddr 0x10100 as function `func`,
    .symtab and .strtab. `override` replaces header fields to make it hostile."""
    base, code_off = 0x10000, 0x100
    strtab = b"\0func\0"
    if bits == 64:
        ehdr, phdr, shdr, sym = "HHIQQQIHHHHHH", "IIQQQQQQ", "IIQQQQIIQQ", "IBBHQQ"
    else:
        ehdr, phdr, shdr, sym = "HHIIIIIHHHHHH", "IIIIIIII", "IIIIIIIIII", "IIIBBH"
    eh_size, ph_size = 16 + struct.calcsize(end + ehdr), struct.calcsize(end + phdr)
    sh_size, sym_size_b = struct.calcsize(end + shdr), struct.calcsize(end + sym)
    symtab_off = code_off + len(code)
    strtab_off = symtab_off + 2 * sym_size_b
    shoff = strtab_off + len(strtab)
    total = shoff + 3 * sh_size
    value = base + code_off + (1 if sym_value_bit0 else 0)
    size = len(code) if sym_size is None else sym_size
    if bits == 64:
        syms = struct.pack(end + sym, 0, 0, 0, 0, 0, 0) + \
            struct.pack(end + sym, 1, 0x12, 0, 1, value, size)
        ph = struct.pack(end + phdr, 1, 5, 0, base, base, total, total, 0x1000)
    else:
        syms = struct.pack(end + sym, 0, 0, 0, 0, 0, 0) + \
            struct.pack(end + sym, 1, value, size, 0x12, 0, 1)
        ph = struct.pack(end + phdr, 1, 0, base, base, total, total, 5, 0x1000)
    fields = dict(type=2, machine=machine, version=1, entry=base + code_off, phoff=eh_size,
                  shoff=shoff, flags=0, ehsize=eh_size, phentsize=ph_size, phnum=1,
                  shentsize=sh_size, shnum=3, shstrndx=0)
    sym_link = override.pop("sym_link", 2)
    sym_sh_size = override.pop("sym_sh_size", 2 * sym_size_b)
    sym_sh_offset = override.pop("sym_sh_offset", symtab_off)
    fields.update(override)
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1 if end == "<" else 2, 1]) + bytes(9)
    head = ident + struct.pack(end + ehdr, *fields.values())
    sections = bytes(sh_size) + \
        struct.pack(end + shdr, 0, 2, 0, 0, sym_sh_offset, sym_sh_size, sym_link, 1, 8,
                    sym_size_b) + \
        struct.pack(end + shdr, 0, 3, 0, 0, strtab_off, len(strtab), 0, 0, 1, 0)
    out = head + ph
    out += bytes(code_off - len(out)) + code + syms + strtab + sections
    assert len(out) == total
    return out


# (machine, bits, byte order, a function's code, accepted offsets, refused offsets)
ARCH_CASES = {
    "x86_64": (62, 64, "<", bytes.fromhex("49bb8877665544332211" "4989fa" "488d4701" "c3"),
               [10, 13, 17], [1, 5, 9, 11, 14]),
    "aarch64": (183, 64, "<", bytes.fromhex("1f2003d5") * 4, [4, 8, 12], [1, 2, 6]),
    "arm": (40, 32, "<", bytes.fromhex("0000a0e1") * 4, [4, 8], [2, 6]),
    "riscv64": (243, 64, "<", bytes.fromhex("0100") * 8, [2, 4, 6], [1, 3]),
    "ppc64le": (21, 64, "<", bytes.fromhex("00000060") * 4, [4, 8], [2, 5]),
    "s390x": (22, 64, ">", bytes.fromhex("0707") * 8, [2, 4], [1, 3]),
}


@pytest.mark.parametrize("name", sorted(ARCH_CASES))
def test_every_arch_by_the_elfs_machine(tmp_path, name):
    """Whatever the host: the binary's e_machine picks the rule (decode or alignment)."""
    machine, bits, end, code, good, bad = ARCH_CASES[name]
    assert arch.by_elf_machine(machine).name == name
    path = tmp_path / name
    path.write_bytes(tiny_elf(machine, bits, end, code))
    with Elf(path) as e:
        assert e.machine == machine and e.bits == bits
        for off in [0, *good]:
            place = e.place("func", off)
            assert (place.vaddr, place.file_offset) == (0x10100 + off, 0x100 + off)
            assert elfsym.boundary_problem(e, place) is None, (name, off)
        for off in bad:
            problem = elfsym.boundary_problem(e, e.place("func", off))
            assert problem and ("inside an instruction" in problem or "multiple of" in problem)


def test_arm_thumb_functions_are_two_byte_aligned(tmp_path):
    path = tmp_path / "thumb"
    path.write_bytes(tiny_elf(40, 32, "<", bytes.fromhex("00bf") * 8, sym_value_bit0=True))
    with Elf(path) as e:
        place = e.place("func", 2)
        assert place.vaddr == 0x10102                      # bit 0 is the mode, not the address
        assert elfsym.boundary_problem(e, place) is None
        assert "multiple of 2" in elfsym.boundary_problem(e, e.place("func", 3))


def test_x86_code_is_not_judged_by_another_arch(tmp_path):
    """The same bytes, labelled aarch64, are checked by alignment: 4 passes, 10 not."""
    path = tmp_path / "x"
    path.write_bytes(tiny_elf(183, 64, "<", ARCH_CASES["x86_64"][3] + bytes(2)))
    with Elf(path) as e:
        assert elfsym.boundary_problem(e, e.place("func", 4)) is None
        assert "multiple of 4" in elfsym.boundary_problem(e, e.place("func", 10))


# ---------------------------------------------------------------- files that are not binaries

@pytest.mark.parametrize("make, words", [
    (lambda d: os.mkfifo(d / "fifo") or d / "fifo", "is a FIFO"),
    (lambda d: d, "is a directory"),
    (lambda d: Path("/dev/zero"), "is a character device"),
    (lambda d: Path("/dev/null"), "is a character device"),
])
def test_what_is_not_a_regular_file_is_refused_without_opening(tmp_path, make, words):
    path = make(tmp_path)
    with pytest.raises(ElfError, match=words):
        Elf(path)                 # a FIFO without a writer: must not block


def test_a_symlink_to_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    with pytest.raises(ElfError, match="is a FIFO"):
        Elf(tmp_path / "link")


def test_dev_zero_through_planning_is_one_clean_error():
    for text in ("p:/dev/zero:0x10", "p:/dev/zero:main"):
        with pytest.raises(ElfError, match="/dev/zero is a character device"):
            plan_of([text])


# ---------------------------------------------------------------- hostile ELF files

def _hostile(tmp_path: Path, **override) -> Path:
    path = tmp_path / "hostile"
    path.write_bytes(tiny_elf(62, 64, "<", b"\xc3" * 16, **override))
    return path


@pytest.mark.parametrize("override, words", [
    ({"sym_sh_size": 1 << 40}, "more than the 32 MiB"),
    ({"sym_sh_size": 1 << 20}, "outside the file"),
    ({"sym_sh_offset": 1 << 62}, "outside the file"),
    ({"shoff": 1 << 50}, "outside the file"),
    ({"shnum": 0xFFFF, "shoff": 64}, "outside the file"),
    ({"phoff": 1 << 60}, "outside the file"),
    ({"phentsize": 1}, "too small"),
    ({"shentsize": 3}, "too small"),
])
def test_a_hostile_elf_is_a_clean_error(tmp_path, override, words):
    path = _hostile(tmp_path, **override)
    with pytest.raises(ElfError, match=words):
        with Elf(path) as e:
            e.segments
            e.symbol("func")


def test_truncated_and_odd_headers(tmp_path):
    for data, words in ((b"\x7fELF", "unknown ELF class"), (b"\x7fELF\x02\x01\x01" + bytes(20),
                                                             "truncated ELF header"),
                        (b"#!/bin/sh\n", "not an ELF file"), (b"", "not an ELF file")):
        p = tmp_path / "odd"
        p.write_bytes(data)
        with pytest.raises(ElfError, match=words):
            Elf(p)


def test_a_huge_sparse_binary_is_not_read_whole(tmp_path):
    """A 4 GiB file (sparse: nothing on disk) whose headers are small: only they are read."""
    path = _hostile(tmp_path)
    with open(path, "r+b") as f:
        f.truncate(4 << 30)
    tracemalloc.start()
    try:
        with Elf(path) as e:
            assert e.symbol("func").value == 0x10100 and e.segments
            assert elfsym.boundary_problem(e, e.place("func", 1)) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_the_descriptor_is_closed(tmp_path):
    path = _hostile(tmp_path)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with Elf(path) as e:
            e.symbols
    assert len(os.listdir("/proc/self/fd")) == before
    assert stat.S_ISREG(os.stat(path).st_mode)


# ---------------------------------------------------------------- spec text the kernel cannot take

@pytest.mark.parametrize("path, words", [
    ("/tmp/a\x1bb", "control, format or space"),
    ("/tmp/a\x00b", "control, format or space"),
    ("/tmp/a\u2028b", "bad uprobe target"),        # Python splits there already
    ("/tmp/a\u00a0b", "bad uprobe target"),
    ("/tmp/b\u00e0sh", "kernel would read as a space"),          # UTF-8 c3 a0
])
def test_paths_the_kernel_would_split_are_refused(path, words):
    with pytest.raises(UsageError, match=words):
        spec.parse(f"p:{path}:main", arch.X86_64)


def test_non_utf8_spec_text_is_one_usage_error():
    for text in ("p:/tmp/\udcff:main", "p:f x=\udcfe", "t:sched:\udc80"):
        with pytest.raises(UsageError, match="not valid UTF-8"):
            spec.parse(text, arch.X86_64)


def test_to_kprobe_events_refuses_anything_but_one_line_of_its_words():
    """The backstop: a spec that bypassed parse() still cannot add an event or argument."""
    good = spec.parse("p:/bin/x:main x=%di:u32", arch.X86_64)
    assert spec.to_kprobe_events(good, arch.X86_64, uprobe_offset=0x10) == \
        "p:bpfprobes/main /bin/x:0x10 x=%di:u32"
    for path in ("/tmp/a\nb", "/tmp/a b", "/tmp/a\tb", "/tmp/b\u00e0sh", "/tmp/\udcff"):
        with pytest.raises(UsageError, match="refusing to write a dynamic event"):
            spec.to_kprobe_events(replace(good, path=path), arch.X86_64, uprobe_offset=0x10)
    bad_arg = replace(good.args[0], name="x y")
    with pytest.raises(UsageError, match="refusing"):
        spec.to_kprobe_events(replace(good, args=(bad_arg,)), arch.X86_64, uprobe_offset=0x10)
    with pytest.raises(UsageError, match="refusing"):
        spec.to_kprobe_events(replace(good, event="a\np:evil"), arch.X86_64)


def test_the_arch_tables_know_their_elf_machines():
    assert {a.elf_machine for a in arch.ALL} == {62, 183, 40, 243, 21, 22}
    assert all(a.insn_align in (1, 2, 4) for a in arch.ALL)
    assert arch.X86_64.insn_decoder is not None and arch.by_elf_machine(9999) is None
    assert re.fullmatch(r"CS_ARCH_\w+", arch.X86_64.insn_decoder[0])
    assert platform.machine() and HOST.elf_machine


# ---------------------------------------------------------------- kernel functions with +OFFS

def test_a_kernel_offset_past_the_function_is_refused():
    """The kernel decodes kprobe offsets itself (x86); past the function's end
    (the next kallsyms symbol) is caught here, before anything is attached."""
    from bpfprobes.kernel.kallsyms import Kallsyms
    k = SimpleNamespace(abi=arch.X86_64, kprobe_blacklist=set(), btf=None,
                        kallsyms=Kallsyms(text=b"ffffffff81000000 T do_a\n"
                                               b"ffffffff81000040 T do_b\n"
                                               b"ffffffff81000090 t do_c\n"))
    ok = probeplan.resolve([spec.parse("p:do_a+0x3f", arch.X86_64)], k, dry_run=True)
    assert not ok.warnings
    with pytest.raises(UsageError, match=r"do_a\+0x40 is past the end of do_a: it is do_b\+0x0"):
        probeplan.resolve([spec.parse("p:do_a+0x40", arch.X86_64)], k, dry_run=True)
    forced = probeplan.resolve([spec.parse("p:do_b+0x60", arch.X86_64)], k, dry_run=True,
                               force=True)
    assert "do_c+0x10" in forced.warnings[0]
    hidden = SimpleNamespace(**{**vars(k), "kallsyms": Kallsyms(
        text=b"0000000000000000 T do_a\n0000000000000000 T do_b\n")})
    assert not probeplan.resolve([spec.parse("p:do_a+0x400", arch.X86_64)], hidden,
                                 dry_run=True).warnings      # addresses hidden: cannot tell


def test_a_symlink_to_a_name_the_kernel_cannot_take_is_refused(tmp_path):
    odd = tmp_path / "a\nb c"
    odd.write_bytes(tiny_elf(62, 64, "<", b"\xc3" * 4))
    (tmp_path / "plain").symlink_to(odd)
    with pytest.raises(UsageError, match="resolves to .*a\\\\nb c.*control, format or space"):
        plan_of([f"p:{tmp_path / 'plain'}:func"])



# ---------------------------------------------------------------- F1: the kernel gets the checked inode

def _swap_for_symlink(d: Path, to: Path | str) -> Path:
    """What a user owning a directory of the path can do at any moment."""
    old = d.with_name(d.name + ".old")
    os.rename(d, old)
    os.symlink(to, d)
    return old


def test_what_the_kernel_is_given_stays_the_checked_file_after_a_swap(binaries, tmp_path):
    """Planning hands both backends /proc/self/fd/N of the file it checked; a directory
    of the path swapped after the check (issue 11, F1) changes the path, not that."""
    d, decoy = tmp_path / "d", tmp_path / "decoy"
    d.mkdir()
    decoy.mkdir()
    shutil.copy(binaries["pie"], d / "prog")
    shutil.copy(binaries["pie"], decoy / "prog")          # same bytes, another inode
    checked = os.stat(d / "prog")
    plan = plan_of([f"p:{d}/prog:placed+10"])
    _swap_for_symlink(d, decoy)
    (up,) = [p.uprobe for p in plan.probes]
    (a,) = probe_cli.attachments(FAKE_KERNEL, plan)
    for given in (up.kernel_path, a.kernel_path):
        now = os.stat(given)
        assert (now.st_dev, now.st_ino) == (checked.st_dev, checked.st_ino)
    assert os.stat(up.path).st_ino != checked.st_ino        # the path now leads elsewhere
    assert a.path == up.path == str(d / "prog")            # what users see: the real path
    # the tracefs line: the same offset, written through the descriptor, and accepted
    shown = spec.to_kprobe_events(replace(plan.probes[0].spec, event="e"), HOST,
                                  uprobe_offset=up.file_offset)
    written = spec.to_kprobe_events(replace(plan.probes[0].spec, event="e", path=up.target),
                                    HOST, uprobe_offset=up.file_offset)
    assert written.split()[1] == f"{up.kernel_path}:{up.file_offset:#x}"
    assert shown.split()[1] == f"{d}/prog:{up.file_offset:#x}"
    dynevents.check_line("uprobe", written, "bpfprobes", "e")


def test_count_gives_the_kernel_the_checked_file(binaries, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(binaries["pie"], d / "prog")
    checked = os.stat(d / "prog")
    targets = countplan._uprobes(f"{d}/prog:plac*")
    _swap_for_symlink(d, "/usr/bin")
    assert [t.name for t in targets] == [f"{d}/prog:placed"]
    now = os.stat(targets[0].attach.kernel_path)
    assert (now.st_dev, now.st_ino) == (checked.st_dev, checked.st_ino)
    assert targets[0].attach.offset == readelf_symbol(binaries["pie"], "placed")


def test_one_held_descriptor_per_binary(binaries):
    plan_of([f"p:{binaries['shared']}:placed"])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        plan_of([f"p:{binaries['shared']}:placed", f"r:{binaries['shared']}:work"])
    assert len(os.listdir("/proc/self/fd")) == before


# ---------------------------------------------------------------- F4: a swapped directory opens no device

@pytest.fixture
def opens(monkeypatch) -> list[tuple[str, int]]:
    """Every os.open elfsym makes: (path, flags)."""
    seen: list[tuple[str, int]] = []
    real = os.open

    def recording(path, flags, *rest, **kw):
        seen.append((str(path), flags))
        return real(path, flags, *rest, **kw)
    monkeypatch.setattr(elfsym.os, "open", recording)
    return seen


def _swap_after_realpath(monkeypatch, d: Path, to: Path | str | None) -> None:
    """realpath runs, then the directory is swapped (or removed): the race of F4."""
    real = os.path.realpath

    def racing(path, *a, **kw):
        out = real(path, *a, **kw)
        if d.is_dir() and not d.is_symlink():
            if to is None:
                os.rename(d, d.with_name(d.name + ".gone"))
            else:
                _swap_for_symlink(d, to)
        return out
    monkeypatch.setattr(elfsym.os.path, "realpath", racing)


def test_a_directory_swapped_for_a_symlink_to_dev_opens_no_device(tmp_path, monkeypatch, opens):
    d = tmp_path / "d"
    d.mkdir()
    (d / "full").write_bytes(tiny_elf(62, 64, "<", b"\xc3" * 16))
    _swap_after_realpath(monkeypatch, d, "/dev")
    with pytest.raises(ElfError, match="is a character device"):
        Elf(d / "full")
    assert opens and all(flags & os.O_PATH for _p, flags in opens), opens


def test_a_directory_that_vanishes_is_one_clean_error(tmp_path, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    (d / "prog").write_bytes(tiny_elf(62, 64, "<", b"\xc3" * 16))
    _swap_after_realpath(monkeypatch, d, None)
    with pytest.raises(ElfError, match=r"cannot read .*: No such file or directory"):
        Elf(d / "prog")


def test_only_a_regular_file_is_opened_for_reading(tmp_path, opens):
    path = tmp_path / "prog"
    path.write_bytes(tiny_elf(62, 64, "<", b"\xc3" * 16))
    os.mkfifo(tmp_path / "fifo")
    with Elf(path):
        pass
    with pytest.raises(ElfError, match="is a FIFO"):
        Elf(tmp_path / "fifo")
    reads = [(p, f) for p, f in opens if not f & os.O_PATH]
    assert len(reads) == 1 and re.fullmatch(r"/proc/self/fd/\d+", reads[0][0]), opens


# ---------------------------------------------------------------- F3: bounded time and memory

def _many_symbols_elf(path: Path, table_bytes: int) -> None:
    """tiny_elf with a .symtab of `table_bytes`, every entry a defined `func` at its
    own address: the worst case for a lookup (each entry matches the name)."""
    head = tiny_elf(62, 64, "<", b"\xc3" * 16)
    off = (len(head) + 7) & ~7
    n = table_bytes // 24
    base = tiny_elf(62, 64, "<", b"\xc3" * 16, sym_sh_offset=off, sym_sh_size=n * 24)
    entry = struct.Struct("<IBBHQQ")
    with open(path, "wb") as f:
        f.write(base + bytes(off - len(base)))
        for start in range(0, n, 1 << 16):
            f.write(b"".join(entry.pack(1, 0x12, 0, 1, 0x10100 + i, 1)
                             for i in range(start, min(n, start + (1 << 16)))))


_MEASURED = """
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)
print(r.stderr, end="")
"""


def _measured(*args: str) -> tuple[int, int, list[str], float]:
    """(exit status, peak RSS in MiB, stderr lines, seconds) of the real tool."""
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _MEASURED, sys.executable, "-m",
                        "bpfprobes.cli.main", *args], capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).resolve().parents[2])
    first, *err = r.stdout.splitlines()
    rss_kib, status = map(int, first.split())
    return status, rss_kib >> 10, err, time.monotonic() - started


def test_a_huge_symbol_table_costs_neither_time_nor_memory(tmp_path):
    """Issue 11, F3: a 256 MiB table took 69 s and 2.9 GB. Now: refused above
    32 MiB at once, and a table under it is scanned a chunk at a time, in memory
    bounded whatever it holds (here every entry matches the name looked up)."""
    over = tmp_path / "over"
    over.write_bytes(tiny_elf(62, 64, "<", b"\xc3" * 16, sym_sh_offset=4096,
                              sym_sh_size=64 << 20))
    with open(over, "r+b") as f:
        f.truncate(80 << 20)                           # sparse: inside the file, nothing on disk
    under = tmp_path / "under"              # 700k entries: the old index took ~200 MB for it
    _many_symbols_elf(under, elfsym.MAX_TABLE_BYTES // 2)
    cases = [(["probe", "--dry-run", f"p:{over}:func"], 1, "more than the 32 MiB"),
             (["count", f"p:{over}:f*"], 1, "more than the 32 MiB"),
             (["probe", "--dry-run", f"p:{under}:func"], 1, "names 4+ different places"),
             (["probe", "--dry-run", f"p:{under}:0x100"], 0, ""),     # resolve(): a scan too
             (["count", f"p:{under}:f*"], 2, "matches nothing")]       # ambiguous: skipped
    for args, status, words in cases:
        got, rss_mib, err, seconds = _measured(*args)
        assert got == status, (args, err)
        if status:
            assert len(err) <= 2 and words in err[0] and "Traceback" not in "".join(err), err
        assert rss_mib < 100, (args, rss_mib)          # Python itself: ~30 MiB
        assert seconds < 30, (args, seconds)


def test_a_wildcard_indexes_at_most_max_indexed_names(binaries, monkeypatch):
    monkeypatch.setattr(elfsym, "MAX_INDEXED", 3)
    with pytest.raises(ElfError, match="more than 3 symbols match"):
        countplan._uprobes(f"{binaries['pie']}:*")
    assert [t.name for t in countplan._uprobes(f"{binaries['pie']}:plac*")] == \
        [f"{binaries['pie']}:placed"]
