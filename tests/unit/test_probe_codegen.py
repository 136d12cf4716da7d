"""Unit tests for `bpfprobes probe` below the CLI: plan, payload layout, C generation
for every architecture, filters, tracepoint formats, ELF symbols, output formatting.
No root, no BCC: everything here is computed from specs and made-up kernel facts."""
from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from bpfprobes.backends.bpf import backend as bpfbackend
from bpfprobes.base.errors import UsageError
from bpfprobes.gen import codegen, probegen
from bpfprobes.kernel import arch, elfsym, errnos
from bpfprobes.kernel.kallsyms import Kallsyms
from bpfprobes.plan import probefilter, probelayout, runconfig, spec, tpformat
from bpfprobes.plan.probefilter import And, Cmp, Not, Or
from bpfprobes.plan.probeplan import Facts, Options, Uprobe, assemble
from bpfprobes.present import decode, probefmt
from bpfprobes.tools import probe as probe_cli

X86 = arch.X86_64


def plan_for(texts, abi=X86, fields=None, symbols=None, uprobes=None, returns=None, **opts):
    specs = [spec.parse(t, abi) for t in texts]
    facts = Facts(specs, fields=fields or {}, symbols=symbols or {}, uprobes=uprobes or {},
                  returns=returns or {})
    return assemble(facts, Options(**opts), abi)


def c_of(texts, abi=X86, **kw) -> str:
    return probegen.probe_source(plan_for(texts, abi, **kw), abi)


# ---------------------------------------------------------------- every architecture

# (arch, the kprobe_events name of argument 2, its pt_regs member, the return value's
#  member, the program counter's, where the return address is at function entry)
ARCHES = [
    (arch.X86_64, "%si", "ctx->si", "ctx->ax", "ctx->ip", "probe_read((u64)ctx->sp, 8"),
    (arch.AARCH64, "%x1", "ctx->regs[1]", "ctx->regs[0]", "ctx->pc", "ctx->regs[30]"),
    (arch.ARM, "%r1", "ctx->uregs[1]", "ctx->uregs[0]", "ctx->uregs[15]", "ctx->uregs[14]"),
    (arch.RISCV64, "%a1", "ctx->a1", "ctx->a0", "ctx->epc", "ctx->ra"),
    (arch.PPC64LE, "%r4", "ctx->gpr[4]", "ctx->gpr[3]", "ctx->nip", "ctx->link"),
    (arch.S390X, "%r3", "ctx->gprs[3]", "ctx->gprs[2]", "ctx->psw.addr", "ctx->gprs[14]"),
]


def test_every_arch_in_arch_all_is_covered():
    assert {a.name for a, *_ in ARCHES} == {a.name for a in arch.ALL}


@pytest.mark.parametrize("abi, reg, member, ret, pc, link", ARCHES, ids=lambda v: getattr(v, "name", ""))
def test_register_and_argn_become_the_arch_member(abi, reg, member, ret, pc, link):
    c = c_of([f"p:do_sys_openat2 a={reg}:u64 b=$arg2:u64 s=+0({reg}):string",
              "r:do_sys_openat2 ret=$retval"], abi)
    body = c.split("int probe_1")[0]
    assert f"SLOT(e, 0) = (u64){member};" in body          # %REG
    assert f"SLOT(e, 8) = (u64){member};" in body          # $arg2, the same register
    assert f"(u64){member}, " in body                      # the string's address
    assert link in body                                    # the caller, at entry
    ret_fn = c.split("int probe_1")[1]
    assert f"SLOT(e, 0) = (u64){ret};" in ret_fn
    assert f"e->ret_ip = (u64){pc};" in ret_fn


@pytest.mark.parametrize("abi", arch.ALL, ids=lambda a: a.name)
def test_a_foreign_register_names_the_right_one(abi):
    foreign = "%si" if abi is not X86 else "%x1"
    with pytest.raises(UsageError) as e:
        spec.parse(f"p:f {foreign}", abi)
    assert f"argument 2 is %{abi.func_args[1]}" in e.value.what


@pytest.mark.parametrize("abi", arch.ALL, ids=lambda a: a.name)
def test_pointer_size_sets_intermediate_reads(abi):
    c = c_of(["p:f v=+8(+16($arg1)):u16"], abi)
    ptr = abi.pointer_size
    member = abi.member(abi.func_args[0])
    # the inner dereference reads a pointer; the outer one the type's 2 bytes
    assert re.search(rf"v = probe_read\(\(u64\)ctx->{re.escape(member)} \+ 16, {ptr}, ", c)
    assert "v = probe_read(v + 8, 2, " in c


def test_legacy_read_helpers_only_where_the_arch_has_them():
    assert "probe_read((u64)ctx->si, 4, 2," in c_of(["p:f +0(%si):u32"], X86)         # either
    assert "probe_read((u64)ctx->gpr[3], 4, 0," in c_of(["p:f +0(%r3):u32"], arch.PPC64LE)


# ---------------------------------------------------------------- fetchargs in C

def test_nested_dereferences_read_in_order_and_share_the_fault_bit():
    c = c_of(["p:f a=$arg1:u64 b=-8(+24(+0(%di))):s32"])
    lines = [ln.strip() for ln in c.splitlines() if "probe_read(" in ln and "BIT(1)" in ln]
    assert lines == ["v = probe_read((u64)ctx->di, 8, 2, &e->faults, BIT(1));",
                     "v = probe_read(v + 24, 8, 2, &e->faults, BIT(1));",
                     "v = probe_read(v - 8, 4, 2, &e->faults, BIT(1));"]
    assert "SLOT(e, 8) = v;" in c


def test_user_memory_in_uprobes_and_u_dereferences():
    assert "probe_read((u64)ctx->di + 4, 4, 1," in c_of(["p:f +u4(%di):u32"])
    up = {0: Uprobe("/bin/x", 0x1000, 0x1000)}
    c = c_of(["p:/bin/x:f +8($arg1):u64 s=+0($arg2):string"], uprobes=up)
    assert "probe_read((u64)ctx->di + 8, 8, 1," in c
    assert "probe_str(e, 8, 256, (u64)ctx->si, 1, BIT(1))" in c


def test_string_slots_and_variable_size_submit():
    plan = plan_for(["p:f a=$arg1 s=+0(%si):string n=$arg3:u32 t=+0(%dx):string c=$comm"],
                    string_size=64)
    lay = plan.probes[0].layout
    assert [(s.name, s.offset, s.size) for s in lay.slots] == [
        ("a", 0, 8), ("s", 16, 64), ("n", 8, 8), ("t", 80, 64), ("c", 144, 16)]
    assert lay.size == 160 and lay.trimmed.name == "c"
    c = probegen.probe_source(plan, X86)
    assert "u32 n1 = probe_str(e, 16, 64, (u64)ctx->si, 2, BIT(1));" in c
    assert "bpf_get_current_comm(e->payload + 144, 16);" in c
    assert "probe_submit(ctx, e, offsetof(struct probe_event, payload) + 144 + n4);" in c
    assert probegen.probe_defines(plan)["PROBE_PAYLOAD_MAX"] == 160


def test_only_scalars_send_a_fixed_size():
    c = c_of(["r:f ret=$retval"])
    assert "probe_submit(ctx, e, offsetof(struct probe_event, payload) + 8);" in c


def test_global_symbol_address_is_a_constant():
    c = c_of(["p:f j=@jiffies:u64 s=@init_uts_ns+4:string"],
             symbols={"jiffies": 0xffffffff82a05000, "init_uts_ns": 0xffffffff82c12340})
    assert "probe_read(0xffffffff82a05000ULL, 8, 0," in c                  # kernel memory
    assert "probe_str(e, 8, 256, 0xffffffff82c12344ULL, 0, BIT(1))" in c


def test_stack_words_and_stack_pointer():
    c = c_of(["p:f s2=$stack2 sp=$stack"], arch.AARCH64)
    assert "probe_read((u64)ctx->sp + 16, 8, 2," in c
    assert "SLOT(e, 8) = (u64)ctx->sp;" in c
    c = c_of(["p:f s1=$stack1"], arch.ARM)
    assert "probe_read((u64)ctx->uregs[13] + 4, 4, 2," in c


def test_no_caller_read_for_offsets_or_tracepoints():
    assert "ret_ip" not in c_of(["p:f+4 a=%di"])


# ---------------------------------------------------------------- latency pairs, names

def test_entry_and_return_on_one_function_pair_up():
    plan = plan_for(["p:do_sys_openat2 file=+0(%si):string", "r:do_sys_openat2 ret=$retval",
                     "r:vfs_read ret=$retval"])
    p0, p1, p2 = plan.probes
    assert (p0.stash, p1.pair, p2.pair) == (0, 0, None)
    assert [p.event for p in plan.probes] == ["do_sys_openat2", "do_sys_openat2__return",
                                               "vfs_read"]
    c = probegen.probe_source(plan, X86)
    assert "pair_enter(id, 0);" in c and "e->latency_ns = pair_leave(id, 0, e->ts_ns);" in c
    assert probegen.probe_defines(plan)["PROBE_PAIRS"] == 10240


