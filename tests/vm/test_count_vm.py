"""bpfprobes count with real kprobes in the VM: `count 'vfs_*'` on a known
workload (N one-byte preads: N calls of vfs_read), one BCC compile."""
from __future__ import annotations

import pytest

from tooling import IN_VM, ROOT, Tool, Workload, settle

N = 200


@pytest.fixture(scope="module")
def run():
    if not IN_VM:
        return None
    w = Workload("bpfp-vmcount", f"read:{ROOT / 'README.md'}:{N}")
    t = Tool("count", "--json", "-v", "-p", str(w.pid), "vfs_*", live_timeout=600).wait_live()
    meta = t.meta()
    assert w.go() == [N]
    settle(1.0)
    t.stop(timeout=120)
    [table] = t.json("totals")
    return {"meta": meta, "rows": {r["target"]: r["count"] for r in table["rows"]}, "tool": t}


def test_wildcard_attached_many_kernel_functions(run):
    assert run["meta"]["targets"] >= 20
    assert "attached kprobe vfs_read" in run["tool"].stderr


def test_vfs_read_counted_once_per_read(run):
    assert N <= run["rows"]["vfs_read"] <= N + 1, run["rows"]
    assert "vfs_write" not in run["rows"] or run["rows"]["vfs_write"] < N
