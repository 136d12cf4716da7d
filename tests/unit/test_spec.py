"""Unit tests for bpfprobes.plan.spec: parsing, validation, BTF/field hooks, kprobe_events text."""
from __future__ import annotations

import random
import re
from dataclasses import FrozenInstanceError, dataclass

import pytest

from bpfprobes.base.errors import UsageError
from bpfprobes.kernel import arch
from bpfprobes.plan import spec
from bpfprobes.plan.spec import (
    Arg,
    ArgType,
    BtfParam,
    Comm,
    Deref,
    Field,
    Reg,
    Retval,
    Stack,
    StackPtr,
    Sym,
    TYPES,
    parse,
    parse_all,
    resolve_btf_params,
    to_kprobe_events,
    validate_fields)

X86 = arch.X86_64
ARM = arch.ARM
ARM64 = arch.AARCH64


def one(text: str, abi: arch.Abi = X86) -> spec.FetchArg:
    """The single argument of `p f TEXT` (`p:f WORD` would make WORD the target)."""
    s = parse(f"p f {text}", abi)
    assert len(s.args) == 1
    return s.args[0]


def fails(text: str, *fragments: str, abi: arch.Abi = X86) -> UsageError:
    with pytest.raises(UsageError) as e:
        parse(text, abi)
    for f in fragments:
        assert f in e.value.what + " | " + e.value.hint, (f, e.value.what, e.value.hint)
    return e.value


# ---------------------------------------------------------------- fetcharg forms

@pytest.mark.parametrize("text, node", [
    ("%si", Reg("si")),
    ("%rsi", Reg("si")),                      # alias -> canonical
    ("$arg1", Arg(1)),
    ("$arg6", Arg(6)),
    ("$comm", Comm()),
    ("$stack", StackPtr()),
    ("$stack0", Stack(0)),
    ("$stack12", Stack(12)),
    ("@jiffies", Sym("jiffies", 0)),
    ("@jiffies+8", Sym("jiffies", 8)),
    ("@jiffies-0x10", Sym("jiffies", -16)),
    ("@foo.isra.0", Sym("foo.isra.0", 0)),
    ("+0(%di)", Deref(0, Reg("di"))),
    ("-8(%sp)", Deref(-8, Reg("sp"))),
    ("+0x18($arg2)", Deref(24, Arg(2))),
    ("+u4(%di)", Deref(4, Reg("di"), user=True)),
    ("+8(+0(%di))", Deref(8, Deref(0, Reg("di")))),
    ("+1(-2(+u3(@sym+4)))", Deref(1, Deref(-2, Deref(3, Sym("sym", 4), user=True)))),
    ("+0($stack)", Deref(0, StackPtr())),
    ("filename", BtfParam("filename")),
    ("+16(req)", Deref(16, BtfParam("req"))),
])
def test_fetch_forms(text: str, node: spec.Node) -> None:
    assert one(text).fetch == node


def test_retval_in_return_probes() -> None:
    assert parse("r:f $retval", X86).args[0].fetch == Retval()
    assert parse("p:f%return $retval", X86).args[0].fetch == Retval()
    assert parse("r:f +0($retval):string", X86).args[0].fetch == Deref(0, Retval())


def test_nesting_limit() -> None:
    deep = "+0(" * (spec.MAX_DEPTH + 1) + "%di" + ")" * (spec.MAX_DEPTH + 1)
    fails(f"p:f {deep}", "nests more than")
    ok = "+0(" * spec.MAX_DEPTH + "%di" + ")" * spec.MAX_DEPTH
    assert isinstance(one(ok).fetch, Deref)


# ---------------------------------------------------------------- types

@pytest.mark.parametrize("name", list(TYPES))
def test_each_type(name: str) -> None:
    a = one(f"+0(%di):{name}")
    assert a.type == TYPES[name] and a.explicit_type
    assert str(a.type) == name


def test_type_table() -> None:
    assert TYPES["s32"] == ArgType("s", 32)
    assert TYPES["string"].is_string and TYPES["ustring"].is_string
    assert not TYPES["symbol"].is_string and TYPES["symbol"].bits == 0


