"""Uprobe targets as the peers name them, on this kernel: a program on PATH
(`bash:main`), a library by short name (`libc:usleep`, `c:usleep`), the library a
process really mapped (`-p PID`), a relative path in `count` (one grammar for
probe, count and session files), and the rule's order (a kernel module's name
stays a kernel module's). Each run checks the events its own workload caused."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tooling import ROOT, Tool, run_tool, unique

N = 40
USLEEPS = N + 1             # probe_target naps N times, then sleeps once more before exiting


@pytest.fixture
def target(target_bin) -> Path:
    return Path(target_bin)           # conftest's probe_target, built once a session


def start_target(exe: Path) -> subprocess.Popen:
    """probe_target waiting for its go (so a tracer can attach to its pid first)."""
    return subprocess.Popen([str(exe), unique("t"), str(N), "100", "/nonexistent"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def go(proc: subprocess.Popen) -> None:
    proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0


def test_a_program_on_path_by_name():
    """`p:bash:main`: bash found on PATH; a bash the test starts is the event."""
    with Tool("probe", "--json", "--verbose", "p:bash:main") as t:
        bash = subprocess.Popen(["bash", "-c", "exit 0"])
        bash.wait(30)
        assert t.wait_until(lambda: any(e["pid"] == bash.pid for e in t.json()), 30)
    mine = [e for e in t.json() if e["pid"] == bash.pid]
    assert len(mine) == 1 and mine[0]["comm"] == "bash" and mine[0]["probe"] == "main"
    assert any("bash: the program on PATH" in line and "(no kernel module bash)" in line
               for line in t.err), t.stderr


@pytest.mark.parametrize("name", ["libc", "c", "libc.so.6"])
def test_a_library_by_short_name(target, name):
    proc = start_target(target)
    try:
        with Tool("probe", "--json", "-p", str(proc.pid), f"p:{name}:usleep") as t:
            go(proc)
            assert t.wait_until(lambda: len(t.json()) >= USLEEPS, 30)
    finally:
        proc.kill()
    events = t.json()
    assert len(events) == USLEEPS and {e["pid"] for e in events} == {proc.pid}


def test_with_pid_the_library_that_process_mapped(target):
    """-p PID: libc as that process mapped it, through /proc/PID/root (its mount
    namespace: a container's libc, not ours)."""
    proc = start_target(target)
    try:
        with Tool("probe", "--json", "--verbose", "-p", str(proc.pid), "p:libc:usleep") as t:
            go(proc)
            assert t.wait_until(lambda: len(t.json()) >= USLEEPS, 30)
    finally:
        proc.kill()
    assert any(f"libc: mapped by process {proc.pid}, /proc/{proc.pid}/root/" in line
               for line in t.err), t.stderr
    assert len(t.json()) == USLEEPS


def test_count_takes_names_and_relative_paths(target):
    """One target grammar: count's patterns take libc:FUNC and a relative path."""
    relative = os.path.relpath(target, ROOT)         # the tools run in ROOT
    assert not relative.startswith("/")
    for pattern, calls in ((f"p:{relative}:nap", N), ("libc:usleep", USLEEPS)):
        proc = start_target(target)
        try:
            with Tool("count", "--json", "-p", str(proc.pid), pattern) as t:
                go(proc)
        finally:
            proc.kill()
        [table] = t.json("totals")
        assert [r["count"] for r in table["rows"]] == [calls], (pattern, table)


def test_a_name_that_is_nothing_is_one_line():
    r = run_tool("probe", "p:bpfp_no_such_binary:main")
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == (
        "bpfprobes probe: error: 'bpfp_no_such_binary' is no kernel module, no program on "
        "PATH and no library in the loader's cache")
    assert not r.held.progs


def test_a_kernel_modules_name_stays_a_kernel_target(tmp_path):
    """The rule's first step: a name in /sys/module is a module (a kprobe), even with
    a program of that name first on PATH."""
    module = sorted(p.name for p in Path("/sys/module").iterdir())[0]
    (tmp_path / module).write_bytes(Path("/bin/true").read_bytes())
    (tmp_path / module).chmod(0o755)
    r = run_tool("probe", "--verbose", f"p:{module}:bpfp_no_such_function",
                 env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert r.returncode in (1, 2)
    # a kernel target's error (no kprobes here, or no such function), never the program's
    assert "kprobe" in r.stderr or "not a kernel function" in r.stderr, r.stderr
    assert str(tmp_path) not in r.stderr, r.stderr


def test_with_pid_a_process_in_another_mount_namespace(tmp_path, target):
    """The file the process runs in its own mount namespace, not the one at that path
    here: outside, the path holds /bin/true (no `nap`); inside, the probe target."""
    prog = tmp_path / "nsprog"
    prog.write_bytes(Path("/bin/true").read_bytes())
    prog.chmod(0o755)
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                             f'mount --bind "$1" "$2" && exec "$2" t {N} 100 /nonexistent',
                             "sh", str(target), str(prog)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        # wait until it runs the probe target (its maps hold nap's file), then trace
        assert _wait(lambda: "nsprog" in Path(f"/proc/{proc.pid}/maps").read_text()
                     and Path(f"/proc/{proc.pid}/exe").resolve().name == "nsprog")
        with Tool("probe", "--json", "--verbose", "-p", str(proc.pid), "p:nsprog:nap") as t:
            go(proc)
            assert t.wait_until(lambda: len(t.json()) >= N, 30)
    finally:
        proc.kill()
    assert len(t.json()) == N, t.stderr
    assert any(f"nsprog: mapped by process {proc.pid}, /proc/{proc.pid}/root{prog}" in line
               for line in t.err), t.stderr


def test_with_pid_a_file_replaced_since_it_was_mapped(tmp_path, target):
    """Replaced on disk (a new inode at the path): the mapping is still the old file,
    and that is the one the process runs."""
    prog = tmp_path / "replaced"
    prog.write_bytes(target.read_bytes())
    prog.chmod(0o755)
    proc = start_target(prog)
    try:
        fresh = tmp_path / "fresh"
        fresh.write_bytes(Path("/bin/true").read_bytes())
        fresh.rename(prog)                       # what an upgrade does
        with Tool("probe", "--json", "--verbose", "-p", str(proc.pid), "p:replaced:nap") as t:
            go(proc)
            assert t.wait_until(lambda: len(t.json()) >= N, 30)
    finally:
        proc.kill()
    assert len(t.json()) == N
    assert any(f"/proc/{proc.pid}/map_files/" in line for line in t.err), t.stderr


def _wait(ready, timeout: float = 10.0) -> bool:
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return True
        except OSError:
            pass
        time.sleep(0.02)
    return False
