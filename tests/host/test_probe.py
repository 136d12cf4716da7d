"""Host tier for `bpfprobes probe`: real uprobes, uretprobes and tracepoints on this
kernel, on a small C program the tests build (tests/host/probe_target.c), plus the
errors a user meets before anything is attached. Each tracer run compiles one BPF
program (~1 s here), so several specs share a run where they can."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from bpfprobes.kernel import arch, elfsym, features
from bpfprobes.kernel.running import current
from tooling import PYTHON, ROOT, Tool, build_probe_target, leftovers, run_tool, settle, unique

ABI = arch.host()
R1, R2, R3 = (f"%{r}" for r in ABI.func_args[:3])    # %di %si %dx on x86_64
NAP_US = 50_000


@pytest.fixture(scope="module")
def target_bin(tmp_path_factory) -> str:
    # frame pointers: the kernel unwinds user stacks by them
    return build_probe_target(tmp_path_factory.mktemp("probe"), "-O1", "-g",
                              "-fno-omit-frame-pointer")


class Target:
    """probe_target waiting on stdin: its pid is known before it calls anything."""

    def __init__(self, binary: str, iterations: int = 3, nap_us: int = NAP_US) -> None:
        self.tag = unique("tag")
        self.missing = f"/tmp/{unique('missing')}"
        self.proc = subprocess.Popen([binary, self.tag, str(iterations), str(nap_us),
                                      self.missing], stdin=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def go(self) -> None:
        self.proc.communicate("go\n", timeout=60)
        assert self.proc.returncode == 0


def traced(binary: str, *args: str, targets: int = 1, pid_filter: bool = False,
           **kw) -> tuple[Tool, list[Target]]:
    """Start the tracer (JSON unless asked otherwise), run the targets, stop it."""
    ts = [Target(binary, **kw) for _ in range(targets)]
    extra = ["-p", str(ts[0].pid)] if pid_filter else []
    tool = Tool("probe", *extra, *args).wait_live()
    tool.ours = tool.held()             # its programs by id, for leftover checks
    for t in ts:
        t.go()
    settle(0.5)
    tool.stop()
    return tool, ts


def mine(tool: Tool, t: Target, probe: str | None = None) -> list[dict]:
    return [e for e in tool.json() if e["pid"] == t.pid and (probe is None or e["probe"] == probe)]


# ---------------------------------------------------------------- one run, many specs

@pytest.fixture(scope="module")
def session(target_bin):
    b = target_bin
    tool, (t,) = traced(b, "--json", "--summary",
                        f"p:{b}:f6 a=$arg1:s64 b=$arg2:s32 c=$arg3:s16 d=$arg4:s8 "
                        "e=$arg5:s64 f=$arg6:s32",
                        f"p:{b}:three s=+0($arg3):string",
                        f"p:regs {b}:three a={R1}:s64 b={R2}:s64 s=+0({R3}):string",
                        f"r:{b}:fails ret=$retval",
                        f"r:{b}:fails_int ret=$retval:s32",
                        f"p:{b}:nap us=$arg1:s32", f"r:{b}:nap")
    return tool, t


def test_args_one_to_six_signed(session):
    tool, t = session
    events = mine(tool, t, "f6")
    assert len(events) == 3, tool.stderr
    assert all(e["args"] == {"a": -1, "b": -2, "c": -3, "d": -4, "e": -5, "f": -6}
               for e in events)
    assert events[0]["comm"] == "probe_target" and events[0]["tid"] == t.pid


def test_string_through_argn_and_registers(session):
    tool, t = session
    assert [e["args"]["s"] for e in mine(tool, t, "three")] == [t.tag] * 3
    regs = mine(tool, t, "regs")
    assert [e["args"] for e in regs] == [{"a": -7, "b": 8, "s": t.tag}] * 3


def test_retval_and_errno_names(session):
    tool, t = session
    fails = mine(tool, t, "fails")
    assert [e["args"]["ret"] for e in fails] == [-2] * 3
    assert fails[0]["errno"] == {"ret": "ENOENT"} and fails[0]["caller"].startswith("main+")
    ints = mine(tool, t, "fails_int")
    assert [(e["args"]["ret"], e["errno"]["ret"]) for e in ints] == [(-13, "EACCES")] * 3


def test_latency_of_a_sleeping_function(session):
    tool, t = session
    entries, returns = mine(tool, t, "nap"), mine(tool, t, "nap__return")
    assert [e["args"]["us"] for e in entries] == [NAP_US] * 3
    lats = [e["latency_ns"] for e in returns]
    assert len(lats) == 3 and all(NAP_US * 1000 <= x < NAP_US * 1000 + 100_000_000
                                  for x in lats), lats


def test_summary_table_in_json(session):
    tool, t = session
    (summary,) = tool.json("summary")
    rows = {r["probe"]: r for r in summary["probes"]}
    assert rows["f6"]["count"] >= 3
    lat = rows["nap__return"]["latency_ns"]
    assert NAP_US * 1000 <= lat["p50"] <= lat["max"] < NAP_US * 1000 + 100_000_000
    assert "latency_ns" not in rows["f6"]


# ---------------------------------------------------------------- text, stacks, filters

def test_ftrace_text_with_user_stacks(target_bin):
    b = target_bin
    tool, (t,) = traced(b, "--verbose", "-H", "-U", f"p:{b}:g s=+0($arg1):string",
                        f"r:{b}:fails_int ret=$retval:s32", pid_filter=True, iterations=1)
    out = "\n".join(tool.lines)
    assert out.startswith("# tracer: bpfprobes"), out
    line = re.compile(r"^\s*probe_target-(\d+)\s+\[(\d{3})\]\s+(\d+\.\d{6}): (\w+): \((.*?)\) (.*)$")
    events = [m for m in map(line.match, tool.lines) if m]
    assert {m.group(1) for m in events} == {str(t.pid)}
    g = [m for m in events if m.group(4) == "g"]
    assert [m.group(6) for m in g] == [f's="{t.tag}"', f's="other-{t.tag}"']
    assert g[0].group(5) == "g+0x0"
    ret = next(m for m in events if m.group(4) == "fails_int")
    assert ret.group(5).startswith("main+0x") and ret.group(5).endswith("<- fails_int")
    assert ret.group(6) == "ret=-13 (EACCES)"
    # the user stack of g's first call names its caller, then main
    i = tool.lines.index(g[0].group(0))
    frames = tool.lines[i + 1:i + 5]
    assert frames[0] == " <user stack trace>" and frames[1].startswith(" => g+0x0")
    assert "caller_of_g+" in frames[2] and "main+" in frames[3], frames


def test_filter_in_kernel_and_latency_of_a_lone_return_probe(target_bin):
    b = target_bin
    tool, (t,) = traced(b, "--json", "--verbose", "--latency", "--comm", "probe_target",
                        "--filter", "ret < 0",
                        f"r:{b}:echo ret=$retval", f"r:{b}:nap")
    assert [e["args"]["ret"] for e in mine(tool, t, "echo")] == [-5] * 3
    naps = mine(tool, t, "nap")
    assert len(naps) == 3 and all(e["latency_ns"] >= NAP_US * 1000 for e in naps)
    assert "filter: in kernel: ret < 0" in tool.stderr
    assert "filter: not applied" in tool.stderr            # nap has no `ret`


def test_string_prefix_filter_runs_in_the_kernel(target_bin):
    b = target_bin
    t0 = Target(b)           # its tag is random: the prefix is known only once it exists
    prefix = t0.tag[:10]
    tool = Tool("probe", "--json", "--verbose", "--filter", f's ~ "{prefix}*"',
                f"p:{b}:g s=+0($arg1):string").wait_live()
    t0.go()
    settle(0.5)
    tool.stop()
    assert [e["args"]["s"] for e in mine(tool, t0, "g")] == [t0.tag] * 3
    assert f'filter: in kernel: s ~ "{prefix}*"' in tool.stderr
    assert "userspace" not in tool.stderr


def test_userspace_glob_and_max_events(target_bin):
    b = target_bin
    t = Target(b)
    tool = Tool("probe", "--json", "--verbose", "-n", "2", "--filter", f's ~ "*{t.tag[-6:]}"',
                f"p:{b}:g s=+0($arg1):string").wait_live()
    t.go()
    rc = tool.wait(30)
    assert rc == 0, tool.stderr
    events = mine(tool, t, "g")
    assert [e["args"]["s"] for e in events] == [t.tag, f"other-{t.tag}"]
    assert tool.json("summary")[0]["reason"] == "max-events"
    assert "userspace checks the rest" in tool.stderr


def test_pid_filter(target_bin):
    b = target_bin
    tool, (t1, t2) = traced(b, "--json", f"r:{b}:echo ret=$retval", targets=2,
                            pid_filter=True, iterations=2)
    assert len(mine(tool, t1, "echo")) == 4
    assert mine(tool, t2) == [] and {e["pid"] for e in tool.json()} == {t1.pid}


def test_tracepoint_with_format_fields(target_bin):
    t = Target(target_bin, iterations=1)
    tool = Tool("probe", "--json", "-p", str(t.pid),
                "t:syscalls:sys_enter_openat filename:string flags",
                "t:syscalls:sys_exit_openat ret").wait_live()
    t.go()
    settle(0.5)
    tool.stop()
    enters = [e for e in mine(tool, t, "sys_enter_openat") if e["args"]["filename"] == t.missing]
    assert len(enters) == 1 and enters[0]["args"]["flags"] == os.O_RDONLY
    exits = [e for e in mine(tool, t, "sys_exit_openat") if e["ts_ns"] > enters[0]["ts_ns"]]
    assert exits[0]["args"]["ret"] == -2 and exits[0]["errno"] == {"ret": "ENOENT"}
    assert "where" not in enters[0]


def test_context_of_a_uprobe_and_a_tracepoint(target_bin):
    """--context: a uprobe fires in the task (user mode), whatever else is known;
    a tracepoint's context is shown as unknown here, where kallsyms hides the
    per-CPU preempt_count (no CONFIG_KALLSYMS_ALL): never guessed."""
    b = target_bin
    tool, (t,) = traced(b, "--json", "--context", f"p:{b}:echo",
                        "t:syscalls:sys_enter_getppid", pid_filter=True, iterations=2)
    ups = mine(tool, t, "echo")
    assert len(ups) == 4
    for e in ups:
        c = e["context"]
        assert c["context"] == "task" and c["cpu"] == e["cpu"]
        assert c["source"] in ("implied", "preempt_count")
    text_tool, (t2,) = traced(b, "-H", "--context", f"p:{b}:echo", pid_filter=True,
                              iterations=1)
    lines = [ln for ln in text_tool.lines if "echo:" in ln]
    assert len(lines) == 2 and all(re.search(r"\[\d{3}\] [dDbX.?][n.?][.hHsz?][.0-9a-f?] ", ln)
                                   for ln in lines), lines


def test_nothing_left_behind(target_bin):
    tool, _ = traced(target_bin, "--json", f"r:{target_bin}:echo ret=$retval", iterations=1)
    assert tool.ours.progs and leftovers(tool.proc.pid, tool.ours) == []


# ---------------------------------------------------------------- before attaching

def test_kprobe_on_this_kernel():
    """Here kprobes are absent: one clear line pointing at the alternatives, exit 1."""
    r = run_tool("probe", "-n", "1", "p:do_sys_openat2 file=+0(%si):string", timeout=120)
    if features.check(current(), "kprobes").available:        # a kernel with kprobes
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("bpfprobes probe: error: kprobes are not available in this kernel")
    assert "t:syscalls:sys_enter_openat" in lines[1] and "uprobe" in lines[1]
    assert len(lines) == 2 and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, code, fragment", [
    (["p:do_sys_openat2 %r1"], 2, "%r1 is not"),
    (["p:f $arg0"], 2, "arguments count from 1"),
    (["p:f x=+0(%di):float"], 2, "unknown type"),
    (["r:f $arg1"], 2, "not available in a return probe"),
    (["p:/no/such/binary:main"], 1, "no such file"),
    (["t:syscalls:sys_enter_nosuch"], 1, "does not exist"),
    (["t:syscalls:sys_enter_openat nosuchfield"], 2, "has no field 'nosuchfield'"),
    (["p:/bin/true:no_such_symbol_here"], 1, "not found in /bin/true"),
    (["--filter", "ret <", "r:/bin/true:main"], 2, "filter"),
    (["--latency", "t:syscalls:sys_enter_openat"], 2, "--latency"),
], ids=lambda v: v if isinstance(v, int) else None)
def test_errors_are_one_line(args, code, fragment):
    r = run_tool("probe", *args)
    assert r.returncode == code, r.stderr
    assert fragment in r.stderr.splitlines()[0], r.stderr
    assert "Traceback" not in r.stderr


def test_dry_run_shows_the_program_and_the_uprobe_events_line(target_bin):
    r = run_tool("probe", "--dry-run", f"p:{target_bin}:three s=+0($arg3):string")
    assert r.returncode == 0, r.stderr
    elf = elfsym.Elf(target_bin)
    sym = elf.symbols["three"]
    seg = next(s for s in elf.segments if s.vaddr <= sym.value < s.vaddr + s.filesz)
    offset = sym.value - seg.vaddr + seg.offset
    nm = subprocess.run(["nm", target_bin], capture_output=True, text=True).stdout
    assert re.search(rf"^0*{sym.value:x} T three$", nm, re.M)
    assert f"#   uprobe_events: p:bpfprobes/three {target_bin}:{offset:#x} s=+0({R3}):string" \
        in r.stdout
    assert f"probe_str(e, 0, 256, (u64)ctx->{ABI.member(ABI.func_args[2])}, 1, BIT(0));" \
        in r.stdout


def test_kprobe_command_takes_perf_tools_arguments(target_bin):
    """`kprobe DEFINITION [FILTER]`, as perf-tools' script."""
    r = subprocess.run([PYTHON, "-c",
                        "import sys; from bpfprobes.cli.probe import kprobe_main; "
                        "sys.exit(kprobe_main(sys.argv[1:]))", "--dry-run",
                        f"r:{target_bin}:echo ret=$retval", "ret < 0"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "filter: in kernel: ret < 0" in r.stdout