@pytest.mark.parametrize("abi", arch.ALL, ids=lambda a: a.name)
def test_default_types(abi: arch.Abi) -> None:
    ptr = ArgType("x", abi.pointer_size * 8)
    s = parse(f"r:f %{abi.retval} $retval $stack1 +0($stack) @jiffies $comm", abi)
    assert [a.type for a in s.args] == [ptr, ptr, ptr, ptr, ptr, TYPES["string"]]
    assert not any(a.explicit_type for a in s.args)
    assert parse("p:f $arg1", abi).args[0].type == ptr


def test_string_on_any_fetcharg_and_user_memory() -> None:
    assert one("$arg2:string").type == TYPES["string"]
    assert one("%si:string").type == TYPES["string"]
    assert one("%si:ustring").type == TYPES["ustring"]
    assert one("+u0(%si):string").type == TYPES["ustring"]      # a u deref means user memory
    assert one("+0(+u0(%si)):string").type == TYPES["string"]   # only the last read counts
    up = parse("p /bin/sh:main +0(%di):string $arg1:string $comm", X86)
    assert [str(a.type) for a in up.args] == ["ustring", "ustring", "string"]
    assert up.args[0].fetch == Deref(0, Reg("di"), user=True)   # all uprobe memory is user's


@pytest.mark.parametrize("text, fragment", [
    ("%di:u128", "valid types: u8"),
    ("%di:char", "unknown type 'char'"),
    ("%di:", "missing type"),
    ("%di:b4@2/32", "bitfield"),
    ("%di:u8[4]", "array type"),
    ("$comm:u32", "$comm is a string"),
])
def test_bad_types(text: str, fragment: str) -> None:
    fails(f"p:f {text}", fragment)


def test_symbol_type_not_in_uprobes() -> None:
    assert one("%di:symbol").type == TYPES["symbol"]
    fails("p /bin/sh:main %di:symbol", "not in uprobes")


# ---------------------------------------------------------------- names

def test_default_names_by_position() -> None:
    s = parse("p:f %di x=%si $arg3 +0(%dx):u8", X86)
    assert [a.name for a in s.args] == ["arg1", "x", "arg3", "arg4"]
    assert [a.name for a in parse("p:f $arg3 $arg1", X86).args] == ["arg1", "arg2"]


def test_param_and_field_default_names() -> None:
    assert [a.name for a in parse("p f filename f=flags", X86).args] == ["filename", "f"]
    assert [a.name for a in parse("t:a:b x y=z", X86).args] == ["x", "y"]


@pytest.mark.parametrize("text, fragment", [
    ("p:f a=%di a=%si", "duplicate argument name 'a'"),
    ("p:f %si arg1=%di", "duplicate argument name 'arg1'"),
    ("p:f 1a=%di", "bad argument name"),
    ("p:f =%di", "bad argument name"),
    ("p:f x=", "missing fetcharg"),
    ("p:f common_pid=%di", "reserved"),
])
def test_bad_names(text: str, fragment: str) -> None:
    fails(text, fragment)


def test_too_many_args() -> None:
    fails("p:f " + " ".join(f"a{i}=%di" for i in range(spec.MAX_ARGS + 1)), "at most 128")


# ---------------------------------------------------------------- heads, targets, naming

