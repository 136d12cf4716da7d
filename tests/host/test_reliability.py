"""What production does to a tracer: kill -9, two instances at once, exits that
leave nothing of ours in the kernel."""
from __future__ import annotations

import signal
import time

import pytest

from tooling import Tool, Workload, dynamic_events, loaded_bpf_programs, settle, unique

OURS = {"opensnoop": ("tp_enter_open", "tp_enter_openat", "tp_exit_open", "kp_open", "kr_open")}


def ours_loaded(tool: str) -> list[str]:
    return [n for n in loaded_bpf_programs() if n in OURS[tool]]


@pytest.mark.parametrize("tool", sorted(OURS))
def test_programs_are_gone_after_exit(tool):
    t = Tool(tool, "--json").wait_live()
    assert ours_loaded(tool), "the live tool's programs should be visible to bpftool"
    assert t.stop(signal.SIGINT) == 0
    assert ours_loaded(tool) == []


@pytest.mark.parametrize("tool", sorted(OURS))
def test_after_sigkill_the_next_start_works(tool, tmp_path):
    events_before = dynamic_events()
    t = Tool(tool, "--json").wait_live()
    t.stop(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while ours_loaded(tool) and time.monotonic() < deadline:
        time.sleep(0.1)      # the kernel frees programs once the last fd closes
    assert ours_loaded(tool) == []
    assert dynamic_events() == events_before
    f = str(tmp_path / unique("again"))
    w = Workload("bpfp-again", f"open:{f}:O_RDONLY:")
    with Tool(tool, "--json", "-p", str(w.pid)) as again:
        w.go()
        settle()
    assert [e["path"] for e in again.json()] == [f]


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