def test_latency_option_adds_a_hidden_entry():
    plan = plan_for(["r:vfs_read ret=$retval"], latency=True)
    assert plan.probes[0].pair == 0 and [s.fn for s in plan.stashes] == ["stash_0"]
    c = probegen.probe_source(plan, X86)
    assert "int stash_0(struct pt_regs *ctx)" in c and "pair_enter(id, 0);" in c
    k = SimpleNamespace(kallsyms=SimpleNamespace(find=lambda s: [1]))
    kinds = [(a.kind, a.target, a.fn) for a in probe_cli.attachments(k, plan)]
    assert kinds == [("kprobe", "vfs_read", "stash_0"), ("kretprobe", "vfs_read", "probe_0")]


def test_retval_default_type():
    assert plan_for(["r:f ret=$retval"]).probes[0].spec.args[0].type == spec.TYPES["s64"]
    assert plan_for(["r:f ret=$retval"], abi=arch.ARM).probes[0].spec.args[0].type == \
        spec.TYPES["s32"]
    btf = plan_for(["r:f ret=$retval r2=$retval:u8"], returns={0: spec.TYPES["s32"]})
    assert [str(a.type) for a in btf.probes[0].spec.args] == ["s32", "u8"]


# ---------------------------------------------------------------- tracepoints

OPENAT_FORMAT = """name: sys_enter_openat
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int flags;\toffset:32;\tsize:8;\tsigned:0;
\tfield:umode_t mode;\toffset:40;\tsize:8;\tsigned:0;
"""
EXEC_FORMAT = """
\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:16;\tsize:16;\tsigned:0;
\tfield:unsigned long args[6];\toffset:32;\tsize:48;\tsigned:0;
"""


def test_format_file_fields_and_default_types():
    f = tpformat.parse(OPENAT_FORMAT)
    assert f["filename"].pointer and f["filename"].offset == 24
    assert [str(f[n].default_type()) for n in ("dfd", "filename", "flags", "mode", "common_pid")] \
        == ["s32", "x64", "s32", "u16", "s32"]
    g = tpformat.parse(EXEC_FORMAT)
    assert g["filename"].dynamic == "__data_loc" and g["filename"].is_char_array
    assert g["comm"].array == 16 and str(g["comm"].default_type()) == "string"
    with pytest.raises(UsageError, match="array"):
        g["args"].default_type()


def test_tracepoint_codegen_reads_the_record():
    fields = {0: tpformat.parse(OPENAT_FORMAT)}
    plan = plan_for(["t:syscalls:sys_enter_openat filename:string dfd"], fields=fields)
    c = probegen.probe_source(plan, X86)
    assert "int probe_0(void *ctx)" in c
    assert "probe_read((u64)ctx + 24, 8, 0," in c                  # the pointer, from the record
    assert "probe_str(e, 8, 256, v, 2, BIT(0))" in c                # its string: user or kernel
    assert "probe_read((u64)ctx + 16, 8, 0," in c                   # dfd: the whole field
    assert plan.probes[0].spec.args[1].type == spec.TYPES["s32"]    # typed by the format
    fields = {0: tpformat.parse(EXEC_FORMAT)}
    c = c_of(["t:sched:sched_process_exec filename comm"], fields=fields)
    assert "v = probe_read((u64)ctx + 8, 4, 0," in c                # __data_loc word
    assert "(u64)ctx + (v & 0xffff), 0, BIT(0))" in c
    assert "probe_str(e, 256, 16, (u64)ctx + 16, 0, BIT(1))" in c   # char[16], capped at 16


def test_tracepoint_type_checks():
    fields = {0: tpformat.parse(OPENAT_FORMAT)}
    with pytest.raises(UsageError, match="holds no string"):
        plan_for(["t:syscalls:sys_enter_openat dfd:string"], fields=fields)
    with pytest.raises(UsageError, match="has 4 bytes"):
        plan_for(["t:syscalls:sys_enter_openat p=common_pid:u64"], fields=fields)


# ---------------------------------------------------------------- filters

