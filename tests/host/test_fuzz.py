"""Fuzz every tool's command line (issue 11, section 7): opensnoop, execsnoop,
probe, count, irq, doctor and the `kprobe` alias, with argv built from each
tool's own argparse options and hostile values (huge, negative, float, inf and
nan numbers; bytes that are not UTF-8; control characters; long strings; glob
bombs; filter expressions and probe specs from small grammars, nested deep).

It fails on a traceback, an exit status other than 0/1/2, an error that is not
one `TOOL: error:` line (+ hint), a hang, and anything left attached.

Two tiers, one time budget (FUZZ_SECONDS, default 60; `make fuzz` gives more):
- in-process (most examples): cli.main.main(argv) with stdout/stderr captured.
  The layer that creates kernel objects (compile/load, tracefs sessions,
  reaping) is replaced by a tripwire, so an example ends where a real run
  would start attaching: parse-and-plan paths, --dry-run included, at ~ms each.
- subprocess (a sample): the real tool with a bound (-d 0.2 last, which wins),
  attaching for real; its BPF programs and maps (seen from its fds while it
  runs) and its tracefs objects must be gone after.

Hypothesis runs in batches, each with a fixed seed (0, 1, 2, ...), until the
budget is spent: the same examples in the same order on every run; a failure
prints its argv and the batch's seed.
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from bpfprobes.backends.bpf import loader, progcache
from bpfprobes.backends.tracefs import dynevents
from bpfprobes.base import signals
from bpfprobes.cli import common, count, doctor, execsnoop, irq, opensnoop, probe, serve
from bpfprobes.cli import main as cli_main
from tooling import held_by, leftovers, run_tool, tracefs_objects_of

FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "60"))
SUBPROCESS_SHARE = 0.35          # of the budget: real runs (~1-3 s each)
EXAMPLE_TIMEOUT = 20.0           # seconds: longer is a hang
BATCH = 40                       # examples per hypothesis run (one seed each)

# tool -> (its parser builder, the prefix of its error lines)
PARSERS: dict[str, tuple[Callable[[], argparse.ArgumentParser], str]] = {
    "opensnoop": (opensnoop.build_parser, "opensnoop"),
    "execsnoop": (execsnoop.build_parser, "execsnoop"),
    "probe": (probe.build_parser, "bpfprobes probe"),
    "count": (count.build_parser, "bpfprobes count"),
    "irq": (irq.build_parser, "bpfprobes irq"),
    "doctor": (doctor.build_parser, "bpfprobes doctor"),
    "kprobe": (probe.build_kprobe_parser, "kprobe"),
    "serve": (serve.build_parser, "bpfprobes serve"),
}
EXIT_OK = {0, 1, 2}


# ---------------------------------------------------------------- values

def _argv_text(raw: bytes) -> str:
    """What Python makes of argv bytes: UTF-8, other bytes as surrogate escapes
    (argv cannot hold a NUL)."""
    return raw.replace(b"\0", b"").decode("utf-8", "surrogateescape")


CONTROL = "\x1b]0;pwned\x07\x1b[2J\r\n\t\x7f\x9b\u202e\u200b"
hostile_text = st.one_of(
    st.binary(max_size=24).map(_argv_text),
    st.text(alphabet=st.sampled_from("ab_*?/.:%$()[]{}\"'\\ -+=~!&|<>,#0123456789é€"
                                     + CONTROL), max_size=24),
    st.sampled_from([
        "", " ", "-", "--x", "é" * 15, "é" * 8, "\udcff\udcfe", "a\udcc3", "A" * 5000,
        "*?" * 10 + "#", "*a" * 2000, "?" * 600, "\x1b]0;x\x07", "a\nb", "%s%n%x",
        "../../../etc/passwd", "/dev/zero", "$(reboot)", "`id`",
    ]),
)

NUMBERS = [
    "0", "-0", "1", "-1", "2", "3", "15", "16", "64", "1024", "0x10", "0o17", "0b101", "1_000",
    "007", "012", "1.5", "0.2", "1e3", "1e300", "-1e300", "1e-300", "inf", "-inf", "nan", "NaN",
    "Infinity", " 5 ", "5\n", "٣", "²", "½", str(2**31), str(2**32), str(2**32 - 1), str(2**60),
    str(2**63), str(2**64), str(-2**63), "4194303", "4194304", "65536", "131072", "9" * 5000,
    "0x" + "f" * 3000, "1" * 4301, "", "x", "0x", "--1", "+5", "1/cpu", "5/node", "0/cpu",
]
number = st.one_of(st.sampled_from(NUMBERS), st.integers(-2**70, 2**70).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr), hostile_text)

SOFTIRQS = ["HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED",
            "HRTIMER", "RCU", "all", "net_rx", "NET_RX_SOFTIRQ", "NET_XX"]
softirqs = st.one_of(st.lists(st.sampled_from(SOFTIRQS), min_size=1, max_size=4).map(",".join),
                     hostile_text)
REGEXES = ["(", ")", "[", "\\", "(a+)+$", "^(sh|bash)$", "a{99999999999}", "(" * 1200 + ")" * 1200,
           "(?P<x>", "*", "a**", "(?i)x", "\\p{L}", "[\udcff]", "x" * 5000]
regex = st.one_of(st.sampled_from(REGEXES), hostile_text)
USERS = ["root", "nobody", "0", "65534", "4294967295", "4294967294", "²", "٣", "-1", "007",
         "no_such_user_zz", "9" * 5000]
user = st.one_of(st.sampled_from(USERS), hostile_text)
FLAGS = ["O_WRONLY", "O_RDONLY", "O_CREAT", "O_BOGUS", "o_wronly", "0", "O_"]
CGROUPS = ["/sys/fs/cgroup", "/sys/fs/cgroup/system.slice", "/", "/dev/zero", "/nonexistent",
           "/proc/self/fd/0", ""]
DEVICES = ["lo", "vda", "vda1", "eth0", "ens3", "", ".", "..", "../..", "a/b", "nvme0n1",
           "\udcff", "lo\udcff", "l" * 300]
SYMBOLS = ["vring_interrupt", "e1000_intr", "do_sys_openat2", "no_such_fn", "a.isra.0", "1abc",
           "f f", "x\ny", "*/x", "sym+0x10"]

# ---------------------------------------------------------------- grammars

def _libc() -> str:
    """This machine's libc, as mapped into this process."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "/libc.so" in path or "/libc-" in path:
            return path
    return "/lib/x86_64-linux-gnu/libc.so.6"