@pytest.mark.parametrize("text, kind, group, event, symbol, module, offset, nargs", [
    ("p:do_sys_open", "kprobe", "bpfprobes", "do_sys_open", "do_sys_open", None, 0, 0),
    ("p do_sys_open", "kprobe", "bpfprobes", "do_sys_open", "do_sys_open", None, 0, 0),
    ("p: do_sys_open", "kprobe", "bpfprobes", "do_sys_open", "do_sys_open", None, 0, 0),
    ("p:myopen do_sys_open", "kprobe", "bpfprobes", "myopen", "do_sys_open", None, 0, 0),
    ("p:grp/myopen do_sys_open %di", "kprobe", "grp", "myopen", "do_sys_open", None, 0, 1),
    ("p:grp/ do_sys_open", "kprobe", "grp", "do_sys_open", "do_sys_open", None, 0, 0),
    ("p:do_sys_open+4 %di", "kprobe", "bpfprobes", "do_sys_open_4", "do_sys_open", None, 4, 1),
    ("p:ev do_sys_open+0x10", "kprobe", "bpfprobes", "ev", "do_sys_open", None, 16, 0),
    ("p:ext4:ext4_sync_file", "kprobe", "bpfprobes", "ext4_sync_file", "ext4_sync_file",
     "ext4", 0, 0),
    ("p:e nf_conntrack:nf_ct_delete %di", "kprobe", "bpfprobes", "e", "nf_ct_delete",
     "nf_conntrack", 0, 1),
    ("p:foo.isra.0", "kprobe", "bpfprobes", "foo_isra_0", "foo.isra.0", None, 0, 0),
    ("p:do_sys_openat2 filename:string", "kprobe", "bpfprobes", "do_sys_openat2",
     "do_sys_openat2", None, 0, 1),
    ("p:do_sys_openat2 file=filename:string", "kprobe", "bpfprobes", "do_sys_openat2",
     "do_sys_openat2", None, 0, 1),
    ("r:do_sys_open $retval", "kretprobe", "bpfprobes", "do_sys_open", "do_sys_open", None, 0, 1),
    ("r:do_sys_open+0", "kretprobe", "bpfprobes", "do_sys_open", "do_sys_open", None, 0, 0),
    ("p:x do_sys_open%return", "kretprobe", "bpfprobes", "x", "do_sys_open", None, 0, 0),
])
def test_heads(text, kind, group, event, symbol, module, offset, nargs) -> None:
    s = parse(text, X86)
    assert (s.kind, s.group, s.event, s.symbol, s.module, s.offset, len(s.args)) == \
        (kind, group, event, symbol, module, offset, nargs)
    assert s.path is None and s.text == text and s.is_kernel
    assert s.is_return == (kind == "kretprobe")


def test_bare_word_after_event_is_the_target() -> None:
    s = parse("p:myopen do_sys_open", X86)        # the kernel's meaning, not a parameter
    assert (s.event, s.symbol, s.args) == ("myopen", "do_sys_open", ())
    s = parse("p do_sys_openat2 filename", X86)   # how to name an untyped parameter
    assert s.args[0].fetch == BtfParam("filename")


@pytest.mark.parametrize("text, maxactive", [("r:f", 0), ("r0:f", 0), ("r16:f", 16),
                                             ("r4096:g/e f", 4096), ("r8 f", 8)])
def test_maxactive(text: str, maxactive: int) -> None:
    assert parse(text, X86).maxactive == maxactive


def test_long_event_name() -> None:
    assert len(parse("p:" + "a" * 200, X86).event) == spec.MAX_NAME
    fails("p:" + "a" * 64 + " f", "longer than 63")


@pytest.mark.parametrize("text, fragment", [
    ("", "empty probe spec"),
    ("   ", "empty probe spec"),
    ("x:f", "unknown probe type"),
    ("-:grp/ev", "not supported"),
    ("p", "missing probe target"),
    ("p:grp/ev", "missing probe target"),
    ("p $arg1", "missing probe target"),
    ("p:grp/ev $arg1", "got '$arg1'"),
    ("p5:f", "only r<N>"),
    ("r4097:f", "too large"),
    ("r" + "9" * 30 + ":f", "too large"),
    ("r:f+4", "only allowed on p:"),
    ("p:f%return+4", "bad probe target"),
    ("r:x f%return", "already fire on return"),
    ("p 0xffffffff81000000", "raw address"),
    ("p:e 1234", "raw address"),
    ("p:e f+", "bad probe target"),
    ("p:e f-4", "bad probe target"),
    ("p:e a.out:main", "bad module name"),
    ("p:e do_sys_open+0x" + "f" * 30, "too large"),
])
def test_bad_heads(text: str, fragment: str) -> None:
    fails(text, fragment)


# ---------------------------------------------------------------- uprobes

