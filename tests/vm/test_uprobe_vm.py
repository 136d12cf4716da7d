"""The guest's own calling convention for uprobes: tests/host/probe_target.c built
in the guest by its gcc, its arguments read as $arg1..$arg3 (bpfprobes' arch
table), by the registers the test names itself (tooling.ARGS), and its $retval.
Then the program cache there: the same kprobe tracer twice on an empty cache,
compiled and then loaded from the cache, each seeing the file the test opened
(the cache takes kprobes and tracepoints; uprobes are compiled each time). A
cached program is read by perfring's direct reader, offered on TSO CPUs only
(x86_64: Python cannot issue the read barrier arm64 needs), so on arm64 both
runs compile."""
from __future__ import annotations

import os
import subprocess

import pytest

from tooling import ARGS, IN_VM, Tool, Workload, build_probe_target, settle, unique


@pytest.fixture(scope="module")
def uprobes(tmp_path_factory):
    if not IN_VM:
        return None
    d = tmp_path_factory.mktemp("vmuprobe")
    b = build_probe_target(d, "-O1", "-g")
    tag = unique("tag")
    target = subprocess.Popen([b, tag, "2", "1000", f"/tmp/{unique('missing')}"],
                              stdin=subprocess.PIPE, text=True)
    t = Tool("probe", "--json", "-p", str(target.pid),
             f"p:{b}:three a=$arg1:s64 b=$arg2:s64 s=+0($arg3):string",
             f"p:regs {b}:three a={ARGS[0]}:s64 b={ARGS[1]}:s64 s=+0({ARGS[2]}):string",
             f"r:{b}:three ret=$retval:s64",
             f"r:{b}:fails ret=$retval", live_timeout=600).wait_live()
    target.communicate("go\n", timeout=120)
    settle(0.5)
    rc = t.stop(timeout=120)
    return {"tool": t, "rc": rc, "tag": tag,
            "events": [e for e in t.json() if e["pid"] == target.pid]}


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    if not IN_VM:
        return None
    d = tmp_path_factory.mktemp("vmcache")
    out = []
    for _ in range(2):
        path = str(d / unique("cached"))
        w = Workload("bpfp-vmcache", f"open:{path}:O_WRONLY|O_CREAT:0640")
        t = Tool("probe", "--json", "-p", str(w.pid), "p:do_sys_openat2 file=+0($arg2):string",
                 live_timeout=600, env={"BPFPROBES_CACHE": str(d / "cache")}).wait_live()
        w.go()
        settle(0.5)
        t.stop(timeout=120)
        out.append({"meta": t.json("meta")[0], "path": path,
                    "files": [e["args"]["file"] for e in t.json() if e["pid"] == w.pid]})
    return out


def args_of(run, probe: str) -> list[dict]:
    return [e["args"] for e in run["events"] if e["probe"] == probe]


def test_args_by_number_and_by_register(uprobes):
    assert uprobes["rc"] == 0, uprobes["tool"].stderr
    want = {"a": -7, "b": 8, "s": uprobes["tag"]}
    assert args_of(uprobes, "three") == [want] * 2, uprobes["events"]
    assert args_of(uprobes, "regs") == [want] * 2, uprobes["events"]


def test_retval(uprobes):
    assert args_of(uprobes, "three__return") == [{"ret": 1 + len(uprobes["tag"])}] * 2
    fails = [e for e in uprobes["events"] if e["probe"] == "fails"]   # a return probe alone
    assert [(e["args"]["ret"], e["errno"]["ret"]) for e in fails] == [(-2, "ENOENT")] * 2
    assert {e["comm"] for e in uprobes["events"]} == {"probe_target"}


def test_second_run_loads_the_cached_program(cached):
    second = "cached" if os.uname().machine == "x86_64" else "compiled"
    assert [r["meta"]["program"] for r in cached] == ["compiled", second]
    assert all(r["path"] in r["files"] for r in cached), cached
