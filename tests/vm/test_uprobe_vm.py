"""The guest's own calling convention for uprobes: tests/host/probe_target.c built
in the guest by its gcc, its arguments read as $arg1..$arg3 (bpfprobes' arch
table), by the registers the test names itself (tooling.ARGS), and its $retval."""
from __future__ import annotations

import subprocess

import pytest

from tooling import ARGS, IN_VM, Tool, build_probe_target, settle, unique


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