@pytest.mark.parametrize("text, kind, event, path, symbol, offset", [
    ("p /bin/bash:readline", "uprobe", "readline", "/bin/bash", "readline", 0),
    ("p:/bin/bash:readline", "uprobe", "readline", "/bin/bash", "readline", 0),
    ("p:rl /bin/bash:readline+8", "uprobe", "rl", "/bin/bash", "readline", 8),
    ("p ./a.out:main", "uprobe", "main", "./a.out", "main", 0),
    ("p /usr/lib/libc.so.6:0x4a3b0", "uprobe", "libc_so_6_0x4a3b0", "/usr/lib/libc.so.6", "",
     0x4a3b0),
    ("p /opt/2to3:0x10", "uprobe", "_2to3_0x10", "/opt/2to3", "", 16),
    ("r:/bin/bash:readline $retval", "uretprobe", "readline", "/bin/bash", "readline", 0),
    ("r:x /lib/x.so:0x40", "uretprobe", "x", "/lib/x.so", "", 0x40),
    ("p:x /bin/bash:readline%return", "uretprobe", "x", "/bin/bash", "readline", 0),
])
def test_uprobes(text, kind, event, path, symbol, offset) -> None:
    s = parse(text, X86)
    assert (s.kind, s.event, s.path, s.symbol, s.offset) == (kind, event, path, symbol, offset)
    assert s.is_uprobe and not s.is_kernel and s.module is None


@pytest.mark.parametrize("text, fragment", [
    ("p /bin/bash", "bad uprobe target"),
    ("p /bin/bash:", "bad uprobe target"),
    ("p /bin/bash:read-line", "bad uprobe symbol"),
    ("r4:/bin/bash:readline", "not uretprobes"),
    ("r /bin/bash:readline+4", "only allowed on p:"),
    ("p /bin/sh:main @global", "not available in uprobes"),
    ("p /bin/sh:main @+0x10", "not available in uprobes"),
    ("p /bin/sh:main argv", "no parameter names"),
])
def test_bad_uprobes(text: str, fragment: str) -> None:
    fails(text, fragment)


# ---------------------------------------------------------------- tracepoints

def test_tracepoint() -> None:
    s = parse("t:syscalls:sys_enter_openat filename:string f=flags mode:u16", X86)
    assert (s.kind, s.group, s.event, s.symbol) == ("tracepoint", "syscalls",
                                                    "sys_enter_openat", "sys_enter_openat")
    assert [(a.name, a.fetch, str(a.type), a.explicit_type) for a in s.args] == [
        ("filename", Field("filename"), "string", True),
        ("f", Field("flags"), "x64", False),
        ("mode", Field("mode"), "u16", True)]
    assert s.is_kernel and not s.is_return
    assert parse("t:sched/sched_switch", X86).event == "sched_switch"
    assert to_kprobe_events(s, X86) is None


@pytest.mark.parametrize("text, fragment", [
    ("t:syscalls", "expected t:SUBSYS:EVENT"),
    ("t:", "expected t:SUBSYS:EVENT"),
    ("t", "expected t:SUBSYS:EVENT"),
    ("t4:a:b", "no MAXACTIVE"),
    ("t:a:b %di", "field names"),
    ("t:a:b +0(x)", "field names"),
    ("t:a:b x:u99", "unknown type"),
    ("t:a:b x x", "duplicate"),
])
def test_bad_tracepoints(text: str, fragment: str) -> None:
    fails(text, fragment)


def test_validate_fields() -> None:
    s = parse("t:syscalls:sys_enter_openat filename flags", X86)
    validate_fields(s, {"filename", "flags", "mode"})
    with pytest.raises(UsageError) as e:
        validate_fields(s, {"filename", "mode", "dfd"})
    assert "no field 'flags'" in e.value.what and "dfd, filename, mode" in e.value.hint


# ---------------------------------------------------------------- context errors

