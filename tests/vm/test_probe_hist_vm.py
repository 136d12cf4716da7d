"""probe --hist with real kprobes in the VM: vfs_read's latency and return value
bucketed in the kernel for a workload of N one-byte preads (N calls, each
returning 1; and the workload's read of its "go\n" from stdin, 3 bytes)."""
from __future__ import annotations

import pytest

from tooling import IN_VM, ROOT, Tool, Workload

N = 300


@pytest.fixture(scope="module")
def run():
    if not IN_VM:
        return None
    w = Workload("bpfp-vmhist", f"read:{ROOT / 'README.md'}:{N}")
    t = Tool("probe", "--hist", "--json", "-p", str(w.pid), "p:vfs_read", "r:vfs_read",
             live_timeout=600).wait_live()
    assert w.go() == [N]
    t.stop(timeout=120)
    w2 = Workload("bpfp-vmhist2", f"read:{ROOT / 'README.md'}:{N}")
    t2 = Tool("probe", "--hist", "--hist-of", "ret", "--json", "-p", str(w2.pid),
              "r:vfs_read ret=$retval", live_timeout=600).wait_live()
    assert w2.go() == [N]
    t2.stop(timeout=120)
    return {"latency": t, "ret": t2}


def rows(t: Tool) -> dict:
    return {r["probe"]: r for total in t.json("totals") for r in total["rows"]}


def test_every_read_is_in_the_latency_histogram(run):
    got = rows(run["latency"])["vfs_read__return"]
    assert got["unit"] == "us" and N <= sum(b["count"] for b in got["buckets"]) <= N + 1


def test_every_one_byte_read_returns_into_bucket_one(run):
    got = {b["min"]: b["count"] for b in rows(run["ret"])["vfs_read"]["buckets"]}
    assert got[1] == N and sum(got.values()) - N <= 1, got      # [1]; at most "go\n" in [2, 4)
