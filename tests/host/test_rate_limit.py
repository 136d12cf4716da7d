"""--rate-limit N[/cpu]: events over the limit are dropped in the kernel and
counted as throttled, never silently: for every tool, the events shown plus
those reported throttled (plus any reported lost) equal the calls the test
made, exactly; and the shown ones stay within the limit per second."""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from tooling import PYTHON, Tool, Workload, run_tool, settle, unique

TRUE = "/bin/true"


def accounted(t: Tool) -> tuple[int, int, int]:
    """(throttled, lost) from the summary, checked against the throttled/lost lines."""
    [s] = t.json("summary")
    assert s["throttled"] == sum(x["count"] for x in t.json("throttled"))
    assert s["lost"] == sum(x["count"] for x in t.json("lost"))
    return s["throttled"], s["lost"], t.json("meta")[0]["rate_limit"]["per_second"]


@pytest.mark.parametrize("limit", ["1000", "500/cpu"])
def test_opensnoop_shown_plus_throttled_is_every_open(tmp_path, limit):
    n = 5000
    prefix = str(tmp_path / unique("rate"))
    w = Workload("bpfp-rate", f"storm:{prefix}:{n}")
    with Tool("opensnoop", "--json", "-p", str(w.pid), "--rate-limit", limit) as t:
        started = time.monotonic()
        assert w.go() == [n]
        seconds = time.monotonic() - started
        settle(0.5)
    shown = sum(1 for e in t.json() if e["path"].startswith(prefix))
    throttled, lost, per_second = accounted(t)
    assert shown + throttled + lost == n, (shown, throttled, lost)
    assert throttled > 0 and lost == 0
    cpus = os.cpu_count() if limit.endswith("/cpu") else 1
    # at most one limit's worth per CPU per second the storm touched (whole seconds)
    assert per_second <= shown <= per_second * cpus * (int(seconds) + 2), (shown, seconds)
    assert t.json("meta")[0]["rate_limit"]["per_cpu"] == limit.endswith("/cpu")


def test_the_limit_holds_second_after_second(tmp_path):
    """300 opens a second for 3.2 s under --rate-limit 100, started just after a
    turn of the kernel's clock second: the run touches 4 of its seconds, 0.95 s
    of the first and 2 whole ones (100 shown each), 0.25 s of a 4th (at most
    100), the rest throttled, every one accounted for."""
    prefix = str(tmp_path / unique("paced"))
    w = Workload("bpfp-paced", f"paced:{prefix}:30:3.2")
    with Tool("opensnoop", "--json", "-p", str(w.pid), "--rate-limit", "100") as t:
        [n] = w.go()
        settle(0.5)
    shown = [e for e in t.json() if e["path"].startswith(prefix)]
    throttled, lost, _ = accounted(t)
    assert len(shown) + throttled + lost == n and lost == 0
    assert throttled > 0 and 300 <= len(shown) <= 400 + 2, (n, len(shown))


def test_execsnoop_fork_storm_shown_plus_throttled(tmp_path):
    n, tag = 200, unique("rateexec")
    script = (f"import os\nfor i in range({n}):\n"
              f"    pid = os.fork()\n"
              f"    if pid == 0:\n        os.execv('{TRUE}', ['{TRUE}', '{tag}', str(i)])\n"
              f"    os.waitpid(pid, 0)\n")
    parent = subprocess.Popen([PYTHON, "-c", f"import sys; sys.stdin.readline()\n{script}"],
                              stdin=subprocess.PIPE, text=True)
    # 200 execs take well under 10 s even on a loaded machine: over 20 a second
    with Tool("execsnoop", "--json", "-P", str(parent.pid), "--rate-limit", "20") as t:
        parent.communicate("go\n", timeout=120)
        settle(0.5)
    shown = sum(1 for e in t.json() if tag in e["argv"])
    throttled, lost, _ = accounted(t)
    assert shown + throttled + lost == n and throttled > 0, (shown, throttled, lost)
    assert shown >= 20


def test_probe_uprobe_shown_plus_throttled(tmp_path):
    src = os.path.join(os.path.dirname(__file__), "probe_target.c")
    exe = str(tmp_path / "probe_target")
    subprocess.run(["gcc", "-O0", "-o", exe, src], check=True)
    iterations = 400
    target = subprocess.Popen([exe, unique("tag"), str(iterations), "0", "/nonexistent"],
                              stdin=subprocess.PIPE, text=True)
    with Tool("probe", "--json", "-p", str(target.pid), "--rate-limit", "100",
              f"p:{exe}:echo x=$arg1:s64") as t:
        target.communicate("go\n", timeout=60)
        settle(0.5)
    shown = sum(1 for e in t.json() if e["probe"] == "echo")
    throttled, lost, _ = accounted(t)
    assert shown + throttled + lost == 2 * iterations, (shown, throttled, lost)
    assert 100 <= shown <= 300 and throttled > 0


def test_text_mode_reports_throttled_on_stderr(tmp_path):
    prefix = str(tmp_path / unique("ratetext"))
    w = Workload("bpfp-ratetext", f"storm:{prefix}:300")
    with Tool("opensnoop", "-p", str(w.pid), "--rate-limit", "10") as t:
        w.go()
        settle(0.5)
    assert any(ln.startswith("opensnoop: throttled ") and "over --rate-limit" in ln
               for ln in t.err), t.err
    m = re.search(r"opensnoop: (\d+) events, (\d+) lost, .*, throttled (\d+)$", t.err[-1])
    assert m and sum(int(x) for x in m.groups()) == 300, t.err[-1]
    assert len([ln for ln in t.lines[1:] if prefix in ln]) == int(m.group(1))


@pytest.mark.parametrize("value, words", [("0", "at least 1"), ("x", "whole number"),
                                          ("5/node", "N or N/cpu")])
def test_bad_rate_limit(value, words):
    r = run_tool("opensnoop", "--rate-limit", value)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr
