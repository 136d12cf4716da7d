"""--folded with real kprobes in the VM (Debian's 6.1: its uprobes do not add the
caller at a function's entry, so the stacks of c() need bpfprobes to put it back,
and of the recursive r() too, where the caller is the same address as the frame
the walk gives next)."""
from __future__ import annotations

import pytest

from tooling import IN_VM, ROOT, StackTarget, Tool, Workload, build_probe_target

N, M, READS = 300, 200, 250


def folded(lines: list[str]) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out[tuple(stack.split(";"))] = out.get(tuple(stack.split(";")), 0) + int(count)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not IN_VM:
        return None
    binary = build_probe_target(tmp_path_factory.mktemp("vmstacks"), "-O0",
                                "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls",
                                name="stack_target")
    target = StackTarget(binary, N, M)
    try:
        with Tool("probe", "--folded", "--verbose", f"p:{binary}:c", f"p:{binary}:r",
                  live_timeout=600) as user:
            target.go()
            assert user.wait_until(lambda: f"maps of pid {target.pid} kept" in user.stderr)
            assert target.release() == 0
    finally:
        target.kill()
    w = Workload("bpfp-vmfold", f"read:{ROOT / 'README.md'}:{READS}")
    with Tool("probe", "--folded", "--verbose", "-p", str(w.pid), "p:vfs_read",
              live_timeout=600) as kernel:
        assert w.go() == [READS]
    return {"user": folded(user.lines), "kernel": folded(kernel.lines)}


def test_uprobe_stacks_have_the_caller_the_walk_skips(runs):
    got = runs["user"]
    assert sum(n for f, n in got.items() if f[0] == "stack_target" and
               f[-4:] == ("main", "a", "b", "c")) == N, got
    assert sum(n for f, n in got.items() if f[0] == "stack_target" and
               f[-3:] == ("main", "a", "c")) == M, got


def test_kprobe_stacks_of_every_read(runs):
    got = {f: n for f, n in runs["kernel"].items() if f[0] == "bpfp-vmfold"}
    # the preads, and the workload's read of "go\n" from its stdin
    assert READS <= sum(got.values()) <= READS + 1, got
    preads = [f for f, n in got.items() if n >= READS]
    assert len(preads) == 1 and preads[0][-1] == "vfs_read", got
    assert any("pread64" in f for f in preads[0]), preads


def test_recursion_keeps_every_frame(runs):
    got = runs["user"]
    for depth in (1, 2, 3):
        assert sum(n for f, n in got.items() if f[0] == "stack_target" and
                   f[-depth - 1:] == ("main", *["r"] * depth)) == M, (depth, got)
