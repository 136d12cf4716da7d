"""USDT pieces without a kernel: the u: grammar (plan/spec.py), argument locations
as the assembler writes them per architecture (plan/usdtargs.py), and a real
binary's notes (kernel/usdtnotes.py on Debian's python3.11)."""
import os

import pytest

from bpfprobes.base.errors import UsageError
from bpfprobes.kernel import arch, usdtnotes
from bpfprobes.kernel.elfsym import Elf
from bpfprobes.plan import spec, usdtargs
from bpfprobes.plan.spec import TYPES, Arg, Deref, Imm, Reg

X86, ARM = arch.X86_64, arch.AARCH64


@pytest.mark.parametrize("text, node, type_", [
    ("-4@%edi", Reg("di"), "s32"), ("8@%rax", Reg("ax"), "u64"), ("1@%sil", Reg("si"), "u8"),
    ("-8@%r12", Reg("r12"), "s64"), ("4@%r9d", Reg("r9"), "u32"),
    ("8@-16(%rbp)", Deref(-16, Reg("bp"), user=True), "u64"),
    ("-4@112(%rsp)", Deref(112, Reg("sp"), user=True), "s32"),
    ("8@(%rdi)", Deref(0, Reg("di"), user=True), "u64"),
    ("-4@$42", Imm(42), "s32"), ("4@$-1", Imm(-1), "u32"), ("8@$0x10", Imm(16), "u64")])
def test_x86_locations(text, node, type_):
    assert usdtargs.location(text, X86, "t") == (node, TYPES[type_])


@pytest.mark.parametrize("text, node, type_", [
    ("-4@x0", Reg("x0"), "s32"), ("8@w1", Reg("x1"), "u64"), ("8@sp", Reg("sp"), "u64"),
    ("-8@[sp, 16]", Deref(16, Reg("sp"), user=True), "s64"),
    ("4@[x29, -20]", Deref(-20, Reg("x29"), user=True), "u32"),
    ("8@[x19]", Deref(0, Reg("x19"), user=True), "u64"), ("-4@5", Imm(5), "s32")])
def test_aarch64_locations(text, node, type_):
    assert usdtargs.location(text, ARM, "t") == (node, TYPES[type_])


@pytest.mark.parametrize("text", ["8@(%rax,%rdx,8)", "-4@sym(%rip)", "4@%ah", "3@%eax",
                                  "%eax", "8@%xmm0", "8@$99999999999999999999999"])
def test_locations_not_read_are_refused(text):
    with pytest.raises(UsageError):
        usdtargs.location(text, X86, "t")


def test_the_u_grammar():
    s = spec.parse("u:/usr/bin/python3.11:python:gc__start gen=$arg1", X86)
    assert (s.kind, s.path, s.usdt, s.event) == ("uprobe", "/usr/bin/python3.11",
                                                 "python:gc__start", "gc__start")
    assert s.args[0].fetch == Arg(1)
    assert spec.parse("u:./a.out:tick", X86).usdt == ":tick"
    assert spec.parse("u:./a.out:tick x=+0($arg12):string", X86).args[0].fetch == \
        Deref(0, Arg(12), user=True)
    for bad in ("u:./a.out", "u:", "u:./a.out:a:b:c", "u3:./a.out:x", "u:./a.out:bad-name",
                "u:./a.out:x y=$retval"):
        with pytest.raises(UsageError):
            spec.parse(bad, X86)


def test_pythons_notes():
    if not os.path.exists("/usr/bin/python3.11"):
        pytest.fail("/usr/bin/python3.11 is missing")
    with Elf("/usr/bin/python3.11") as elf:
        sites = {s.full_name: s for s in usdtnotes.sites(elf)}
        gc = sites["python:gc__start"]
        assert gc.args == ("-4@112(%rsp)",) and gc.semaphore
        # the site is the nop in an executable segment; the semaphore in a writable one
        seg = next(s for s in elf.segments if s.offset <= gc.file_offset < s.offset + s.filesz)
        assert seg.flags & 1
        sem = next(s for s in elf.segments if s.offset <= gc.semaphore < s.offset + s.filesz)
        assert sem.flags & 2
    assert {"python:function__entry", "python:function__return", "python:line"} <= set(sites)
