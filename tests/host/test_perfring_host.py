"""perfring's direct readers and progcache's loader on this kernel, with exact counts.

The opensnoop program, filtered in the kernel to one workload process, does N
opens of its own path; every one of them must come out as a sample or be
counted lost: captured + lost == N, with the perf buffer and with the BPF ring
buffer, with a ring that overflows and with one that does not.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tooling import PYTHON, ROOT, Workload, unique

from bpfprobes.backends.bpf import perfbuffer, perfring, progcache
from bpfprobes.gen import codegen
from bpfprobes.kernel.running import current
from bpfprobes.plan import runconfig
from bpfprobes.present.decode import open_event
from bpfprobes.session import loop
from bpfprobes.tools import opensnoop

N = 20000


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(progcache, "DIR", tmp_path / "programs")
    return tmp_path / "programs"


def program_for(pid: int, ringbuf: bool, pages: int):
    k = current()
    _, attaches, defs = opensnoop._plan(opensnoop.Options(), k)
    defs.update({"INFLIGHT_MAX": opensnoop.INFLIGHT_MAX})
    if ringbuf:
        defs.update(perfbuffer.output_defines(pages))
    config = runconfig.pack(runconfig.OPENSNOOP, runconfig.task(pid=pid))
    return codegen.ready_tool("opensnoop", defs, config), attaches, k


def storm(tmp_path, ringbuf: bool, pages: int, n: int = N,
          direct: bool | None = None) -> tuple[int, int, str, set[int]]:
    """Run a workload of n opens under the program: (captured, lost, origin, pids seen)."""
    prefix = str(tmp_path / unique("ring"))
    w = Workload("bpfp-ring", f"storm:{prefix}:{n}")
    program, attaches, k = program_for(w.pid, ringbuf, pages)
    seen: list[bytes] = []
    with progcache.load(program, k.headers, attaches) as loaded:
        transport = perfbuffer.PerfBuffer(loaded, pages=pages, direct=direct)
        transport.open(loop.Gate(lambda raw: seen.append(raw) or True, None))
        for a in attaches:
            loaded.attach(a)
        w.go()          # the whole storm runs before the first read: a 1-page ring surely overflows
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            transport.poll(50)
            transport.drain()
        lost = transport.lost
        transport.close()
    events = [open_event(raw) for raw in seen]
    captured = sum(1 for e in events if e["path"].startswith(prefix))
    return captured, lost, getattr(loaded, "origin", "bcc"), {e["pid"] for e in events}


needs_ringbuf = pytest.mark.skipif(not perfring.ringbuf_supported(),
                                   reason="no BPF ring buffer on this kernel")


@pytest.mark.parametrize("ringbuf", [False, pytest.param(True, marks=needs_ringbuf)],
                         ids=["perf", "ringbuf"])
def test_a_big_buffer_captures_every_open(tmp_path, cache_dir, ringbuf):
    captured, lost, _, pids = storm(tmp_path, ringbuf, pages=1024)
    assert (captured, lost) == (N, 0)
    assert len(pids) == 1                    # the config's pid filter


@pytest.mark.parametrize("ringbuf", [False, pytest.param(True, marks=needs_ringbuf)],
                         ids=["perf", "ringbuf"])
def test_an_overflowing_buffer_counts_every_loss(tmp_path, cache_dir, ringbuf):
    captured, lost, _, _ = storm(tmp_path, ringbuf, pages=1)
    assert captured + lost == N, (captured, lost)
    assert lost > 0, "a 1-page buffer should overflow in this storm"


def test_the_second_start_loads_from_the_cache_with_its_own_settings(tmp_path, cache_dir):
    first = storm(tmp_path, True, pages=256, n=2000)
    second = storm(tmp_path, True, pages=256, n=2000)  # another workload: another pid filter
    assert first[2] == "compiled" and second[2] == "cached"
    assert first[:2] == second[:2] == (2000, 0)
    assert first[3] != second[3]                        # each saw its own workload only
    assert len(list(cache_dir.glob("*.json"))) == 1


def test_a_cached_program_is_read_by_libbccs_reader_where_the_direct_one_is_not(
        tmp_path, cache_dir):
    """arm64's path (no direct reader there: Python has no read barrier), taken here."""
    first = storm(tmp_path, False, pages=256, n=2000, direct=False)
    second = storm(tmp_path, False, pages=256, n=2000, direct=False)
    assert (first[2], second[2]) == ("compiled", "cached")
    assert first[:2] == second[:2] == (2000, 0)
    assert first[3] != second[3] and len(second[3]) == 1


def test_a_cached_start_never_imports_bcc(tmp_path):
    """The point of the cache: no BCC, no LLVM in the process (time and memory)."""
    cache = tmp_path / "cache"
    cmd = [PYTHON, "-m", "bpfprobes.cli.main", "opensnoop", "-d", "0.3"]
    env = {"BPFPROBES_CACHE": str(cache), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    probe = ("import runpy, sys; sys.argv = ['opensnoop', 'opensnoop', '-v', '-d', '0.3']\n"
             "try:\n    runpy.run_module('bpfprobes.cli.main', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('bcc imported' if 'bcc' in sys.modules else 'no bcc', file=sys.stderr)")
    out = subprocess.run([PYTHON, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert "(program cached)" in out.stderr and "no bcc" in out.stderr, out.stderr


def test_a_cache_file_others_can_write_is_not_trusted(tmp_path, cache_dir):
    storm(tmp_path, True, pages=256, n=100)
    [entry] = cache_dir.glob("*.json")
    entry.chmod(0o666)
    assert progcache._read(entry) is None
    entry.chmod(0o600)
    assert progcache._read(entry) is not None


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
