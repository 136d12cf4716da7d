"""bpfprobes irq --hist with real kprobes in the VM: the virtio disk's handler
(vring_interrupt, kprobed) timed into histograms in the kernel while the test
writes to the disk; every handler run is a bucket's count, none an event."""
from __future__ import annotations

import pytest

from tooling import IN_VM, Tool, Workload


@pytest.fixture(scope="module")
def run():
    if not IN_VM:
        return None
    w = Workload("bpfp-vmhist", "diskio:/dev/vda:100")
    t = Tool("irq", "vda", "--hist", "--json", "--unit", "ns", live_timeout=600).wait_live()
    assert w.go() == [100]
    t.stop(timeout=60)
    return t


def test_the_kprobed_handler_runs_are_in_histograms(run):
    assert run.proc.returncode == 0 and not run.json("event")
    [meta] = run.json("meta")
    assert "kprobe vring_interrupt" in meta["probes"]
    rows = [r for total in run.json("totals") for r in total["rows"]]
    calls = sum(b["count"] for r in rows for b in r["buckets"])
    assert calls >= 100, rows                  # a write and a flush per iteration, at least
    assert all(r["kind"] == "hardirq" and r["unit"] == "ns" for r in rows)