LIBC = _libc()

KINDS = ["p", "r", "r10", "r99999", "p:grp/ev", "p:ev", "r:ev", "p:9/x", "p:a b", "x"]
KTARGETS = ["do_sys_openat2", "vfs_read+0x10", "vfs_read+4", "9pnet_virtio:p9_virtio_request",
            "no_such_fn", "do_sys_openat2+0xffffffffffffffff", "vfs_*", "0x1000"]
UTARGETS = ["/bin/true:main", "/bin/true:0x10", "/bin/true:main+4", "/bin/true:_init",
            f"{LIBC}:malloc", "/dev/zero:0x10", "/dev/null:main",
            "/nonexistent:main", "/tmp/a*/int/**/x:main", "/bin/true:", "/proc/self/exe:main",
            "/bin/true:0x" + "f" * 20]
TRACEPOINTS = ["syscalls:sys_enter_openat", "syscalls:sys_enter_getppid",
               "sched:sched_process_exec",
               "nosuch:event", "syscalls:", ":x", "syscalls:sys_enter_openat:x"]
FETCHES = ["%di", "%si", "%ax", "%r1", "%x0", "%xyz", "$arg1", "$arg0", "$arg99", "$retval",
           "$comm", "$stack0", "$stack", "@jiffies", "@jiffies+8", "filename", "flags", "count",
           "nosuchfield", "0x10", "-1", "\\x", "$", "%"]
TYPES = ["u8", "u16", "u32", "u64", "s8", "s32", "s64", "x32", "x64", "string", "ustring", "symbol",
         "strin", "b4@0/32", "u128", "", "string[9999]"]


@st.composite
def fetcharg(draw) -> str:
    """A fetcharg: a base, dereferenced up to 3 times, or now and then 200 deep."""
    if draw(st.integers(0, 40)) == 0:
        return "+0(" * 200 + "%di" + ")" * 200
    base = draw(st.sampled_from(FETCHES))
    for _ in range(draw(st.integers(0, 3))):
        off = draw(st.sampled_from(["+0", "-8", "+u0", "+16", "+99999999999999999999", "+", "0"]))
        base = f"{off}({base})"
    return base


# a user function almost nothing calls: a real uprobe costs the machine nothing
TAME_UPROBE = f"{LIBC}:getppid"
TAME_TRACEPOINTS = ["syscalls:sys_enter_getppid", "syscalls:sys_enter_openat",
                    "sched:sched_process_exec"]


@st.composite
def probe_spec(draw, tame: bool = False) -> str:
    """kprobe_events syntax: KIND TARGET [NAME=]FETCH[:TYPE]..., with junk spliced in.
    Tame (for real runs): targets that cost the machine nothing, hostile arguments."""
    kind = draw(st.sampled_from(["p", "r", "p:ev", "r:ev"] if tame else KINDS))
    if draw(st.integers(0, 2)) == 0:
        head = "t:" + draw(st.sampled_from(TAME_TRACEPOINTS if tame else TRACEPOINTS))
        args = [draw(st.sampled_from(["", "filename", "flags:x32", "pid", "comm", "nosuchfield",
                                      "filename:string", "__syscall_nr"])) for _ in range(2)]
        text = " ".join([head, *[a for a in args if a]])
    else:
        target = TAME_UPROBE if tame else draw(st.sampled_from(UTARGETS + KTARGETS))
        args = []
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(["", "x=", "file=", "ret=", "9=", "a b=", "comm=", "x=y="]))
            typ = draw(st.sampled_from(TYPES))
            args.append(f"{name}{draw(fetcharg())}" + (f":{typ}" if typ else ""))
        text = " ".join([f"{kind}:{target}" if ":" not in kind else f"{kind} {target}", *args])
    if not tame and draw(st.integers(0, 3)) == 0:          # splice junk somewhere
        junk = draw(hostile_text)
        at = draw(st.integers(0, len(text)))
        text = text[:at] + junk + text[at:]
    return text


FIELDS = ["ret", "pid", "tid", "cpu", "comm", "filename", "flags", "latency_ns", "x", "nosuch",
          "$retval"]
OPS = ["==", "!=", "<", "<=", ">", ">=", "&", "~", "!~", "<<<", "="]
LITERALS = ["0", "-1", "012", "0x10", "1" * 5000, str(2**64), str(-2**63 - 1), "1.5", '"/etc/*"',
            '"a\\"b"', '"\udcff"', '"' + "é" * 20 + '"', "'x'", '"*?*?*?*?*?*?*?*?*?*?#"', '""',
            '"unterminated', "nan", "ret"]


