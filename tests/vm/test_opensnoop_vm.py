"""opensnoop's kprobe path on a kernel with kprobes: kprobe + kretprobe on the
syscall entry symbols, arguments read through the arch table's syscall
registers from the user pt_regs, the fd at return. One compile (~25 s here)."""
from __future__ import annotations

import os

import pytest

from tooling import IN_VM, Tool, Workload, leftovers, settle, unique

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not IN_VM:
        return None
    d = tmp_path_factory.mktemp("vmopens")
    spaced = d / f"{unique()} é ü space.txt"
    spaced.write_text("x")
    deep = d
    for i in range(5):
        deep = deep / (f"{i}" * 240)
    deep.mkdir(parents=True)
    long_file = deep / f"{unique()}.txt"
    long_file.write_text("x")
    paths = {"spaced": str(spaced), "long": str(long_file), "missing": str(d / unique("nope")),
             "created": str(d / unique("created"))}
    (d / "sub").mkdir()
    paths["dir"] = os.path.realpath(d)
    # -F: absolute paths as given, relative ones from the cwd or openat's dirfd (the
    # walk up the dentries checked by this kernel's verifier too)
    w = Workload("bpfp-vmopen", f"open:{paths['spaced']}:O_RDONLY:",
                 f"open:{paths['long']}:O_RDONLY:", f"open:{paths['missing']}:O_RDONLY:",
                 f"open:{paths['created']}:O_WRONLY|O_CREAT:0640",
                 f"openat2:{paths['spaced']}:O_RDONLY:", f"chdir:{d}",
                 "open:relative-one:O_RDONLY:", f"openat:{d / 'sub'}:relative-two")
    with Tool("opensnoop", "--json", "-v", "-F", "-p", str(w.pid), live_timeout=300) as t:
        held = t.held()
        results = w.go()
        settle(1.0)
    return {"tool": t, "held": held, "paths": paths, "results": results, "pid": w.pid,
            "events": [e for e in t.json() if e["pid"] == w.pid]}


def find(run, path, syscall="openat"):
    hits = [e for e in run["events"] if e["path"] == path and e["syscall"] == syscall]
    assert len(hits) == 1, (path, run["events"])
    return hits[0]


def test_verbose_says_kprobes_were_used(run):
    assert "opensnoop: attach kprobe: kprobes available" in run["tool"].stderr
    [meta] = run["tool"].json("meta")
    assert meta["attach"] == "kprobe"
    assert any(p.startswith("kretprobe __x64_sys_openat") or p.startswith("kretprobe ")
               for p in meta["probes"])
    assert any("openat2" in p for p in meta["probes"])


def test_filename_and_fd_through_the_arch_registers(run):
    e = find(run, run["paths"]["spaced"])
    assert e["fd"] == run["results"][0] >= 3 and e["comm"] == "bpfp-vmopen"
    assert e["tid"] == run["pid"]


def test_long_path_whole(run):
    e = find(run, run["paths"]["long"])
    assert len(e["path"]) > 1000 and not e["truncated"]


def test_enoent(run):
    e = find(run, run["paths"]["missing"])
    assert (e["fd"], e["err"]) == (-1, 2)


def test_flags_and_mode_fourth_syscall_register(run):
    """openat's mode is the 4th syscall argument: r10 on x86_64, not cx."""
    e = find(run, run["paths"]["created"])
    assert e["mode"] == 0o640
    assert e["flags"] & (os.O_WRONLY | os.O_CREAT) == os.O_WRONLY | os.O_CREAT


def test_openat2(run):
    e = find(run, run["paths"]["spaced"], "openat2")
    assert e["fd"] == run["results"][4]


def test_exit_leaves_nothing_attached(run):
    assert run["tool"].proc.returncode == 0
    assert run["held"].progs and leftovers(run["tool"].proc.pid, run["held"]) == []


def test_full_path_of_relative_opens(run):
    base = run["paths"]["dir"]
    assert find(run, f"{base}/relative-one")["fd"] == -1
    assert find(run, f"{base}/sub/relative-two")["err"] == 2


@pytest.fixture(scope="module")
def cached_runs(tmp_path_factory):
    """opensnoop twice on an empty program cache: compiled (in a child), saved, then
    loaded with bpf(2) and read without BCC's compile (on arm64 by libbcc's reader)."""
    if not IN_VM:
        return None
    d = tmp_path_factory.mktemp("vmcache")
    out = []
    for _ in range(2):
        path = str(d / unique("cached"))
        w = Workload("bpfp-vmcache", f"open:{path}:O_WRONLY|O_CREAT:0640")
        with Tool("opensnoop", "--json", "-p", str(w.pid), live_timeout=300,
                  env={"BPFPROBES_CACHE": str(d / "cache")}) as t:
            [fd] = w.go()
            settle(0.5)
        out.append({"meta": t.json("meta")[0], "path": path, "fd": fd, "pid": w.pid,
                    "events": [e for e in t.json() if e["path"] == path]})
    return out


def test_the_second_start_loads_the_cached_program_and_sees_its_own_open(cached_runs):
    assert [r["meta"]["program"] for r in cached_runs] == ["compiled", "cached"]
    for r in cached_runs:
        [e] = r["events"]
        assert (e["pid"], e["comm"], e["fd"]) == (r["pid"], "bpfp-vmcache", r["fd"]), r