@pytest.mark.parametrize("text, fragment", [
    ("p:f $retval", "only available in return probes"),
    ("r:f $arg1", "not available in a return probe"),
    ("r f filename", "not available in a return probe"),
    ("p:f $arg0", "count from 1"),
    ("p:f $arg7", "on the stack"),
    ("p:f $foo", "unknown variable '$foo'"),
    ("p:f $arg", "unknown variable"),
    ("p:f $stackx", "unknown variable"),
    ("p:f %", "bad register"),
    ("p:f %%di", "bad register"),
    ("p:f %xyz", "not an x86_64 register"),
    ("p:f +0(%di", "unbalanced parentheses"),
    ("p:f +0%di)", "unbalanced parentheses"),
    ("p:f +0(%di))(", "unbalanced"),
    ("p:f +0(%di)+8(%si)", "bad dereference"),
    ("p:f +0()", "empty dereference"),
    ("p:f +x(%di)", "bad dereference"),
    ("p:f +0($comm)", "not an address"),
    ("p:f @0xffff", "absolute addresses"),
    ("p:f @", "bad global"),
    ("p f #x", "cannot parse fetcharg"),
    ("p f \\123", "cannot parse fetcharg"),
])
def test_context_errors(text: str, fragment: str) -> None:
    fails(text, fragment)


# ---------------------------------------------------------------- architectures

@pytest.mark.parametrize("abi, reg", [(X86, "si"), (ARM, "r1"), (ARM64, "x1")],
                         ids=lambda v: getattr(v, "name", v))
def test_same_spec_each_arch(abi: arch.Abi, reg: str) -> None:
    s = parse(f"p:do_sys_open file=+0(%{reg}):string mode=$arg3:u16", abi)
    assert s.args[0].fetch == Deref(0, Reg(reg))
    assert to_kprobe_events(s, abi) == (
        f"p:bpfprobes/do_sys_open do_sys_open file=+0(%{reg}):string "
        f"mode=%{abi.func_args[2]}:u16")


@pytest.mark.parametrize("abi", arch.ALL, ids=lambda a: a.name)
def test_arg_register_per_arch(abi: arch.Abi) -> None:
    s = parse("p:f $arg2", abi)
    assert s.args[0].fetch == Arg(2)
    assert to_kprobe_events(s, abi) == \
        f"p:bpfprobes/f f arg1=%{abi.func_args[1]}:x{abi.pointer_size * 8}"
    assert one(f"%{abi.func_args[1]}", abi).fetch == Reg(abi.func_args[1])
    fails(f"p:f $arg{len(abi.func_args) + 1}", "on the stack", abi=abi)


@pytest.mark.parametrize("target", arch.ALL, ids=lambda a: a.name)
@pytest.mark.parametrize("other", arch.ALL, ids=lambda a: a.name)
def test_wrong_arch_register_names_the_fix(target: arch.Abi, other: arch.Abi) -> None:
    reg = other.func_args[1]
    if target.canonical(reg) is not None:        # e.g. arm's %r1 is also an s390x register
        assert one(f"%{reg}", target).fetch == Reg(target.canonical(reg))
        return
    e = fails(f"p:f +0(%{reg}):string", f"%{reg} is not", target.name, abi=target)
    m = re.search(r"argument (\d+) is %(\w+) \(or \$arg\1\)", e.what)
    assert m and target.func_args[int(m[1]) - 1] == m[2], e.what


def test_wrong_arch_examples() -> None:
    fails("p:f %r1", "%r1 is not an x86_64 register; argument 2 is %si (or $arg2)")
    fails("p:f %si", "%si is not an arm register; argument 2 is %r1", abi=ARM)
    fails("p:f %si", "argument 2 is %x1", abi=ARM64)


# ---------------------------------------------------------------- BTF parameters

@dataclass(frozen=True)
class FakeParam:             # the shape of bpfprobes.kernel.btf.Param
    name: str
    index: int
    c_type: str
    size: int
    signed: bool
    is_char_pointer: bool


OPENAT2 = [FakeParam("dfd", 1, "int", 4, True, False),
           FakeParam("filename", 2, "const char *", 8, False, True),
           FakeParam("how", 3, "struct open_how *", 8, False, False),
           FakeParam("mode", 4, "umode_t", 2, False, False),
           FakeParam("big", 5, "long long", 8, True, False),
           FakeParam("flag", 6, "bool", 1, False, False),
           FakeParam("seventh", 7, "int", 4, True, False),
           FakeParam("by_value", 8, "struct pair", 16, False, False)]


def lookup(func: str) -> list[FakeParam]:
    assert func == "do_sys_openat2"
    return OPENAT2


