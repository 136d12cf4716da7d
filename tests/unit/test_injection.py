"""Nothing the user types becomes code (issue 11, section 2), without a kernel.

A corpus of hostile specs, paths, names, filters and --comm values, grouped by
shape: for each, the generated C must define exactly the functions the specs
ask for (probe_N, stash_N), hold no BCC auto-attach name (BCC loads and
attaches kprobe__*, tracepoint__*, ... by itself when the program is built)
and no text of the user's at all: comments carry indexes, strings are compared
as the integer values of their bytes. tests/host/test_injection_host.py
compiles the same corpus with BCC and reads the loaded module's function list.

Also here: the filter's hostile literals (section 7) and codegen's checks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from bpfprobes.base.errors import UsageError
from bpfprobes.gen import codegen, probegen
from bpfprobes.kernel import arch
from bpfprobes.plan import probefilter, runconfig, spec
from bpfprobes.plan.probeplan import Facts, Options, Plan, Uprobe, assemble
from bpfprobes.plan.tpformat import TpField

X86 = arch.X86_64


# ---------------------------------------------------------------- the corpus

@dataclass(frozen=True)
class Case:
    name: str
    specs: tuple[str, ...]
    expected: frozenset[str]                 # the functions the program must define
    hostile: tuple[str, ...] = ()            # user text that must not appear in the C
    uprobe_paths: dict = field(default_factory=dict)   # spec index -> the path as resolved
    fields: dict = field(default_factory=dict)
    symbols: dict = field(default_factory=dict)
    filter: str | None = None
    comm: str | None = None
    latency: bool = False


# What made BCC attach a program of the user's (the issue's reproduction): the
# path closed the `/* spec */` comment and defined tracepoint__syscalls__...
EXPLOIT_PATH = "/tmp/a*/int/**/tracepoint__syscalls__sys_enter_getppid(void*ctx){return/**/0;}/*"
_PATHS = [
    EXPLOIT_PATH,
    "/tmp/b*/#define/probe_submit(a,b,c)/}//",
    '/tmp/c"\\"/*/kprobe__x/**/',
    "/tmp/d}{;//*/lsm__y(){}/*",
]


def _char_ptr(name: str, offset: int) -> TpField:
    return TpField(name, "const char *", offset, 8, False, True, None, None)


def _int_field(name: str, offset: int) -> TpField:
    return TpField(name, "int", offset, 4, True, False, None, None)


CASES = [
    Case("uprobe_paths",
         (f"p:{_PATHS[0]}:main",
          f"r:{_PATHS[1]}:main ret=$retval",
          f"p:{_PATHS[2]}:0x1000 s=+0($arg1):string",
          f"p:{_PATHS[3]}:main+4"),
         frozenset({"probe_0", "probe_1", "probe_2", "probe_3", "stash_0"}),
         hostile=(*_PATHS, "tracepoint__", "#define", "probe_begin(a"),
         # as realpath could resolve them (a symlink's target may hold a newline)
         uprobe_paths={0: EXPLOIT_PATH + "\n#define probe_begin(a, b, c) 0\n",
                       1: _PATHS[1], 2: _PATHS[2], 3: "/tmp/e\n*/int kprobe__z(){return 0;}/*"},
         latency=True),
    Case("names",
         ("p:kprobe__grp/tracepoint__sched__sched_switch do_sys_openat2 "
          "kretprobe__a=%di raw_tracepoint__b=+0(%si):string",
          "r:kfunc__g/lsm__e do_sys_openat2 kmod_ret__r=$retval",
          "p:kprobe__vfs_read kretfunc__x=$arg1",
          "p:kmod:kprobe__sym+8 tracepoint__y=%dx:u32",
          "p:tracepoint__x j=@kprobe__jiffies:u64"),
         frozenset({"probe_0", "probe_1", "probe_2", "probe_3", "probe_4"}),
         hostile=("kprobe__", "kretprobe__", "tracepoint__", "raw_tracepoint__", "kfunc__",
                  "kretfunc__", "lsm__", "kmod_ret__", "kmod"),
         symbols={"kprobe__jiffies": 0xffffffff82a05000}),
    Case("tracepoint_fields",
         ("t:tracepoint__a:kprobe__b kfunc__f=lsm__field:string n=raw_tracepoint__n",
          "t:syscalls:sys_enter_openat"),
         frozenset({"probe_0", "probe_1"}),
         hostile=("tracepoint__", "kprobe__", "kfunc__", "lsm__"),
         fields={0: {"lsm__field": _char_ptr("lsm__field", 16),
                     "raw_tracepoint__n": _int_field("raw_tracepoint__n", 24)},
                 1: {}}),
    Case("filters",
         ("p:/tmp/f:main s=+0($arg1):string n=$arg2:u64 m=$arg3:s32",
          "r:/tmp/f:main r=$retval"),
         frozenset({"probe_0", "probe_1"}),
         hostile=('"); } int kprobe__x(void *ctx) { return 0; } /*',
                  "}/int tracepoint__a__b(){return 0;}//", "\\\"'\\", "kprobe__",
                  "tracepoint__", "\x1b"),
         filter=('(s == "\\"); } int kprobe__x(void *ctx) { return 0; } /*" '
                 '|| s ~ "}/int tracepoint__a__b(){return 0;}//*" '
                 '|| comm == "\\\\\\"\'\\\\") '
                 "&& n != 0xffffffffffffffff && m != -9223372036854775808 && (m & -1) "
                 "&& m < 18446744073709551615 && !(n < -1)"),
         comm='a"b\\c*/\x1b'),
    Case("comm_bytes",
         ("r:/tmp/g*/kprobe__q/*:main ret=$retval",),
         frozenset({"probe_0", "stash_0"}),
         hostile=("kprobe__", "*/:main", '"\\', "\\0", "\udcff"),
         comm='\udcff"*/\\0',
         latency=True),
]


def plan_of(case: Case, abi=X86) -> Plan:
    specs = [spec.parse(t, abi) for t in case.specs]
    uprobes = {i: Uprobe(case.uprobe_paths.get(i, s.path), 0x1130, 0x1130)
               for i, s in enumerate(specs) if s.is_uprobe}
    facts = Facts(specs, fields=dict(case.fields), symbols=dict(case.symbols), uprobes=uprobes)
    expr = probefilter.parse(case.filter) if case.filter else None
    return assemble(facts, Options(comm=case.comm, latency=case.latency, filter=expr), abi)


# ---------------------------------------------------------------- reading C without a C parser

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)      # as C reads them, outside strings
_DEFINITION = re.compile(r"\b([A-Za-z_]\w*)\s*\(([^;{}]*)\)\s*\{")
_NOT_FUNCTIONS = {"if", "while", "for", "switch", "return", "sizeof"}


def without_comments(c: str) -> str:
    return _COMMENT.sub(" ", c)


def defined_functions(c: str) -> set[str]:
    """Names of the functions `c` defines: NAME(...) { once comments are gone."""
    return {m.group(1) for m in _DEFINITION.finditer(without_comments(c))} - _NOT_FUNCTIONS


def _baseline() -> set[str]:
    """What bpf_c/ itself defines in a probe program (static helpers)."""
    empty = Plan((), (), Options(), {})
    return defined_functions(probegen.probe_program(empty, X86).text)


def test_the_check_sees_the_program_the_issue_reported():
    """The regex check finds the function the old `/* spec */` comment let in."""
    old = (f"/* p:{EXPLOIT_PATH}:main */\nint probe_0(struct pt_regs *ctx)\n{{\n"
           "    return 0;\n}\n")
    assert defined_functions(old) == {"probe_0", "tracepoint__syscalls__sys_enter_getppid"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_program_defines_exactly_what_the_specs_ask_for(case):
    plan = plan_of(case)
    source = probegen.probe_source(plan, X86)
    assert defined_functions(source) == case.expected
    program = probegen.probe_program(plan, X86)
    assert defined_functions(program.text) == _baseline() | case.expected
    assert {p.fn for p in plan.probes} | {s.fn for s in plan.stashes} == case.expected


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_no_user_text_reaches_the_c(case):
    plan = plan_of(case)
    source = probegen.probe_source(plan, X86)
    cflags = " ".join(probegen.probe_program(plan, X86).cflags)
    for prefix in codegen.BCC_AUTO_ATTACH:
        assert prefix not in source and prefix not in cflags
    for text in (*case.hostile, *case.specs, *case.uprobe_paths.values()):
        assert text not in source and text not in cflags, text
    # no string literal at all: the only quotes are our own #include lines
    body = "\n".join(ln for ln in source.splitlines() if not ln.startswith("#include"))
    assert '"' not in body and "'" not in body and "\\" not in body
    # and comments carry only indexes
    for comment in re.findall(r"/\*.*?\*/", source, re.S):
        assert re.fullmatch(r"/\* (spec \d+|argument \d+|entry of pair \d+: its time, "
                            r"for the latency) \*/", comment), comment


def test_filter_case_compiles_its_filter_in_the_kernel():
    """The hostile filter must really be C (not sent to userspace), or the test proves little."""
    plan = plan_of(CASES[3])
    assert plan.probes[0].kernel_filter is not None and plan.probes[0].user_filter is None
    source = probegen.probe_source(plan, X86)
    # `"); } int kprobe__x(...` as its bytes: 34 41 59 32 125 ...
    quote = codegen.text_bytes('"); } int kprobe__x(void *ctx) { return 0; } /*') + b"\0"
    assert codegen.c_bytes_equal("(e->payload + 16)", quote) in source
    assert "(u64)(u64)SLOT(e, 0) != 0xffffffffffffffffULL" in source
    assert "(s64)(s32)SLOT(e, 8) != (-0x7fffffffffffffffLL - 1)" in source
    assert "((u64)(s64)(s32)SLOT(e, 8) & 0xffffffffffffffffULL) != 0" in source
    assert "(!(e->faults & BIT(2)) && 1)" in source       # s32 < 2^64 - 1: always


def test_comm_goes_in_as_its_exact_bytes():
    """--comm that was not UTF-8 (surrogate-escaped argv) is compared byte for
    byte, and as data: the program's config holds it, the C never does."""
    plan = plan_of(CASES[4])
    config = runconfig.PROBE.ctype.from_buffer_copy(probegen.probe_config(plan))
    assert (config.comm, config.comm_len, config.comm_set) == (b'\xff"*/\\0', 6, 1)
    source = probegen.probe_source(plan, X86)
    assert "comm[" not in source and "probe_task_wanted(id)" in source


# ---------------------------------------------------------------- codegen's checks

@pytest.mark.parametrize("name", ["probe_0", "stash_12", "_x", "FILTER_PID", "a" * 64])
def test_identifiers_we_make_pass(name):
    assert codegen.c_identifier(name) == name


@pytest.mark.parametrize("name", [
    "", "0probe", "probe 0", "probe_0(void)", "a" * 65, "x\n", "é", "probe-0", "p;q",
    *[p + "x" for p in codegen.BCC_AUTO_ATTACH], 5, None])
def test_identifiers_that_are_not_safe_are_refused(name):
    with pytest.raises(ValueError):
        codegen.c_identifier(name)


def test_members_and_numbers():
    for m in ("si", "regs[30]", "uregs[15]", "psw.addr", "gprs[2]"):
        assert codegen.c_member(m) == m
    for bad in ("si;", "regs[1] + 1", "a->b", "x)//"):
        with pytest.raises(ValueError):
            codegen.c_member(bad)
    assert codegen.c_int(0) == "0x0ULL" and codegen.c_int(2**64 - 1) == "0xffffffffffffffffULL"
    assert codegen.c_int(-5, signed=True) == "-5LL"
    assert codegen.c_int(-2**63, signed=True) == "(-0x7fffffffffffffffLL - 1)"
    for bad, signed in ((-1, False), (2**64, False), (2**63, True), (True, False), ("1", False)):
        with pytest.raises(ValueError):
            codegen.c_int(bad, signed)


def test_define_values_are_numbers_or_members():
    ok = {"A": True, "B": None, "C": False, "D": 7, "E": -1, "F": "0xffffffff83000000ULL",
          "G": "regs[1]", "H": "psw.addr"}
    assert codegen.define_flags(ok) == ["-DA", "-DD=7", "-DE=-1", "-DF=0xffffffff83000000ULL",
                                        "-DG=regs[1]", "-DH=psw.addr"]
    for bad in ({"A": "1; }"}, {"A": "x y"}, {"A": 1.5}, {"A B": 1}, {"A": "\"s\""},
                {"A=1 -DB": 1}):
        with pytest.raises(ValueError):
            codegen.define_flags(bad)


def test_text_bytes_round_trips_argv():
    raw = b"caf\xc3\xa9\xff\x80"
    assert codegen.text_bytes(raw.decode("utf-8", "surrogateescape")) == raw
    with pytest.raises(UsageError):
        codegen.text_bytes("\ud800")                 # a lone surrogate no argv can hold


# ---------------------------------------------------------------- hostile filter text (section 7)

@pytest.mark.parametrize("text, fragment", [
    ("pid == 012", "ambiguous number '012'"),
    ("pid == -012", "ambiguous number '-012'"),
    ("pid == 09", "ambiguous number"),
    ("pid == " + "1" * 5000, "does not fit in 64 bits"),
    ("pid == 0x" + "f" * 5000, "does not fit in 64 bits"),
    ("pid == 18446744073709551616", "does not fit in 64 bits"),
    ("pid == 0x10000000000000000", "does not fit in 64 bits"),
    ("pid == -9223372036854775809", "does not fit in 64 bits"),
    ("pid == 1e5", "bad number"),
    ("pid == 0b101", "bad number"),
    ("(" * 1200 + "pid == 1" + ")" * 1200, "more than 32 deep"),
    ("!" * 1200 + "pid == 1", "more than 32 deep"),
    ("!(" * 600 + "pid == 1" + ")" * 600, "more than 32 deep"),
    ("pid == 1 && " * 128 + "pid == 1", "more than 128 comparisons"),
    ('comm == "\udcff"', "not valid UTF-8"),
    ("pid\udcff == 1", "not valid UTF-8"),
    ('comm == "a\0b"', "NUL"),
])
def test_hostile_filter_text_is_one_usage_error(text, fragment):
    with pytest.raises(UsageError) as e:
        probefilter.parse(text)
    assert fragment in e.value.what
    assert e.value.exit_code == 2
    assert "\n" not in e.value.what and len(e.value.what) < 200
    assert "\n" not in e.value.hint


@pytest.mark.parametrize("text, value", [
    ("pid == 0", 0), ("pid == 0x0", 0), ("pid == 10", 10), ("pid == 0x00ff", 255),
    ("pid == 18446744073709551615", 2**64 - 1), ("pid == 0xffffffffffffffff", 2**64 - 1),
    ("pid == -9223372036854775808", -2**63), ("pid == -ENOENT", -2),
    ("pid == 0x" + "0" * 100 + "1", 1),
])
def test_numbers_in_range_are_taken(text, value):
    assert probefilter.parse(text) == probefilter.Cmp("pid", "==", value)


def test_deep_but_bounded_nesting_is_taken():
    depth = probefilter.MAX_DEPTH
    e = probefilter.parse("(" * depth + "pid == 1" + ")" * depth)
    assert e == probefilter.Cmp("pid", "==", 1)
    e = probefilter.parse("!" * depth + "pid == 1")
    for _ in range(depth):
        e = e.inner
    assert e == probefilter.Cmp("pid", "==", 1)
    # siblings do not add depth: many groups side by side are fine
    assert len(probefilter.parse(" && ".join(["(pid == 1)"] * 100)).items) == 100
