"""probe --backend tracefs with real kprobes and kretprobes in the VM: the same
specs and the same workload as the BPF backend, one after the other, give the
same events; nothing of ours is left in kprobe_events or instances/."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tooling import ARGS, IN_VM, ROOT, Tool, Workload, leftovers, run_tool, settle, unique

pytestmark = pytest.mark.smoke

# the filename is the 2nd argument: %si on x86_64, %x1 on arm64 (tooling.ARGS); the
# same read as $arg2 through bpfprobes' arch table, and by name through BTF
SPECS = (f"p:do_sys_openat2 file=+0({ARGS[1] if ARGS else ''}):string",
         "r:do_sys_openat2 ret=$retval",
         "p:arg2 do_sys_openat2 file=+0($arg2):string",
         "p:btf do_sys_openat2 filename:string")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not IN_VM:
        return None
    d = tmp_path_factory.mktemp("vmtracefs")
    out = {}
    for backend in ("bpf", "tracefs"):
        created = str(d / unique(f"created-{backend}"))
        missing = str(ROOT / f".{unique('missing')}")
        w = Workload("bpfp-vmtfs", f"open:{created}:O_WRONLY|O_CREAT:0640",
                     f"open:{missing}:O_RDONLY:")
        t = Tool("probe", "--json", "--backend", backend, "-p", str(w.pid), *SPECS,
                 live_timeout=600).wait_live()
        held = t.held()
        results = w.go()
        settle(1.0)
        t.stop(timeout=120)
        # the workload's own two opens, as (probe, what) in order
        names = {created: "created", missing: "missing"}
        events = []
        # in time order: the BPF backend reads its rings a CPU at a time, so a return on
        # a CPU read before the entry's CPU is printed first
        for e in sorted(t.json(), key=lambda e: e["ts_ns"]):
            if e["probe"] == "do_sys_openat2" and e["args"]["file"] in names:
                events.append(("open", names[e["args"]["file"]]))
            elif e["probe"] == "do_sys_openat2__return" and events and events[-1][0] == "open":
                events.append(("return", e["args"]["ret"], (e.get("errno") or {}).get("ret")))
        # the same reads spelled through the arch table and through BTF
        others = {p: [names.get(e["args"].get("file", e["args"].get("filename")))
                      for e in sorted(t.json(), key=lambda e: e["ts_ns"]) if e["probe"] == p]
                  for p in ("arg2", "btf")}
        out[backend] = {"tool": t, "held": held, "events": events, "results": results, "pid": w.pid,
                        "meta": t.json("meta")[0], "others": others}
    out["after"] = {b: leftovers(out[b]["tool"].proc.pid, out[b]["held"])
                    for b in ("bpf", "tracefs")}
    return out


def test_tracefs_backend_used_its_own_instance(runs):
    m = runs["tracefs"]["meta"]
    token = Path(m["instance"]).name.removeprefix("bpfprobes-")     # the run's token, no PID
    assert m["backend"] == "tracefs" and len(token) == 16 and not token.isdigit()
    assert m["events"][0].startswith(f"p:bpfprobes_{token}/")
    assert f"+0({ARGS[1]}):string" in m["events"][0], m["events"]
    assert m["events"][1].startswith(f"r:bpfprobes_{token}/") and "$retval" in m["events"][1]


def test_same_events_as_the_bpf_backend(runs):
    fd = runs["tracefs"]["results"][0]
    assert runs["tracefs"]["events"] == [("open", "created"), ("return", fd, None),
                                         ("open", "missing"), ("return", -2, "ENOENT")]
    bfd = runs["bpf"]["results"][0]
    assert runs["bpf"]["events"] == [("open", "created"), ("return", bfd, None),
                                     ("open", "missing"), ("return", -2, "ENOENT")]


def test_arch_table_and_btf_read_the_same_argument(runs):
    """$arg2 through bpfprobes' arch table, `filename` through BTF: the same paths
    as the register the test names itself (a swapped table entry fails here)."""
    for backend in ("bpf", "tracefs"):
        got = runs[backend]["others"]
        assert [n for n in got["arg2"] if n] == ["created", "missing"], (backend, got)
        assert [n for n in got["btf"] if n] == ["created", "missing"], (backend, got)


def test_another_architectures_register_is_refused(vm_kernel):
    """%si is x86_64's: on arm64 the error names %x1, and the reverse on x86_64."""
    if not IN_VM:
        return
    wrong, right = {"x86_64": ("%x1", "%si"), "aarch64": ("%si", "%x1")}[os.uname().machine]
    r = run_tool("probe", f"p:do_sys_openat2 file=+0({wrong}):string", timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    first = r.stderr.splitlines()[0]
    assert f"{wrong} is not" in first and f"argument 2 is {right}" in first, first


def test_context_from_the_ftrace_columns(runs):
    for e in runs["tracefs"]["tool"].json():
        c = e["context"]
        assert c["source"] == "ftrace" and c["context"] == "task", c


def test_nothing_left_behind(runs):
    """By what each run held (program ids, its token), never by name."""
    assert runs["bpf"]["held"].progs and runs["tracefs"]["held"].tokens
    assert runs["after"] == {"bpf": [], "tracefs": []}
