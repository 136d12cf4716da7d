"""bpfprobes irq with real kprobes in the VM: the virtio block disk (vda, a
scratch disk boot.py gives the VM) resolved to its MSI-X lines and to its
handler function by name (vring_interrupt, virtio_pci's per-queue handler),
kprobed with a kernel stack per event, while the test writes to the disk
with O_DIRECT and fsync. One tracer, one BCC compile (~35 s emulated)."""
from __future__ import annotations

import json
import time

import pytest

from tooling import IN_VM, Tool, Workload, leftovers, run_tool, settle

from bpfprobes.kernel import interrupts


@pytest.fixture(scope="module")
def run():
    if not IN_VM:
        return None
    w = Workload("bpfp-vmdio", "diskio:/dev/vda:100")
    t = Tool("irq", "vda", "-s", "--json", "-v", live_timeout=600).wait_live()
    meta = t.meta()
    irqs = meta["device"]["irqs"]
    settle(0.5)
    # the window in bpf_ktime_get_ns()'s own clock (CLOCK_MONOTONIC), read inside the
    # two /proc/interrupts reads: an event's wall time is mapped through an offset
    # taken when the tool started, and that mapping drifts in an emulated guest
    before = {n: interrupts.read_lines()[n].total for n in irqs}
    t0 = time.monotonic_ns()
    assert w.go() == [100]
    t1 = time.monotonic_ns()
    after = {n: interrupts.read_lines()[n].total for n in irqs}
    settle(1.5)
    t.stop(timeout=60)
    return {"tool": t, "meta": meta, "before": before, "after": after, "events": t.json(),
            "window": (t0, t1)}


def test_handler_found_by_name_and_kprobed(run):
    m = run["meta"]
    assert m["device"]["name"] == "vda" and m["device"]["driver"] == "virtio_blk"
    assert m["attach"] == "kprobe"
    lines = interrupts.read_lines()
    queues = [n for n in m["device"]["irqs"] if "-req." in lines[n].name]
    assert queues and all(m["handlers"][str(n)] == "vring_interrupt" for n in queues)
    assert "kprobe vring_interrupt" in m["probes"] and "kretprobe vring_interrupt" in m["probes"]
    assert "handler vring_interrupt" in run["tool"].stderr


def test_events_have_the_handler_its_stack_and_hardirq_context(run):
    mine = [e for e in run["events"] if e["handler"] == "vring_interrupt"]
    assert len(mine) >= 100, len(mine)      # a write and a flush per iteration
    for e in mine:
        assert e["ret"] == "IRQ_HANDLED" and e["duration_ns"] > 0
        c = e["context"]
        # Debian's kernel lists per-CPU symbols in kallsyms: preempt_count is read
        assert c["source"] == "preempt_count" and c["context"] == "hardirq", c
        assert c["flags"][0] == "d" and c["flags"][2] in "hH"
        if "stack" not in e:
            # the stack map's hash bucket was taken by another stack: said, not hidden
            assert e["stack_error"] == "EEXIST", e
            continue
        assert e["stack"][0].startswith("vring_interrupt")
        assert any("handle_irq_event" in f for f in e["stack"]), e["stack"]
    assert sum("stack" in e for e in mine) > len(mine) // 2


def test_counts_equal_the_proc_interrupts_delta(run):
    """Handler runs counted by the kprobe == /proc/interrupts over the window (±2)."""
    t0, t1 = run["window"]
    for n in run["before"]:
        delta = run["after"][n] - run["before"][n]
        seen = sum(1 for e in run["events"] if e["irq"] == n and t0 <= e["ts_ns"] <= t1)
        outside = sum(1 for e in run["events"] if e["irq"] == n and not t0 <= e["ts_ns"] <= t1)
        assert delta - 2 <= seen <= delta + 2, (n, seen, delta, outside)


def test_tasklet_schedule_kprobe_attaches_and_leaves_nothing():
    """--tasklet-schedule: a kprobe on __tasklet_schedule reading tasklet_struct.func
    at its BTF offset. Nothing in this VM schedules tasklets on demand, so this
    checks the program compiles, attaches, reports and detaches cleanly."""
    if not IN_VM:
        return
    r = run_tool("irq", "--tasklet-schedule", "-s", "--json", "-d", "1", timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[0]["probes"] == ["kprobe __tasklet_schedule"] and lines[0]["tasklet_schedule"]
    assert lines[-1]["type"] == "summary" and lines[-1]["reason"] == "duration"
    for e in lines[1:-1]:
        assert e["kind"] == "tasklet_schedule" and e["handler"] and e["stack"]
    # nothing of this run left: the programs it held and its kprobe events, by id and name
    assert r.held.progs and leftovers(r.pid, r.held) == []