@st.composite
def filter_expr(draw, depth: int = 0) -> str:
    choice = draw(st.integers(0, 9))
    if choice == 0 and depth < 4:
        return f"({draw(filter_expr(depth + 1))})"
    if choice == 1 and depth < 4:
        return "!" + draw(filter_expr(depth + 1))
    if choice in (2, 3) and depth < 4:
        op = draw(st.sampled_from(["&&", "||", "&", "and", ""]))
        return f"{draw(filter_expr(depth + 1))} {op} {draw(filter_expr(depth + 1))}"
    if choice == 4:
        n = draw(st.sampled_from([50, 1200, 5000]))
        inner = f"ret == {draw(st.sampled_from(LITERALS))}"
        return draw(st.sampled_from(["(" * n + inner + ")" * n, "!" * n + inner,
                                     " && ".join([inner] * (n // 10))]))
    if choice == 5:
        return draw(hostile_text)
    return f"{draw(st.sampled_from(FIELDS))} {draw(st.sampled_from(OPS))} " \
           f"{draw(st.sampled_from(LITERALS))}"


COUNT_PATTERNS = ["vfs_*", "t:syscalls:sys_enter_open*", "t:sched:sched_process_e*",
                  "t:*:*", "t:sys*", "t::", "p:/bin/true:*", "p:/bin/true:ma?n", "p:/dev/zero:*",
                  "p:/nonexistent:*", "p:/bin/true", "t:*?*?*?*?*?*?*?*?*?*?#:*",
                  "p:/bin/true:" + "*?" * 10 + "#", "*?*?*?*?*?*?*?*?*?*?#", "*a" * 2000,
                  "p:vfs_*", "mod:vfs_*", "9x:foo", "p:", "t:", ""]
TAME_COUNT = ["t:syscalls:sys_enter_getppid", "t:sched:sched_process_e*", f"p:{TAME_UPROBE}",
              f"p:{LIBC}:getppi?", "t:syscalls:sys_enter_openat", "t:*?*?*?*?*?*?*?*?*?*?#:*"]
IRQ_NAMES = ["virtio*", "*", "virtio*-input*", "*?*?*?*?*?*?*?*?*?*?#", "", "[", "*a" * 3000]


# ---------------------------------------------------------------- argv from the parsers

def _value(action: argparse.Action, tame: bool):
    """A strategy for the value of one option or positional, chosen by what
    parses it (its type function, choices, or its name)."""
    t, dest = action.type, action.dest
    if action.choices:
        return st.one_of(st.sampled_from(sorted(action.choices)), hostile_text)
    by_type = {common.pid_arg: number, common.count_arg: number, common.uid_arg: number,
               common.pages_arg: number, common.seconds_arg: number, common.rate_arg: number,
               common.comm_arg: hostile_text, execsnoop._regex: regex, execsnoop._user: user,
               execsnoop._max_args: number, irq._irq_list: number, irq._softirq_list: softirqs}
    if t in by_type:
        return by_type[t]
    by_dest = {
        "specs": st.lists(probe_spec(tame), min_size=1, max_size=3),
        "definition": probe_spec(tame),
        "filter": filter_expr(),
        "patterns": st.lists(st.sampled_from(TAME_COUNT) if tame else
                             st.one_of(st.sampled_from(COUNT_PATTERNS), hostile_text),
                             min_size=1, max_size=3),
        "device": st.sampled_from(["lo", "vda", "\udcff", "no_such_dev0"]) if tame else
        st.one_of(st.sampled_from(DEVICES), hostile_text),
        "name": st.one_of(st.sampled_from(IRQ_NAMES), hostile_text),
        "handler": st.one_of(st.sampled_from(SYMBOLS), hostile_text),
        "cgroup": st.one_of(st.sampled_from(CGROUPS), hostile_text),
        "flag_filter": st.one_of(st.sampled_from(FLAGS), hostile_text),
        "string_size": number, "limit": number, "max_events": number, "interval": number,
    }
    if dest in by_dest:
        return by_dest[dest]
    return st.one_of(number, hostile_text) if t is not None else hostile_text


# options a subprocess run does not get: they would make a bounded run unbounded or
# heavy for the machine that other tests share (thousands of probes, 256 MiB rings)
UNTAME = {"--force", "--limit", "--buffer-pages", "-i", "--interval", "-d", "--duration",
          "--string-size", "-h", "--help", "--cgroup", "--rate-limit"}


@st.composite
def tool_argv(draw, tool: str, tame: bool = False) -> list[str]:
    parser = PARSERS[tool][0]()
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)
               or not tame]
    options = [a for a in actions if a.option_strings]
    positionals = [a for a in actions if not a.option_strings]
    argv: list[str] = []
    for a in draw(st.lists(st.sampled_from(options), max_size=5, unique_by=id)):
        flag = draw(st.sampled_from(a.option_strings))
        if tame and (flag in UNTAME or set(a.option_strings) & UNTAME):
            continue
        if a.nargs == 0:
            argv.append(flag)
        else:
            argv += [flag, draw(_value(a, tame))]
    for a in positionals:
        if a.nargs == "?" and draw(st.booleans()):
            continue
        v = draw(_value(a, tame))
        argv += v if isinstance(v, list) else [v]
    if not tame and draw(st.integers(0, 9)) == 0:          # an odd token anywhere
        junk = draw(st.sampled_from(["--", "-", "--frobnicate", "-x", "--json=1", "-dd"]))
        argv.insert(draw(st.integers(0, len(argv))), junk)
    return argv


# ---------------------------------------------------------------- in-process runs

class ReachedKernel(BaseException):
    """The tripwire: a run got as far as creating kernel objects."""


class Hung(BaseException):
    """An in-process example ran longer than EXAMPLE_TIMEOUT."""


def _tripwire(*_a, **_k):
    raise ReachedKernel()


# the functions through which a tool creates or removes kernel objects
TRIPWIRES = [(loader, "compile_program"), (progcache, "load"),
             (dynevents, "reap"), (dynevents, "Session")]


@contextlib.contextmanager
def in_process_guards():
    """Tripwires instead of the kernel-object layer; the signal handlers a tool's
    main installs are put back after each example (this is pytest's process)."""
    saved = [(m, n, getattr(m, n)) for m, n in TRIPWIRES]      # AttributeError: keep in sync
    for m, n, _ in saved:
        setattr(m, n, _tripwire)
    try:
        yield
    finally:
        for m, n, f in saved:
            setattr(m, n, f)


def _handlers() -> dict:
    return {s: signal.getsignal(s) for s in (*signals.STOP_SIGNALS, signal.SIGALRM, signal.SIGPIPE)}


def run_in_process(tool: str, argv: list[str]) -> tuple[int | str, str, str]:
    """(exit status or "reached kernel", stdout, stderr) of one run of main(argv)."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")   # a UTF-8 terminal
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    handlers, process = _handlers(), signals.recorder()
    signals._process = None                      # as in a fresh process: main installs its own

    def alarm(*_):
        raise Hung()

    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, EXAMPLE_TIMEOUT)
    # a hang inside C (a regex) never runs the SIGALRM handler: then end the whole
    # run, with every thread's stack, rather than hang the suite
    faulthandler.dump_traceback_later(EXAMPLE_TIMEOUT + 10, exit=True)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if tool == "kprobe":
                    status: int | str = probe.kprobe_main(argv)
                elif tool == "bpfprobes":               # the dispatcher itself
                    status = cli_main.main(argv)
                else:
                    status = cli_main.main([tool, *argv])
            except SystemExit as e:             # --help
                status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except ReachedKernel:
                status = "reached kernel"
            except Hung:
                raise AssertionError(f"{_said(tool, argv)} ran longer than {EXAMPLE_TIMEOUT} s")
            except Exception:
                raise AssertionError(f"{_said(tool, argv)} raised:\n{traceback.format_exc()}")
            out.flush()
            err.flush()
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in handlers.items():
            signal.signal(s, h)
        signals._process = process
    return status, out.buffer.getvalue().decode("utf-8", "replace"), \
        err.buffer.getvalue().decode("utf-8", "replace")


def _said(tool: str, argv: list[str]) -> str:
    """The example, short (hypothesis prints it whole as the falsifying example)."""
    return f"{tool} {[a if len(a) < 80 else a[:60] + '...' for a in argv]!r}"


def check_outcome(tool: str, argv: list[str], status, stdout: str, stderr: str) -> None:
    what = _said(tool, argv)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, f"{what}:\n{stderr}"
    if status == "reached kernel":
        return
    assert status in EXIT_OK, f"{what}: exit status {status}\n{stderr}"
    if status == 0:
        return
    named = argv[0] if tool == "bpfprobes" and argv else tool       # the dispatcher's tool
    prefix = PARSERS[named][1] if named in PARSERS and named != "kprobe" or tool == "kprobe" \
        else "bpfprobes"
    lines = stderr.splitlines()
    errors = [ln for ln in lines if ": error: " in ln]
    # one `TOOL: error: WHAT`, at most a hint after it, and every line the tool's
    assert len(errors) == 1, f"{what}: not one error line:\n{stderr}"
    assert lines[-1] == errors[0] or (lines[-2] == errors[0] and ": hint: " in lines[-1]), \
        f"{what}: the error is not the last line (+ hint):\n{stderr}"
    assert all(ln.startswith(("bpfprobes: ", prefix + ": ")) for ln in lines), \
        f"{what}: a stderr line without the tool's name:\n{stderr}"


def _batches(deadline: float, strategy, body, batch: int = BATCH) -> int:
    """Hypothesis runs of body(case) in batches, seeds 0, 1, 2, ..., until `deadline`
    (body returns at once past it). Each run starts with its simplest examples:
    cheap in-process, so batches there; one long batch for real runs."""
    n = 0
    while n == 0 or time.monotonic() < deadline:          # one batch at least
        run = settings(max_examples=batch, deadline=None, database=None,
                       derandomize=False, phases=[Phase.generate, Phase.shrink],
                       suppress_health_check=list(HealthCheck))(seed(n)(given(strategy)(body)))
        run()
        n += 1
    return n


# the dispatcher: a tool name (or not) first, then anything
dispatcher_argv = st.lists(st.one_of(st.sampled_from([*cli_main.TOOLS, "-h", "--help", "--version",
                                                      "kprobe", "PROBE", ""]), hostile_text),
                           max_size=3)
argv_any = st.sampled_from([*sorted(PARSERS), "bpfprobes"]).flatmap(
    lambda tool: st.tuples(st.just(tool), dispatcher_argv if tool == "bpfprobes"
                           else tool_argv(tool)))


def test_fuzz_in_process():
    """Most examples: parse and plan, in this process, stopped at the tripwire."""
    stats: Counter = Counter()
    budget = FUZZ_SECONDS * (1 - SUBPROCESS_SHARE)
    started = time.monotonic()
    deadline = started + budget
    before = held_by(os.getpid())

    def one(case):
        tool, argv = case
        if time.monotonic() > deadline and stats[tool]:          # each tool at least once
            return
        status, out, err = run_in_process(tool, argv)
        check_outcome(tool, argv, status, out, err)
        stats["examples"] += 1
        stats[f"{tool}"] += 1
        stats[f"status {status}"] += 1

    with in_process_guards():
        batches = _batches(deadline, argv_any, one)
    # nothing of ours is held by this process, and nothing is named after it
    after = held_by(os.getpid())
    assert after.progs <= before.progs and after.maps <= before.maps, (before, after)
    assert tracefs_objects_of(os.getpid(), after) == []
    assert not after.tokens - before.tokens, "a run token (lock) of ours was left open"
    elapsed = time.monotonic() - started
    print(f"\nfuzz in-process: {stats['examples']} examples in {elapsed:.1f} s, "
          f"{batches} batches of seeds 0..{batches - 1}: {dict(stats)}", file=sys.__stderr__)
    assert stats["examples"] >= min(200, budget * 5), stats
    for tool in [*PARSERS, "bpfprobes"]:
        assert stats[tool] > 0, f"{tool} was never fuzzed: {dict(stats)}"


# ---------------------------------------------------------------- real runs

def run_subprocess(tool: str, argv: list[str]) -> subprocess.CompletedProcess:
    """The real tool, as run_tool runs it (its BPF objects seen from its fds every
    20 ms), for the `kprobe` alias too; a hang is a failure."""
    entry = ["-c", "import sys; from bpfprobes.cli.probe import kprobe_main; "
                   "sys.exit(kprobe_main())"] if tool == "kprobe" else \
        ["-m", "bpfprobes.cli.main", tool]
    try:
        return run_tool(*argv, timeout=EXAMPLE_TIMEOUT, entry=entry)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{_said(tool, argv)} ran longer than {EXAMPLE_TIMEOUT} s") from None


def bounded(tool: str, argv: list[str]) -> list[str]:
    """The fuzzed argv with a bound last (argparse keeps the last -d)."""
    return argv if tool == "doctor" else [*argv, "-d", "0.2"]



def test_fuzz_real_runs():
    """A sample as real processes: real attach, the bound, then nothing of it left.
    Each tool in turn gets its share of the budget; its first example is its
    simplest command line (a plain real run), the next ones grow hostile."""
    stats: Counter = Counter()
    started = time.monotonic()
    budget = FUZZ_SECONDS * SUBPROCESS_SHARE
    tools = sorted(PARSERS)

    def one_of(tool: str, deadline: float):
        def one(argv: list[str]) -> None:
            if time.monotonic() > deadline and stats[tool]:      # each tool at least once
                return
            argv = bounded(tool, argv)
            r = run_subprocess(tool, argv)
            check_outcome(tool, argv, r.returncode, r.stdout, r.stderr)
            # by the ids and run token it was seen holding, and BCC's events named for its pid
            left = leftovers(r.pid, r.held)
            assert left == [], f"{_said(tool, argv)} left {left}"
            stats["examples"] += 1
            stats[tool] += 1
            stats[f"status {r.returncode}"] += 1
            stats["attached"] += bool(r.held.progs)
        return one

    batches = 0
    for i, tool in enumerate(tools):
        share = started + budget * (i + 1) / len(tools)
        batches += _batches(share, tool_argv(tool, tame=True), one_of(tool, share),
                            batch=int(budget / len(tools) * 2) + 10)     # > 2 runs a second
    elapsed = time.monotonic() - started
    print(f"\nfuzz real runs: {stats['examples']} examples in {elapsed:.1f} s, "
          f"{batches} batches: {dict(stats)}", file=sys.__stderr__)
    assert stats["examples"] >= len(tools) and stats["attached"] >= 1, stats