def test_filter_grammar():
    assert probefilter.parse('a == 1 || b == 2 && !(c ~ "x*")') == Or((
        Cmp("a", "==", 1), And((Cmp("b", "==", 2), Not(Cmp("c", "~", "x*"))))))
    assert probefilter.parse("ret == -ENOENT") == Cmp("ret", "==", -2)
    assert probefilter.parse("flags & 0x40") == Cmp("flags", "&", 64)
    for bad in ("ret <", "ret < 0 &&", "(ret < 0", "ret ** 2", "ret < BOGUS", "", "< 3"):
        with pytest.raises(UsageError):
            probefilter.parse(bad)


def test_filter_split_between_kernel_and_userspace():
    ok = {"ret": probefilter.FieldInfo("int"), "file": probefilter.FieldInfo("str", 256)}
    kern = lambda c: probefilter.kernel_ok(c, ok[c.name])  # noqa: E731
    e = probefilter.parse('ret < 0 && file ~ "/etc/*"')
    assert probefilter.split(e, kern) == (e, True)
    e = probefilter.parse('ret < 0 && file ~ "*.conf"')
    assert probefilter.split(e, kern) == (Cmp("ret", "<", 0), False)
    e = probefilter.parse('ret < 0 || file ~ "*.conf"')
    assert probefilter.split(e, kern) == (None, False)
    e = probefilter.parse('!(file ~ "*.conf")')
    assert probefilter.split(e, kern) == (None, False)


def test_filter_types_are_checked_per_probe():
    with pytest.raises(UsageError, match="is a string"):
        plan_for(["p:f file=+0(%si):string"], filter=probefilter.parse("file < 3"))
    with pytest.raises(UsageError, match="is a number"):
        plan_for(["r:f ret=$retval"], filter=probefilter.parse('ret == "x"'))
    with pytest.raises(UsageError, match="no probe captures"):
        plan_for(["r:f ret=$retval"], filter=probefilter.parse("nope == 1"))


def test_filter_c_for_numbers_and_strings():
    plan = plan_for(["p:f file=+0(%si):string fl=$arg3:u32", "r:f ret=$retval"],
                    filter=probefilter.parse('file ~ "/et*" && fl != 0 || pid == 7'))
    c = probegen.probe_source(plan, X86)
    assert ("((u8)(e->payload + 8)[0] == 47 && (u8)(e->payload + 8)[1] == 101 && "
            "(u8)(e->payload + 8)[2] == 116)") in c                     # a prefix: no NUL
    assert "(u64)(u32)SLOT(e, 0) != 0x0ULL" in c
    assert "(u64)(u32)e->pid == 0x7ULL" in c
    assert "probe_1" in c and plan.probes[1].kernel_filter is None      # no `file` there
    plan = plan_for(["r:f ret=$retval:s32 u=$retval:u16"],
                    filter=probefilter.parse('ret < 0 && u > -1 && comm == "ab"'))
    c = probegen.probe_source(plan, X86)
    assert "(s64)(s32)SLOT(e, 0) < 0LL" in c
    assert "(!(e->faults & BIT(1)) && 1)" in c                   # unsigned > negative: always
    assert "((u8)e->comm[0] == 97 && (u8)e->comm[1] == 98 && (u8)e->comm[2] == 0)" in c


def test_filter_userspace_fallback_is_kept_whole():
    plan = plan_for(["p:f file=+0(%si):string"], filter=probefilter.parse('file ~ "*.so*"'))
    p = plan.probes[0]
    assert p.kernel_filter is None and p.user_filter == Cmp("file", "~", "*.so*")
    assert probefilter.evaluate(p.user_filter, {"file": "/lib/libc.so.6"})
    assert not probefilter.evaluate(p.user_filter, {"file": "/etc/passwd"})
    assert not probefilter.evaluate(p.user_filter, {"file": None})          # a fault fails


def test_comm_filter_in_kernel_as_data():
    """--comm is the program's config (probe_begin compares it), not C of its own."""
    c = c_of(["p:f"], comm="cat")
    assert "comm" not in c.split('#include "probe.h"')[1]
    plan = plan_for(["p:f"], comm="cat")
    config = runconfig.PROBE.ctype.from_buffer_copy(probegen.probe_config(plan))
    assert (config.comm, config.comm_len, config.comm_set) == (b"cat", 3, 1)


# ---------------------------------------------------------------- layout

def test_layout_rules():
    args = spec.parse("p:f a=%di s=+0(%si):string c=$comm b=%dx:u8", X86).args
    lay = probelayout.layout(args, 100)
    assert [(s.name, s.offset, s.size) for s in lay.slots] == [
        ("a", 0, 8), ("s", 16, 104), ("c", 120, 16), ("b", 8, 8)]      # strings padded to 8
    raw = (-3 & (2**64 - 1)).to_bytes(8, "little") + bytes([0xff] * 8) + b"hi\0" + b"\0" * 101
    vals = lay.unpack(raw + b"cat\0")
    assert vals[0] == 2**64 - 3 and vals[3] == 2**64 - 1 and vals[1].startswith(b"hi\0")
    assert probelayout.typed(spec.TYPES["s64"], vals[0]) == -3
    assert probelayout.typed(spec.TYPES["u8"], vals[3]) == 255
    assert probelayout.typed(spec.TYPES["s16"], 0xfffe) == -2
    with pytest.raises(UsageError, match="more than"):
        probelayout.layout(spec.parse("p:f " + " ".join(f"s{i}=+0(%si):string"
                                                       for i in range(5)), X86).args, 4096)


# ---------------------------------------------------------------- ELF

def test_elf_reader_on_bin_true():
    e = elfsym.Elf("/bin/true")
    assert e.bits == 64 and e.kind in ("dyn", "exec") and e.segments
    for seg in e.segments:                                  # offsets and addresses agree
        assert e.vaddr_to_offset(seg.vaddr) == seg.offset
        if seg.filesz:
            assert e.offset_to_vaddr(seg.offset + seg.filesz - 1) == seg.vaddr + seg.filesz - 1
    if shutil.which("readelf"):
        out = subprocess.run(["readelf", "-Ws", "--dyn-syms", "/bin/true"], capture_output=True,
                             text=True, check=True).stdout
        want = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 8 and re.fullmatch(r"[0-9a-f]+", parts[1]) and parts[6] != "UND" \
                    and int(parts[1], 16):
                want[parts[7].split("@")[0]] = int(parts[1], 16)
        assert want and {n: s.value for n, s in e.symbols.items() if n in want} == want


def test_elf_symbol_file_offset_uses_the_segment():
    e = elfsym.Elf("/bin/true")
    for sym in e.symbols.values():
        off = e.vaddr_to_offset(sym.value)
        seg = next((s for s in e.segments if s.vaddr <= sym.value < s.vaddr + s.filesz), None)
        assert off == (None if seg is None else sym.value - seg.vaddr + seg.offset)


def test_elf_errors(tmp_path):
    with pytest.raises(elfsym.ElfError, match="cannot read"):
        elfsym.Elf(tmp_path / "missing")
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(elfsym.ElfError, match="not an ELF file"):
        elfsym.Elf(script)
    with pytest.raises(elfsym.ElfError, match="not found"):
        elfsym.Elf("/bin/true").symbol("no_such_function_here")


# ---------------------------------------------------------------- output

KSYMS = Kallsyms(text=b"ffffffff81000000 T _stext\n"
                      b"ffffffff81200000 T do_sys_openat2\n"
                      b"ffffffff81200400 T do_sys_open\n"
                      b"ffffffff81300000 T arch_rethook_trampoline\n"
                      b"ffffffffc0001000 t p9_virtio_request\t[9pnet_virtio]\n")


def raw_event(probe: int, payload: bytes, **head) -> bytes:
    h = decode.PROBE_EVENT.ctype()
    values = {"ts_ns": 1_500_000_000, "pid": 42, "tid": 43, "ctx.cpu": 1, "kstack": -1,
              "ustack": -1, "comm": b"cat", **head}
    for k, v in values.items():
        setattr(h, k, v)
    setattr(h, "probe", probe)
    return bytes(h)[:decode.PROBE_EVENT.head.size] + payload


def decoder_for(texts, **kw):
    plan = plan_for(texts, **kw)
    return plan, probefmt.Decoder(plan, KSYMS)


def test_ftrace_line_for_an_entry_probe():
    plan, dec = decoder_for(["p:myopen do_sys_openat2 file=+0(%si):string fl=%dx:x32 d=%di:s32"])
    payload = (0o100).to_bytes(8, "little") + (2**64 - 100).to_bytes(8, "little") + b"/etc/x\0"
    ev = dec(raw_event(0, payload))
    assert probefmt.ftrace_text(ev) == (
        "             cat-43      [001]     1.500000: myopen: (do_sys_openat2+0x0) "
        'file="/etc/x" fl=0x40 d=-100')


