"""execsnoop's kprobe path on a kernel with kprobes: kprobe + kretprobe on the
execve and execveat entry symbols, argv read through the arch table's syscall
registers from the user pt_regs, the result at return. One compile (~25 s
here): the tool runs once for the module, the tests check what it saw."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tooling import EXECVEAT, SYS_EXECVEAT, IN_VM, Tool, settle, unique

pytestmark = pytest.mark.smoke

TRUE = "/bin/true"
THREAD_EXEC = ("import os, sys, threading\n"
               "threading.Thread(target=lambda: os.execv('/bin/true', sys.argv[1:])).start()\n"
               "threading.Event().wait()\n")


def spaced(tag: str, count: int) -> list[str]:
    shapes = ("with space", 'dq"uote', "sq'uote", "ünïcødé €", "back\\slash", "", "tab\there")
    return [f"{tag}:{i}:{shapes[i % 7]}" if i % 7 != 5 else "" for i in range(count)]


def run(argv: list[str]) -> int:
    p = subprocess.Popen(argv)
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    if not IN_VM:
        return None
    tag = unique("vmexec")
    empty = tmp_path_factory.mktemp("vmexec")
    nr = str(SYS_EXECVEAT[os.uname().machine])
    pids = {}
    with Tool("execsnoop", "--json", "-v", "-x", "--max-args", "30", "-l", tag,
              live_timeout=300) as tool:
        pids["25"] = run([TRUE, *spaced(tag, 24)])
        pids["35"] = run([TRUE, *spaced(tag, 34)])
        pids["long"] = run([TRUE, tag, "L" * 9000, "after"])
        with pytest.raises(FileNotFoundError):
            subprocess.run([f"/nonexistent/{tag}", "x"])
        pids["at"] = run([sys.executable, "-c", EXECVEAT, "/bin", nr, "true", tag, "at ok"])
        pids["at-fail"] = run([sys.executable, "-c", EXECVEAT, str(empty), nr, "true", tag])
        pids["thread"] = run([sys.executable, "-c", THREAD_EXEC, "true", tag, "thread"])
        sh = subprocess.Popen(["/bin/sh", "-c", f"{TRUE} {tag} grandchild; exit 0"])
        sh.wait()
        pids["sh"] = sh.pid
        settle(1.0)
    assert tool.json("meta"), f"execsnoop did not start: {tool.stderr}"
    events = [e for e in tool.json() if "bpfprobes.cli.main" not in e["argv"]]
    return {"tool": tool, "tag": tag, "pids": pids, "events": events}


def one(session, **match) -> dict:
    hits = [e for e in session["events"] if all(e[k] == v for k, v in match.items())]
    assert len(hits) == 1, (match, session["events"])
    return hits[0]


def test_verbose_says_kprobes_were_used(session):
    err = session["tool"].stderr
    assert "execsnoop: attach kprobe: kprobes available" in err
    assert "parent PIDs from BTF" in err
    [meta] = session["tool"].json("meta")
    assert meta["attach"] == "kprobe"
    assert {"kprobe __x64_sys_execve", "kretprobe __x64_sys_execve",
            "kprobe __x64_sys_execveat", "kretprobe __x64_sys_execveat"} <= set(meta["probes"]) \
        or os.uname().machine != "x86_64"


def test_25_arguments_intact(session):
    e = one(session, pid=session["pids"]["25"])
    assert e["argv"] == [TRUE, *spaced(session["tag"], 24)]
    assert (e["comm"], e["ret"], e["syscall"], e["truncated"]) == ("true", 0, "execve", False)
    assert (e["ppid"], e["tid"]) == (os.getpid(), e["pid"])


def test_truncation_marked(session):
    many = one(session, pid=session["pids"]["35"])
    assert many["argv"] == [TRUE, *spaced(session["tag"], 29)]
    assert many["truncation"] == ["max-args"]
    cut = one(session, pid=session["pids"]["long"])
    assert cut["argv"] == [TRUE, session["tag"], "L" * 8191, "after"]
    assert cut["cut_args"] == [2] and cut["truncation"] == ["arg-cut"]


def test_failed_exec_is_minus_2(session):
    e = one(session, ret=-2, syscall="execve")
    assert e["argv"] == [f"/nonexistent/{session['tag']}", "x"]
    assert (e["errno"], e["ppid"]) == ("ENOENT", os.getpid())


def test_execveat(session):
    ok = one(session, pid=session["pids"]["at"], syscall="execveat")
    assert (ok["argv"], ok["ret"], ok["comm"]) == (["true", session["tag"], "at ok"], 0, "true")
    bad = one(session, pid=session["pids"]["at-fail"], syscall="execveat")
    assert (bad["argv"], bad["ret"]) == (["true", session["tag"]], -2)


def test_exec_from_a_thread(session):
    """The exec'ing thread becomes the leader: found at return all the same."""
    e = one(session, pid=session["pids"]["thread"], comm="true")
    assert e["argv"] == ["true", session["tag"], "thread"] and e["tid"] != e["pid"]


def test_ppid_of_a_grandchild(session):
    e = one(session, ppid=session["pids"]["sh"])
    assert e["argv"] == [TRUE, session["tag"], "grandchild"] and e["comm"] == "true"
