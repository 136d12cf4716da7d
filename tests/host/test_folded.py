"""probe --folded on this kernel: stacks counted in the kernel, printed folded at
exit, checked against call chains the test caused (tests/host/stack_target.c:
a() -> b() -> c() N times, a() -> c() M times), the process gone by the end."""
from __future__ import annotations

import pytest

from tooling import StackTarget, Tool, Workload, build_probe_target, run_tool, unique

N, M = 3000, 2000


@pytest.fixture(scope="module", params=["-O0", "-O1"])
def stack_bin(request, tmp_path_factory) -> str:
    """-O0: c() starts with push %rbp (kernels since 6.12 then add the caller
    themselves); -O1: c() is a leaf without a frame, which no kernel fixes up."""
    return build_probe_target(tmp_path_factory.mktemp("stacks"), request.param,
                              "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls",
                              name="stack_target")


def folded(lines: list[str]) -> dict[tuple[str, ...], int]:
    """{frames: count} of folded lines `a;b;c COUNT`."""
    out = {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out[tuple(stack.split(";"))] = out.get(tuple(stack.split(";")), 0) + int(count)
    return out


def ending(stacks: dict, root: str, *tail: str) -> int:
    return sum(n for frames, n in stacks.items()
               if frames[0] == root and frames[-len(tail):] == tail)


def run_target(stack_bin: str, *options: str, spec: str = "c") -> tuple[Tool, StackTarget]:
    """The tool on c() (or `spec`), the target run to its end and exited, the tool
    stopped."""
    target = StackTarget(stack_bin, N, M)
    try:
        with Tool("probe", "--folded", "--verbose", *options, f"p:{stack_bin}:{spec}") as t:
            target.go()
            # the tool keeps the maps when it first sees the process; then it may go
            assert t.wait_until(lambda: f"maps of pid {target.pid} kept" in t.stderr), t.stderr
            assert target.release() == 0
    finally:
        target.kill()
    return t, target


def test_stacks_at_a_functions_first_instruction_have_its_caller(stack_bin):
    t, _ = run_target(stack_bin)
    stacks = folded(t.lines)
    assert ending(stacks, "stack_target", "main", "a", "b", "c") == N, stacks
    assert ending(stacks, "stack_target", "main", "a", "c") == M, stacks
    assert sum(n for frames, n in stacks.items() if frames[0] == "stack_target") == N + M
    assert f"{N + M} events, 0 lost" in t.stderr


def test_recursion_keeps_every_frame(stack_bin):
    """r(2) -> r(1) -> r(0), probed at r: the caller put back is the same address as
    the next frame of the walk, and must still be put back (or kept out where the
    kernel put it there itself)."""
    t, _ = run_target(stack_bin, spec="r")
    stacks = folded(t.lines)
    for depth in (1, 2, 3):
        assert ending(stacks, "stack_target", "main", *["r"] * depth) == M, (depth, stacks)
    assert sum(n for f, n in stacks.items() if f[0] == "stack_target") == 3 * M, stacks
    assert not any(f[-5:] == ("r",) * 5 for f in stacks), stacks


def test_a_function_entry_by_file_offset_has_its_caller(stack_bin):
    from bpfprobes.kernel.elfsym import Elf
    with Elf(stack_bin) as elf:
        offset = elf.symbol_offset("c")
    t, _ = run_target(stack_bin, spec=f"{offset:#x}")
    stacks = folded(t.lines)
    assert ending(stacks, "stack_target", "main", "a", "b", "c") == N, stacks
    assert ending(stacks, "stack_target", "main", "a", "c") == M, stacks


def test_json_rows_hold_the_frames_outermost_first(stack_bin):
    t, _ = run_target(stack_bin, "--json")
    rows = [r for line in t.json("folded") for r in line["rows"]]
    ours = {tuple(r["stack"][-4:]): r["count"] for r in rows if r["stack"][0] == "stack_target"}
    assert ours.get(("main", "a", "b", "c")) == N and ours.get(("a", "c")) is None, rows
    assert sum(n for k, n in ours.items() if k[-3:] == ("main", "a", "c")) == M, rows
    assert t.json("summary")[0]["events"] >= N + M


def test_kernel_and_user_stacks_of_a_tracepoint(tmp_path):
    """A syscall tracepoint: the user frame in libc, then the kernel's entry path."""
    data = tmp_path / "data"
    data.write_bytes(b"x")
    comm, gone = unique("fold")[:15], tmp_path / "go-on"
    w = Workload(comm, f"read:{data}:700", f"waitfor:{gone}")
    with Tool("probe", "--folded", "--verbose", "-s", "-U", "-p", str(w.pid),
              "t:syscalls:sys_enter_pread64") as t:
        w.proc.stdin.write("go\n")
        w.proc.stdin.flush()
        assert t.wait_until(lambda: f"maps of pid {w.pid} kept" in t.stderr), t.stderr
        gone.touch()
        assert w.go() == [700, 0]
    stacks = folded(t.lines)
    mine = {frames: n for frames, n in stacks.items() if frames[0] == comm}
    assert sum(mine.values()) == 700 and set(mine) == set(stacks), stacks
    for frames in mine:         # user frames, then the kernel's from its syscall entry
        entry = next(i for i, f in enumerate(frames) if f.startswith("entry_SYSCALL"))
        assert "pread" in frames[entry - 1] and "do_syscall_64" in frames[entry:], frames


def test_folded_refuses_what_it_cannot_go_with():
    for extra in (["--hist"], ["--count"], ["-n", "5"], ["--summary"],
                  ["--backend", "tracefs"]):
        r = run_tool("probe", "--folded", *extra, "p:/bin/true:main")
        assert r.returncode == 2 and "--folded" in r.stderr and "Traceback" not in r.stderr, r
        assert not r.held.progs


EXEC_AFTER = r"""
#include <unistd.h>
__attribute__((noinline, noipa, used)) void probed(void) {}
int main(void) { probed(); execl("/bin/cat", "cat", (char *)0); return 1; }
"""


def test_a_process_that_execs_is_never_named_from_its_new_program(tmp_path):
    """The first sight is read after the process exec'd (the tool stopped meanwhile):
    its maps are the new program's, so its frames stay unnamed and are counted."""
    import os
    import signal
    import subprocess
    import time
    src = tmp_path / "ex.c"
    src.write_text(EXEC_AFTER)
    binary = tmp_path / "ex"
    subprocess.run(["gcc", "-O0", "-fno-omit-frame-pointer", "-o", str(binary), str(src)],
                   check=True)
    with Tool("probe", "--folded", "--verbose", f"p:{binary}:probed") as t:
        t.pause()
        proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30       # until it runs cat, not our program
            while os.readlink(f"/proc/{proc.pid}/exe") != "/usr/bin/cat":
                assert time.monotonic() < deadline
                time.sleep(0.01)
            t.resume()
            assert t.wait_until(lambda: f"maps of pid {proc.pid} not read" in t.stderr), \
                t.stderr
        finally:
            proc.stdin.close()
            proc.wait(30)
            t.resume()
        t.stop(signal.SIGINT)
    stacks = folded(t.lines)
    mine = {f: n for f, n in stacks.items() if f[0] == "ex"}
    assert sum(mine.values()) == 1, stacks
    assert all(set(f[1:]) <= {"[unknown]"} for f in mine), mine     # no name of cat's
    assert "stacks_unnamed 1" in t.stderr, t.stderr