def test_ftrace_line_for_a_return_probe_with_errno_and_latency():
    plan, dec = decoder_for(["p:do_sys_openat2", "r:do_sys_openat2 ret=$retval"])
    ev = dec(raw_event(1, (2**64 - 2).to_bytes(8, "little"), latency_ns=1530,
                       ret_ip=0xffffffff81200410))
    assert probefmt.ftrace_text(ev).endswith(
        "do_sys_openat2__return: (do_sys_open+0x10 <- do_sys_openat2) ret=-2 (ENOENT) "
        "latency_ns=1530")
    ev = dec(raw_event(1, (5).to_bytes(8, "little"), ret_ip=0xffffffff81300004))
    line = probefmt.ftrace_text(ev)              # a trampoline is no caller; no entry seen
    assert "(<- do_sys_openat2) ret=5" in line and "latency" not in line


def test_faults_truncation_and_stacks():
    plan, dec = decoder_for(["p:do_sys_openat2 a=+0(%di):u64 s=+0(%si):string"], string_size=8)
    payload = (0).to_bytes(8, "little") + b"/abcdef\0"
    walk = {5: [0xffffffff81200004, 0xffffffffc0001010]}
    dec.stack_walk = walk.__getitem__
    ev = dec(raw_event(0, payload, faults=1, truncated=2, kstack=5, ustack=-14))
    text = probefmt.ftrace_text(ev)
    assert 'a=(fault) s="/abcdef..."' in text
    assert text.splitlines()[1:] == [" <stack trace>", " => do_sys_openat2+0x4",
                                     " => p9_virtio_request+0x10 [9pnet_virtio]",
                                     " <user stack trace> unavailable: EFAULT"]
    j = probefmt.json_event(ev, lambda ns: 1.5)
    assert j["args"] == {"a": None, "s": "/abcdef"} and j["faults"] == ["a"]
    assert j["truncated"] == ["s"] and j["kstack"][0] == "do_sys_openat2+0x4"
    assert j["ustack_error"] == "EFAULT"


def test_json_values_are_typed():
    plan, dec = decoder_for(["r:do_sys_openat2 ret=$retval p=$retval:x64 sym=$retval:symbol "
                             "b=$retval:u8"])
    raw = b"".join(v.to_bytes(8, "little") for v in
                   (2**64 - 2, 2**64 - 2, 0xffffffff81200400, 0x1ff))
    j = probefmt.json_event(dec(raw_event(0, raw)), lambda ns: 1700000000.5)
    assert j["args"] == {"ret": -2, "p": 2**64 - 2, "sym": "do_sys_open+0x0", "b": 255}
    assert j["errno"] == {"ret": "ENOENT", "p": "ENOENT"}              # ERR_PTR too
    assert (j["probe"], j["pid"], j["tid"], j["comm"], j["cpu"], j["ts"]) == \
        ("do_sys_openat2", 42, 43, "cat", 1, 1700000000.5)
    json.dumps(j)


def test_tracepoint_lines_have_no_location_and_exit_ret_gets_errno():
    fmt = "\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n"
    plan, dec = decoder_for(["t:syscalls:sys_exit_openat ret"], fields={0: tpformat.parse(fmt)})
    line = probefmt.ftrace_text(dec(raw_event(0, (2**64 - 13).to_bytes(8, "little"))))
    assert line.endswith("sys_exit_openat: ret=-13 (EACCES)")


def test_userspace_filter_drops_events():
    plan, dec = decoder_for(["p:f file=+0(%si):string"], filter=probefilter.parse('file ~ "*.so"'))
    assert dec(raw_event(0, b"/lib/x.so\0")) is not None
    assert dec(raw_event(0, b"/etc/passwd\0")) is None


def test_summary_percentiles():
    plan, dec = decoder_for(["p:f", "r:f ret=$retval"])
    stats = probefmt.Stats(plan)
    for lat in range(1, 101):
        stats.add(dec(raw_event(1, b"\0" * 8, latency_ns=lat * 1000)))
    stats.add(dec(raw_event(0, b"")))
    rows = stats.rows()
    assert rows[0] == {"probe": "f", "spec": "p:f", "count": 1}
    assert rows[1]["count"] == 100
    assert {k: rows[1]["latency_ns"][k] for k in ("p50", "p90", "p99", "max")} == \
        {"p50": 51000, "p90": 91000, "p99": 100000, "max": 100000}
    table = stats.table()
    assert "P99" in table and "51.000 us" in table