def test_resolve_btf_params() -> None:
    s = parse("p:do_sys_openat2 file=filename:string dfd filename how mode big flag "
              "h=+8(how):u32", X86)
    r = resolve_btf_params(s, lookup)
    got = [(a.name, a.fetch, str(a.type)) for a in r.args]
    assert got == [("file", Arg(2), "string"), ("dfd", Arg(1), "s32"),
                   ("filename", Arg(2), "x64"),        # char * stays a pointer unless asked
                   ("how", Arg(3), "x64"), ("mode", Arg(4), "u16"), ("big", Arg(5), "s64"),
                   ("flag", Arg(6), "u8"), ("h", Deref(8, Arg(3)), "u32")]
    assert to_kprobe_events(r, X86) == (
        "p:bpfprobes/do_sys_openat2 do_sys_openat2 file=+0(%si):string dfd=%di:s32 "
        "filename=%si:x64 how=%dx:x64 mode=%cx:u16 big=%r8:s64 flag=%r9:u8 h=+8(%dx):u32")


def test_resolve_with_tuples_and_arm() -> None:
    s = parse("p do_sys_openat2 filename:ustring dfd", ARM)
    r = resolve_btf_params(s, lambda f: [("dfd", 1, False, 4, True),
                                         ("filename", 2, True, 4, False)])
    assert [(a.fetch, str(a.type)) for a in r.args] == [(Arg(2), "ustring"), (Arg(1), "s32")]
    assert to_kprobe_events(r, ARM) == \
        "p:bpfprobes/do_sys_openat2 do_sys_openat2 filename=+0(%r1):ustring dfd=%r0:s32"


def test_resolve_errors() -> None:
    with pytest.raises(UsageError) as e:
        resolve_btf_params(parse("p do_sys_openat2 nope", X86), lookup)
    assert "has no parameter 'nope'" in e.value.what
    assert "dfd, filename, how" in e.value.hint
    with pytest.raises(UsageError, match="on the stack"):
        resolve_btf_params(parse("p do_sys_openat2 seventh", X86), lookup, X86)
    with pytest.raises(UsageError, match="16 bytes"):
        resolve_btf_params(parse("p do_sys_openat2 by_value", X86), lookup)
    with pytest.raises(UsageError) as e:
        resolve_btf_params(parse("p do_sys_openat2 x", X86), lambda f: [])
    assert "takes no parameters" in e.value.hint


def test_resolve_without_params_does_not_look_up() -> None:
    s = parse("p:f %di", X86)
    assert resolve_btf_params(s, lambda f: pytest.fail("looked up")) is s


def test_unresolved_param_has_no_kprobe_events_line() -> None:
    with pytest.raises(UsageError, match="needs BTF"):
        to_kprobe_events(parse("p:f filename:string", X86), X86)


# ---------------------------------------------------------------- kprobe_events text

@pytest.mark.parametrize("text, line", [
    ("p:myopen do_sys_open filename=+0(%si):string mode=%cx:u16",
     "p:bpfprobes/myopen do_sys_open filename=+0(%si):string mode=%cx:u16"),
    ("r16:g/e ext4:ext4_sync_file $retval:s32",
     "r16:g/e ext4:ext4_sync_file arg1=$retval:s32"),
    ("p:do_sys_open+4 $comm $stack3 $stack @jiffies-8 +8(+u0(%di)):string %si:symbol",
     "p:bpfprobes/do_sys_open_4 do_sys_open+4 arg1=$comm arg2=$stack3:x64 arg3=$stack:x64 "
     "arg4=@jiffies-8:x64 arg5=+8(+u0(%di)):string arg6=%si:symbol"),
    ("p:f $arg1:string -8(%sp):s8 +u0(%di):string",
     "p:bpfprobes/f f arg1=+0(%di):string arg2=-8(%sp):s8 arg3=+u0(%di):ustring"),
    ("p:x do_sys_open%return $retval", "r:bpfprobes/x do_sys_open arg1=$retval:x64"),
    ("p /bin/bash:readline +0($arg1):string", "p:bpfprobes/readline /bin/bash:readline "
     "arg1=+0(%di):string"),
    ("p:rl /bin/bash:readline+8", "p:bpfprobes/rl /bin/bash:readline+8"),
    ("r:x ./a.out:0x4a0 $retval", "r:bpfprobes/x ./a.out:0x4a0 arg1=$retval:x64"),
])
def test_to_kprobe_events(text: str, line: str) -> None:
    s = parse(text, X86)
    assert to_kprobe_events(s, X86) == line
    # round trip: the line parses back to the same line
    assert to_kprobe_events(parse(line, X86), X86) == line


