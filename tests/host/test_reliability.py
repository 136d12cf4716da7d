"""What production does to a tracer: kill -9, two instances at once, exits that
leave nothing of ours in the kernel."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tooling import Tool, Workload, leftovers, settle, unique

# the arguments each tool runs with; its programs are found by id (the fds the
# live process holds), so another instance of the same tool running meanwhile
# does not count
ARGS = {"opensnoop": [], "execsnoop": [], "probe": ["t:syscalls:sys_enter_openat filename:string"]}
TOOLS = sorted(ARGS)


def start(tool: str, *extra: str) -> Tool:
    t = Tool(tool, "--json", *extra, *ARGS[tool]).wait_live()
    t.ours = t.held()
    assert t.ours.progs, f"the live {tool} holds no BPF program"
    return t


def left_behind(t: Tool) -> list:
    """What the stopped run `t` left in the kernel: programs, maps, tracefs events."""
    return leftovers(t.proc.pid, t.ours)


@pytest.mark.parametrize("tool", TOOLS)
def test_programs_are_gone_after_exit(tool):
    t = start(tool)
    assert t.stop(signal.SIGINT) == 0
    assert left_behind(t) == []


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_at_rest_exits_within_2s_with_summary(tool, sig):
    t = start(tool)
    began = time.monotonic()
    assert t.stop(sig) == 0
    assert time.monotonic() - began < 2.0
    [summary] = t.json("summary")
    assert summary["reason"] == f"signal:{signal.Signals(sig).name}"
    assert left_behind(t) == [] and "Traceback" not in t.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_storm(sig, tmp_path):
    prefix = str(tmp_path / unique("midstorm"))
    w = Workload("bpfp-midstorm", f"storm:{prefix}:100000000", nice=19)    # until killed
    try:
        t = start("opensnoop", "-p", str(w.pid))
        w.proc.stdin.write("go\n")
        w.proc.stdin.flush()
        # inside the storm for sure: its events are arriving, and it does not end by itself
        assert t.wait_until(lambda: t.json()), t.stderr
        began = time.monotonic()
        assert t.stop(sig) == 0
        assert time.monotonic() - began < 2.0
        assert w.proc.poll() is None
    finally:
        w.proc.kill()
        w.proc.wait()
    [summary] = t.json("summary")
    assert summary["reason"] == f"signal:{signal.Signals(sig).name}" and summary["events"] > 0
    assert left_behind(t) == []


@pytest.mark.parametrize("tool", ["execsnoop", "probe"])
def test_duration_and_event_limit(tool):
    r = Tool(tool, "--json", "-d", "1", *ARGS[tool])
    assert r.wait(30) == 0 and r.json("summary")[0]["reason"] == "duration"
    limit = ["-n", "2"] if tool == "probe" else ["--max-events", "2"]
    r = Tool(tool, "--json", *limit, *ARGS[tool]).wait_live()
    deadline = time.monotonic() + 30
    while r.proc.poll() is None and time.monotonic() < deadline:
        subprocess.run(["/bin/true"])    # execs and opens of our own to count
        time.sleep(0.1)
    assert r.wait(10) == 0
    assert len(r.json()) == 2 and r.json("summary")[0]["reason"] == "max-events"


def test_probe_storm_captured_plus_lost_is_exact(tmp_path):
    n = 30000
    prefix = str(tmp_path / unique("pstorm"))
    w = Workload("bpfp-pstorm", f"storm:{prefix}:{n}")
    t = Tool("probe", "--json", "-p", str(w.pid), "--buffer-pages", "1",
             "t:syscalls:sys_enter_openat filename:string").wait_live()
    t.pause()                # the reader stopped: the 1-page buffer surely overflows
    try:
        w.go()
    finally:
        t.resume()
    t.stop()
    captured = sum(1 for e in t.json() if str(e["args"]["filename"]).startswith(prefix))
    lost = sum(x["count"] for x in t.json("lost"))
    assert t.json("summary")[0]["lost"] == lost
    assert captured + lost == n and lost > 0, (captured, lost)


@pytest.mark.parametrize("tool", TOOLS)
def test_after_sigkill_the_next_start_works(tool, tmp_path):
    t = start(tool)
    t.stop(signal.SIGKILL)
    assert left_behind(t) == []      # the kernel frees programs once the last fd closes
    again = start(tool)
    assert again.stop() == 0 and left_behind(again) == []


def test_two_opensnoops_see_the_same_events(tmp_path):
    files = [str(tmp_path / unique("twin")) for _ in range(20)]
    w = Workload("bpfp-twins", *[f"open:{f}:O_RDONLY:" for f in files])
    with Tool("opensnoop", "--json", "-p", str(w.pid)) as a, \
            Tool("opensnoop", "--json", "-x") as b:
        w.go()
        settle(0.5)
    seen_a = [(e["pid"], e["path"], e["err"]) for e in a.json() if e["path"] in files]
    seen_b = [(e["pid"], e["path"], e["err"]) for e in b.json() if e["path"] in files]
    assert seen_a == seen_b and len(seen_a) == 20
    assert a.json("summary")[0]["lost"] == 0 and b.json("summary")[0]["lost"] == 0


def test_two_execsnoops_see_the_same_events():
    tag = unique("twinexec")
    with Tool("execsnoop", "--json") as a, Tool("execsnoop", "--json", "-l", tag) as b:
        for i in range(10):
            subprocess.run(["/bin/echo", tag, str(i)], stdout=subprocess.DEVNULL, check=True)
        settle(0.5)
    seen = [[(e["pid"], tuple(e["argv"])) for e in t.json()
             if e["argv"][:2] == ["/bin/echo", tag]] for t in (a, b)]
    assert seen[0] == seen[1] and len(seen[0]) == 10


def test_two_probes_on_the_same_tracepoint(tmp_path):
    files = [str(tmp_path / unique("twinprobe")) for _ in range(10)]
    w = Workload("bpfp-twinprobe", *[f"open:{f}:O_RDONLY:" for f in files])
    spec = "t:syscalls:sys_enter_openat filename:string"
    with Tool("probe", "--json", spec) as a, Tool("probe", "--json", "-p", str(w.pid), spec) as b:
        w.go()
        settle(0.5)
    seen = [[e["args"]["filename"] for e in t.json() if e["args"]["filename"] in files]
            for t in (a, b)]
    assert seen[0] == seen[1] == files
