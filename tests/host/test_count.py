"""bpfprobes count (and probe --count): calls counted in the kernel, exactly as
many as the test made, on tracepoints and uprobes (no kprobes here)."""
from __future__ import annotations

import json
import subprocess

import pytest

from tooling import Tool, Workload, run_tool, settle, unique





def totals(t: Tool) -> dict:
    [table] = t.json("totals")
    return {(r["target"], r.get("pid"), r.get("comm")): r["count"] for r in table["rows"]}


def test_tracepoint_count_equals_the_opens_made(tmp_path):
    n = 2000
    w = Workload("bpfp-count", f"storm:{tmp_path / unique('c')}:{n}")
    with Tool("count", "--json", "-p", str(w.pid), "t:syscalls:sys_enter_openat") as t:
        assert w.go() == [n]
        settle()
    assert totals(t) == {("syscalls:sys_enter_openat", None, None): n}
    [s] = t.json("summary")
    assert s["events"] == n and s["lost"] == 0


def test_by_comm_separates_processes(tmp_path):
    a, b = unique("bpfp-ca")[:15], unique("bpfp-cb")[:15]
    wa = Workload(a, f"storm:{tmp_path / 'a'}:300")
    wb = Workload(b, f"storm:{tmp_path / 'b'}:700")
    with Tool("count", "--json", "--by", "pid,comm", "t:syscalls:sys_enter_openat") as t:
        wa.go()
        wb.go()
        settle()
    got = totals(t)
    assert got[("syscalls:sys_enter_openat", wa.pid, a)] == 300
    assert got[("syscalls:sys_enter_openat", wb.pid, b)] == 700


def start_target(binary: str, iterations: int) -> subprocess.Popen:
    return subprocess.Popen([binary, unique("tag"), str(iterations), "0", "/nonexistent"],
                            stdin=subprocess.PIPE, text=True)


def test_uprobe_wildcard_counts_each_function(target_bin):
    target = start_target(target_bin, 50)
    with Tool("count", "--json", "-p", str(target.pid), f"p:{target_bin}:ech*",
              f"p:{target_bin}:f6") as t:
        target.communicate("go\n", timeout=60)
        settle()
    got = totals(t)
    assert got == {(f"{target_bin}:echo", None, None): 100, (f"{target_bin}:f6", None, None): 50}


def test_probe_count_uses_the_probe_specs(target_bin):
    target = start_target(target_bin, 30)
    with Tool("probe", "--count", "--json", "-p", str(target.pid),
              f"p:{target_bin}:echo x=$arg1", f"p:{target_bin}:three") as t:
        target.communicate("go\n", timeout=60)
        settle()
    assert totals(t) == {("echo", None, None): 60, ("three", None, None): 30}


def test_intervals_add_up_to_the_totals(tmp_path):
    w = Workload("bpfp-cint", f"paced:{tmp_path / 'p'}:20:1.5")
    with Tool("count", "--json", "-i", "0.5", "-p", str(w.pid),
              "t:syscalls:sys_enter_openat") as t:
        [n] = w.go()
        settle(0.8)
    intervals = t.json("interval")
    assert len(intervals) >= 3
    assert sum(r["count"] for i in intervals for r in i["rows"]) <= n
    assert totals(t)[("syscalls:sys_enter_openat", None, None)] == n


def test_text_table(tmp_path):
    w = Workload("bpfp-ctext", f"storm:{tmp_path / 'x'}:10")
    with Tool("count", "-p", str(w.pid), "t:syscalls:sys_enter_openat") as t:
        w.go()
        settle()
    assert t.lines[0].startswith("Counting 1 targets (syscalls:sys_enter_openat)")
    row = next(ln for ln in t.lines if ln.startswith("syscalls:sys_enter_openat"))
    assert row.split()[1] == "10"
    assert "bpfprobes count: 10 calls, 0 lost" in t.stderr


def test_limit_and_force():
    r = run_tool("count", "--limit", "3", "-d", "0.3", "t:syscalls:sys_enter_open*")
    assert r.returncode == 2 and "more than 3" in r.stderr and "Traceback" not in r.stderr
    r = run_tool("count", "--limit", "3", "--force", "--json", "-d", "0.3",
                 "t:syscalls:sys_enter_open*")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["targets"] > 3


@pytest.mark.parametrize("args, status, words", [
    (["vfs_*"], 1, "cannot count kernel functions"),
    (["t:nosuch:*"], 2, "matches nothing"),
    (["t:syscalls"], 2, "a tracepoint is t:CATEGORY:EVENT"),
    (["p:/no/such/bin:main"], 1, "cannot read /no/such/bin"),
    (["--by", "uid", "t:sched:*"], 2, "invalid choice"),
])
def test_bad_input(args, status, words):
    r = run_tool("count", *args)
    assert r.returncode == status, r.stderr
    assert words in r.stderr.splitlines()[0] and "Traceback" not in r.stderr