def test_uprobe_offset_is_where_the_probe_lands() -> None:
    """uprobe_offset is the file offset of SYM+OFFS (elfsym computes it): the line
    must not add OFFS a second time (issue 11: xmalloc+4 landed at xmalloc+8)."""
    s = parse("p:rl /bin/bash:readline+8 %di:u32", X86)
    assert to_kprobe_events(s, X86, uprobe_offset=0x1008) == \
        "p:bpfprobes/rl /bin/bash:0x1008 arg1=%di:u32"
    raw = parse("p:x /bin/bash:0x4a0", X86)
    assert to_kprobe_events(raw, X86, uprobe_offset=0x4a0) == "p:bpfprobes/x /bin/bash:0x4a0"


@pytest.mark.parametrize("abi", arch.ALL, ids=lambda a: a.name)
def test_round_trip_every_arch(abi: arch.Abi) -> None:
    bits = abi.pointer_size * 8
    s = parse(f"p:g/e f+16 a=$arg1:u32 b=+8(+0($arg2)):string c=%{abi.stack_pointer}", abi)
    line = to_kprobe_events(s, abi)
    again = parse(line, abi)
    assert to_kprobe_events(again, abi) == line
    assert [a.type for a in again.args] == [TYPES["u32"], TYPES["string"], TYPES[f"x{bits}"]]
    assert (again.group, again.event, again.symbol, again.offset) == ("g", "e", "f", 16)


def test_parse_all() -> None:
    specs = parse_all(["p:do_sys_open", "r:do_sys_open $retval", "t:sched:sched_switch"], X86)
    assert [s.kind for s in specs] == ["kprobe", "kretprobe", "tracepoint"]
    with pytest.raises(UsageError):
        parse_all(["p:f", "p:f $retval"], X86)


def test_frozen() -> None:
    s = parse("p:f %di", X86)
    with pytest.raises(FrozenInstanceError):
        s.event = "x"  # type: ignore[misc]
    assert hash(s) == hash(parse("p:f %di", X86))


# ---------------------------------------------------------------- fuzz

_ALPHABET = "prt:/%$@+-u()0x19aAz_.= \t*[]#\\\x00é²"
_WORDS = ["p", "r", "t", "p:", "r4:", "t:sched:", "do_sys_open", "%di", "%x1", "%r1", "$arg1",
          "$retval", "$comm", "$stack2", "+0(", "+u8(", "))", "(", ":string", ":u8", ":b1@2/8",
          "/bin/sh:main", "@jiffies", "x=", "0x10", "%return", "sched/sched_switch", "99999999"]


def _fuzz_inputs(n: int) -> list[str]:
    rng = random.Random(20240601)
    out = []
    for i in range(n):
        if i % 2:
            out.append("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 40))))
        else:
            out.append(" ".join("".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
                                for _ in range(rng.randint(0, 5))))
    return out


@pytest.mark.parametrize("abi", arch.ALL, ids=lambda a: a.name)
def test_fuzz_only_usage_errors(abi: arch.Abi) -> None:
    for text in _fuzz_inputs(3000) + ["+0(" * 5000 + "%di", "r" + "9" * 5000 + ":f",
                                      "p:f +" + "9" * 5000 + "(%di)", "p:f $arg" + "9" * 5000]:
        try:
            s = parse(text, abi)
        except UsageError as e:
            assert e.what and "\n" not in e.what
            continue
        try:                                      # a parsed spec always renders or says why
            to_kprobe_events(s, abi)
        except UsageError as e:
            assert "needs BTF" in e.what           # the only reason: an unresolved parameter