def test_errno_names():
    assert errnos.name(-2) == "ENOENT" and errnos.name(-512) == "ERESTARTSYS"
    assert errnos.name(2) is None and errnos.name(-5000) is None
    assert errnos.code("EACCES") == 13 and errnos.code("ENOTSUPP") == 524


def test_header_mirror_matches_probe_event_h():
    text = (codegen.c_dir() / "probe_event.h").read_text()
    text = text[text.index("struct probe_event {"):]
    text = text[:text.index("};")]
    names = re.findall(r"^\s+(?:struct )?\w+ (\w+)(?:\[\w+\])?;", text, re.M)
    expected = []                      # the ctx.* fields are one struct exec_ctx in C
    for n, _ in decode.PROBE_EVENT.fields:
        n = n.split(".")[0]
        if n not in expected:
            expected.append(n)
    assert names == expected + ["payload"]
    assert ctypes.sizeof(decode.PROBE_EVENT.ctype) == 96 and decode.PROBE_EVENT.head.size == 88


# ---------------------------------------------------------------- the kprobe_events line

def test_describe_gives_kprobe_and_uprobe_events_lines():
    k = SimpleNamespace(abi=X86)
    up = {1: Uprobe("/usr/bin/x", 0x1139, 0x401139)}
    plan = plan_for(["p:do_sys_openat2 file=+0(%si):string", "r:/usr/bin/x:f ret=$retval"],
                    uprobes=up)
    lines = probe_cli.describe(k, plan)
    assert "  kprobe_events: p:bpfprobes/do_sys_openat2 do_sys_openat2 file=+0(%si):string" \
        in lines
    assert "  uprobe_events: r:bpfprobes/f /usr/bin/x:0x1139 ret=$retval:s64" in lines


# ---------------------------------------------------------------- smaller pieces

def test_builtin_names_win_over_arguments_of_the_same_name():
    plan = plan_for(["p:f pid=%di:s32"], filter=probefilter.parse("pid == 7"))
    assert "(u64)(u32)e->pid == 0x7ULL" in probegen.probe_source(plan, X86)


def test_a_symbol_argument_is_filtered_by_its_address():
    plan, dec = decoder_for(["p:f s=%di:symbol"],
                            filter=probefilter.parse("s >= 0xffffffff81200400"))
    assert plan.probes[0].kernel_filter is not None and plan.probes[0].user_filter is None
    ev = dec(raw_event(0, (0xffffffff81200410).to_bytes(8, "little")))
    assert ev.values["s"] == "do_sys_open+0x10"
    # the userspace check (used when the kernel's part is not exact) compares numbers too
    assert probefilter.evaluate(plan.options.filter, {"s": 0xffffffff81200410})


def test_kretprobe_misses_come_from_kprobe_profile(tmp_path, monkeypatch):
    monkeypatch.setattr(probe_cli.os, "getpid", lambda: 4242)
    (tmp_path / "kprobe_profile").write_text(
        "  r_do_sys_openat2_bcc_4242     120    7\n"
        "  r_do_sys_openat2_bcc_999      5      3\n"
        "  r_foo_isra_0_bcc_4242         1      0\n")
    k = SimpleNamespace(tracefs=tmp_path)
    from bpfprobes.plan.attach import Attach
    attached = [Attach("kretprobe", "do_sys_openat2", "probe_1", maxactive=10),
                Attach("kretprobe", "foo.isra.0", "probe_2", maxactive=10),
                Attach("kprobe", "do_sys_openat2", "probe_0")]
    assert bpfbackend.kretprobe_misses(k, attached) == {"do_sys_openat2": 7, "foo.isra.0": 0}
    assert probe_cli.default_maxactive() >= 10


def test_kretprobes_are_attached_with_an_explicit_maxactive():
    plan = plan_for(["r:do_sys_openat2", "r7:vfs_read", "p:9pnet_virtio:p9_virtio_request"])
    k = SimpleNamespace(kallsyms=SimpleNamespace(find=lambda s: [1]))
    got = [(a.kind, a.target, a.maxactive) for a in probe_cli.attachments(k, plan)]
    assert got == [("kretprobe", "do_sys_openat2", probe_cli.default_maxactive()),
                   ("kretprobe", "vfs_read", 7), ("kprobe", "p9_virtio_request", 0)]
    k2 = SimpleNamespace(kallsyms=SimpleNamespace(find=lambda s: [1, 2]))     # ambiguous
    assert probe_cli.attachments(k2, plan)[2].target == "9pnet_virtio:p9_virtio_request"


