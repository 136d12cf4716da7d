"""What production does to a tracer: kill -9, two instances at once, exits that
leave nothing of ours in the kernel."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tooling import Tool, Workload, dynamic_events, loaded_bpf_programs, settle, unique

# each tool's BPF program names (as bpftool shows them) and the arguments it runs with
OURS = {"opensnoop": ("tp_enter_open", "tp_enter_openat", "tp_exit_open", "tp_raw_sys_exit",
                      "kp_open", "kr_open"),
        "execsnoop": ("tp_enter_execve", "tp_exit_exec", "kp_execve", "kr_exec"),
        "probe": ("probe_0",)}
ARGS = {"opensnoop": [], "execsnoop": [], "probe": ["t:syscalls:sys_enter_openat filename:string"]}


def ours_loaded(tool: str) -> list[str]:
    return [n for n in loaded_bpf_programs() if n in OURS[tool]]


def start(tool: str, *extra: str) -> Tool:
    return Tool(tool, "--json", *extra, *ARGS[tool]).wait_live()


@pytest.mark.parametrize("tool", sorted(OURS))
def test_programs_are_gone_after_exit(tool):
    t = start(tool)
    assert ours_loaded(tool), "the live tool's programs should be visible to bpftool"
    assert t.stop(signal.SIGINT) == 0
    assert ours_loaded(tool) == []


@pytest.mark.parametrize("tool", sorted(OURS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_at_rest_exits_within_2s_with_summary(tool, sig):
    t = start(tool)
    began = time.monotonic()
    assert t.stop(sig) == 0
    assert time.monotonic() - began < 2.0
    [summary] = t.json("summary")
    assert summary["reason"] == f"signal:{signal.Signals(sig).name}"
    assert ours_loaded(tool) == [] and "Traceback" not in t.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_storm(sig, tmp_path):
    prefix = str(tmp_path / unique("midstorm"))
    w = Workload("bpfp-midstorm", f"storm:{prefix}:400000")
    t = start("opensnoop", "-p", str(w.pid))
    w.proc.stdin.write("go\n")
    w.proc.stdin.flush()
    time.sleep(0.5)                      # well inside the storm
    began = time.monotonic()
    assert t.stop(sig) == 0
    assert time.monotonic() - began < 2.0
    [summary] = t.json("summary")
    assert summary["reason"] == f"signal:{signal.Signals(sig).name}" and summary["events"] > 0
    assert ours_loaded("opensnoop") == []
    w.proc.kill()
    w.proc.wait()


@pytest.mark.parametrize("tool", ["execsnoop", "probe"])
def test_duration_and_event_limit(tool):
    r = Tool(tool, "--json", "-d", "1", *ARGS[tool])
    assert r.wait(30) == 0 and r.json("summary")[0]["reason"] == "duration"
    limit = ["-n", "2"] if tool == "probe" else ["--max-events", "2"]
    r = Tool(tool, "--json", *limit, *ARGS[tool]).wait_live()
    for _ in range(50):                  # execs and opens of our own to count
        if r.proc.poll() is not None:
            break
        subprocess.run(["/bin/true"])
        time.sleep(0.1)
    assert r.wait(10) == 0
    assert len(r.json()) == 2 and r.json("summary")[0]["reason"] == "max-events"


def test_probe_storm_captured_plus_lost_is_exact(tmp_path):
    n = 30000
    prefix = str(tmp_path / unique("pstorm"))
    w = Workload("bpfp-pstorm", f"storm:{prefix}:{n}")
    t = Tool("probe", "--json", "-p", str(w.pid), "--buffer-pages", "1",
             "t:syscalls:sys_enter_openat filename:string").wait_live()
    w.go()
    settle(0.5)
    t.stop()
    captured = sum(1 for e in t.json() if str(e["args"]["filename"]).startswith(prefix))
    lost = sum(x["count"] for x in t.json("lost"))
    assert t.json("summary")[0]["lost"] == lost
    assert captured + lost == n, (captured, lost)


@pytest.mark.parametrize("tool", sorted(OURS))
def test_after_sigkill_the_next_start_works(tool, tmp_path):
    events_before = dynamic_events()
    t = start(tool)
    t.stop(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while ours_loaded(tool) and time.monotonic() < deadline:
        time.sleep(0.1)      # the kernel frees programs once the last fd closes
    assert ours_loaded(tool) == []
    assert dynamic_events() == events_before
    again = start(tool)
    assert ours_loaded(tool)
    assert again.stop() == 0 and ours_loaded(tool) == []


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
