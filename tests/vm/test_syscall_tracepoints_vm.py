"""opensnoop's and execsnoop's tracepoint paths on the VM's kernel (what a kernel
without kprobes gets; on arm64 the syscalls:* tracepoints, which take no pt_regs
of the arch table): the events this test causes, with pid, comm, result, the
full path and the argv. One compile per tool."""
from __future__ import annotations

import os
import subprocess

import pytest

from tooling import IN_VM, Tool, Workload, settle, unique


@pytest.fixture(scope="module")
def opens(tmp_path_factory):
    if not IN_VM:
        return None
    d = tmp_path_factory.mktemp("vmtpopen")
    there, missing = d / unique("there"), d / unique("missing")
    there.write_text("x")
    w = Workload("bpfp-vmtpopen", f"open:{there}:O_RDONLY:", f"open:{missing}:O_RDONLY:",
                 f"chdir:{d}", f"open:{there.name}:O_RDONLY:")
    with Tool("opensnoop", "--json", "-F", "--attach", "tracepoint", "-p", str(w.pid),
              live_timeout=600) as t:
        results = w.go()
        settle(1.0)
    return {"tool": t, "there": str(os.path.realpath(there)), "missing": str(missing),
            "results": results, "pid": w.pid,
            "events": [e for e in t.json() if e["pid"] == w.pid]}


@pytest.fixture(scope="module")
def execs():
    if not IN_VM:
        return None
    tag = unique("vmtpexec")
    with Tool("execsnoop", "--json", "-x", "--attach", "tracepoint", "-l", tag,
              live_timeout=600) as t:
        ok = subprocess.Popen(["/bin/true", tag, "with space"])
        ok.wait()
        with pytest.raises(FileNotFoundError):
            subprocess.run([f"/nonexistent/{tag}"])
        settle(1.0)
    return {"tool": t, "tag": tag, "pid": ok.pid,
            "events": [e for e in t.json() if tag in " ".join(e["argv"])]}


def test_opensnoop_tracepoint_path(opens):
    [meta] = opens["tool"].json("meta")
    assert meta["attach"] == "tracepoint", meta
    got = [(e["path"], e["fd"], e["err"], e["comm"]) for e in opens["events"]
           if e["path"] in (opens["there"], opens["missing"])]
    assert got == [(opens["there"], opens["results"][0], 0, "bpfp-vmtpopen"),
                   (opens["missing"], -1, 2, "bpfp-vmtpopen"),
                   (opens["there"], opens["results"][-1], 0, "bpfp-vmtpopen")], got


def test_execsnoop_tracepoint_path(execs):
    [meta] = execs["tool"].json("meta")
    assert meta["attach"] == "tracepoint", meta
    ok = [e for e in execs["events"] if e["pid"] == execs["pid"]]
    assert [(e["argv"], e["ret"], e["comm"], e["ppid"]) for e in ok] == \
        [(["/bin/true", execs["tag"], "with space"], 0, "true", os.getpid())], execs["events"]
    bad = [e for e in execs["events"] if e["ret"] != 0]
    assert [(e["argv"], e["ret"]) for e in bad] == [([f"/nonexistent/{execs['tag']}"], -2)]