def test_uprobe_attachments_use_the_placed_address():
    """BCC attaches at the address probeplan placed and checked (SYM+OFFS already in
    it), never by its own symbol lookup: both backends land on the same byte."""
    up = {0: Uprobe("/bin/x", 0x1139, 0x401139), 1: Uprobe("/bin/x", 0x1200, 0x401200)}
    plan = plan_for(["p:/bin/x:f+4", "r:/bin/x:0x1200"], uprobes=up, pid=99)
    a, b = probe_cli.attachments(SimpleNamespace(), plan)
    assert (a.kind, a.target, a.path, a.offset, a.pid) == ("uprobe", "", "/bin/x", 0x401139, 99)
    assert (b.kind, b.target, b.offset) == ("uretprobe", "", 0x401200)


def test_string_filters_go_to_the_kernel_only_when_their_bytes_fit():
    """15 letters can be 30 bytes: a kernel compare of those would read past the
    16-byte comm; such a literal is decided in userspace instead."""
    comm = probefilter.FieldInfo("str", 16)
    assert probefilter.kernel_ok(probefilter.parse('comm == "abcdefghijklmno"'), comm)
    assert not probefilter.kernel_ok(probefilter.parse('comm == "' + "é" * 15 + '"'), comm)
    assert not probefilter.kernel_ok(probefilter.parse('comm ~ "' + "é" * 9 + '*"'), comm)


# ---------------------------------------------------------------- metrics mode (serve, --prometheus)

def metrics_plan(texts, by=(), timed=False, **kw):
    from bpfprobes.plan import metricplan
    return plan_for(texts, metrics=metricplan.Options(tuple(by), 100, timed), **kw)


def test_metrics_mode_counts_in_the_kernel_and_sends_nothing():
    plan = metrics_plan(["p:do_sys_openat2 flags=$arg3:u32", "r:do_sys_openat2 ret=$retval:s32"],
                        by=("comm", "pid", "errno", "flags"), timed=True)
    c = probegen.probe_source(plan, X86)
    assert "probe_submit" not in c and "perf_submit" not in c
    entry, ret = c.split("/* spec 1 */")
    assert "metric_add(&mk, e->latency_ns, 0, 0);" in entry           # an entry: no latency
    assert "metric_add(&mk, e->latency_ns, e->latency_ns != 0, 0);" in ret
    assert "mk.err = metric_errno" not in entry                      # no return value there
    # an int's upper register bits never split a row: cut to 32 bits, sign-extended
    assert "mk.err = metric_errno((u64)(s64)(s32)SLOT(e, 0));" in ret
    assert "mk.args[0] = (SLOT(e, 0) & 0xffffffffULL);" in entry and "mk.args[0]" not in ret
    assert "mk.pid = e->pid;" in c and "__builtin_memcpy(mk.comm, e->comm" in c
    defs = probegen.probe_defines(plan)
    assert (defs["PROBE_METRICS"], defs["METRIC_SERIES"], defs["METRIC_PROBES"],
            defs["METRIC_SLOTS"]) == (True, 100, 2, 40)


def test_metrics_labels_are_checked_before_any_c():
    with pytest.raises(UsageError, match="is a string: strings are no labels"):
        metrics_plan(["p:do_sys_openat2 f=+0(%si):string"], by=("f",))
    with pytest.raises(UsageError, match="no probe captures as an integer"):
        metrics_plan(["p:do_sys_openat2"], by=("nosuch",))
    with pytest.raises(UsageError, match="no probe captures a return value"):
        metrics_plan(["p:do_sys_openat2"], by=("errno",))
    with pytest.raises(UsageError, match="4 at most"):
        metrics_plan(["p:f a=$arg1 b=$arg2 c=$arg3 d=$arg4 e=$arg5"], by=tuple("abcde"))
    # a filter the kernel cannot check exactly would need events in userspace: none come
    with pytest.raises(UsageError, match="cannot be checked in the kernel"):
        metrics_plan(["p:f s=+0(%si):string"], filter=probefilter.parse('s ~ "*x*"'))


def test_hostile_label_names_never_reach_the_c():
    """A label is an argument's name: only slot offsets are written, never the name."""
    plan = metrics_plan(["p:f evil=$arg1:u64"], by=("evil",))
    c = probegen.probe_source(plan, X86)
    assert "evil" not in c.split("/* spec 0 */")[1].split("metric_add")[0].replace(
        "/* argument 0 */", "")
