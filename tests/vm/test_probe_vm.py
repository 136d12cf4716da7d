"""`bpfprobes probe` with real kprobes and kretprobes, in the VM. Every spec runs in
ONE tracer (one BCC compile, ~50 s under emulation): a kprobe by register, its
kretprobe (paired: latency), the BTF-named form with $comm and @SYM, a function in
a module and its return, kernel stacks. Then what must be refused, and what must
be gone after exit."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tooling import (ARGS, IN_VM, ROOT, SYSCALL_ENTRY_FRAME, Tool, Workload, dynamic_events,
                     run_tool, settle, unique)

COMM = "bpfp-vmprobe"
# @SYM reads a global: jiffies where kallsyms lists variables; Debian's arm64 kernel
# lists functions only (CONFIG_KALLSYMS_ALL off), so there the word at a function
KALLSYMS = Path("/proc/kallsyms").read_text() if IN_VM else ""
DATA = re.search(r"^\w+ [dD] jiffies_64$", KALLSYMS, re.M) is not None
SYM = "jiffies:u64" if DATA else "do_sys_openat2:u32"
SPECS = (f"p:do_sys_openat2 file=+0({ARGS[1] if ARGS else ''}):string",
         "r:do_sys_openat2 ret=$retval",
         f"p:btf do_sys_openat2 filename:string dfd c=$comm j=@{SYM}",
         "p:9pnet_virtio:p9_virtio_request",
         "r:9pnet_virtio:p9_virtio_request ret=$retval:s32")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not IN_VM:
        return None
    d = tmp_path_factory.mktemp("vmprobe")
    created = str(d / unique("created"))
    missing = str(ROOT / f".{unique('missing')}")        # on the 9p root: a lookup goes out
    w = Workload(COMM, f"open:{created}:O_WRONLY|O_CREAT:0640", f"open:{missing}:O_RDONLY:")
    t = Tool("probe", "--json", "--verbose", "-s", "--summary", "--context", "-p", str(w.pid),
             *SPECS,
             live_timeout=600).wait_live()
    during = dynamic_events()
    results = w.go()
    settle(1.5)
    rc = t.stop(timeout=120)
    events = [e for e in t.json() if e["pid"] == w.pid]
    return {"tool": t, "rc": rc, "created": created, "missing": missing, "results": results,
            "events": events, "pid": w.pid, "during": during, "after": dynamic_events()}


def of(run, probe: str, **args) -> list[dict]:
    return [e for e in run["events"] if e["probe"] == probe and
            all(e["args"].get(k) == v for k, v in args.items())]


def returned_after(run, entry: dict) -> dict:
    rets = [e for e in run["events"] if e["probe"] == "do_sys_openat2__return"
            and e["tid"] == entry["tid"] and e["ts_ns"] > entry["ts_ns"]]
    return min(rets, key=lambda e: e["ts_ns"])


def test_kprobe_by_register_sees_the_file(run):
    assert run["rc"] == 0, run["tool"].stderr
    (entry,) = of(run, "do_sys_openat2", file=run["created"])
    assert entry["comm"] == COMM and entry["tid"] == run["pid"]
    assert entry["where"] == "do_sys_openat2+0x0"


def test_kretprobe_gives_the_fd_with_latency(run):
    (entry,) = of(run, "do_sys_openat2", file=run["created"])
    ret = returned_after(run, entry)
    assert ret["args"]["ret"] == run["results"][0] >= 3
    assert 0 < ret["latency_ns"] < 10**10
    assert re.match(r"__\w+_sys_open", ret["caller"]), ret       # the syscall wrapper called it


def test_errno_named_on_failure(run):
    (entry,) = of(run, "do_sys_openat2", file=run["missing"])
    ret = returned_after(run, entry)
    assert ret["args"]["ret"] == run["results"][1] == -2
    assert ret["errno"] == {"ret": "ENOENT"}


def test_btf_named_form_gives_the_same(run):
    (e,) = of(run, "btf", filename=run["created"])
    assert e["args"]["dfd"] == -100                               # AT_FDCWD, typed s32 by BTF
    assert e["args"]["c"] == COMM and e["args"]["j"] > 0          # $comm, @SYM


def test_kernel_stack_has_the_syscall_path(run):
    (entry,) = of(run, "do_sys_openat2", file=run["created"])
    frames = " ".join(entry["kstack"])
    assert SYSCALL_ENTRY_FRAME in frames, entry["kstack"]
    # the syscall wrapper that called it: a frame on x86_64. On arm64 the unwinder starts
    # at the caller's caller at a function's first instruction (lr not saved yet); the
    # event's caller is lr, unless this function's kretprobe ran first and put its
    # trampoline there (then there is no caller: never a wrong one)
    if os.uname().machine == "x86_64":
        assert re.search(r"__\w+_sys_open", frames), entry["kstack"]
    else:
        assert re.match(r"__\w+_sys_open", entry.get("caller", "__arm64_sys_open")), entry
    assert "trampoline" not in frames


def test_context_read_from_preempt_count(run):
    """--context: Debian's kernel lists per-CPU symbols, so the probe reads the
    CPU's preempt_count: a syscall's kprobe runs in the task, bottom halves on."""
    opens = of(run, "do_sys_openat2", file=run["created"])
    assert opens
    for e in opens:
        c = e["context"]
        assert (c["source"], c["context"], c["bh_off"], c["cpu"]) == \
            ("preempt_count", "task", False, e["cpu"]), c
        assert c["preempt"] is not None and c["flags"][2] == "."


def test_module_function_and_its_return(run):
    calls = of(run, "p9_virtio_request")
    assert calls, sorted({e["probe"] for e in run["events"]})
    assert calls[0]["where"] == "p9_virtio_request+0x0 [9pnet_virtio]"
    assert any("[9pnet]" in f for f in calls[0]["kstack"]), calls[0]["kstack"]
    rets = of(run, "p9_virtio_request__return")
    assert rets and all(isinstance(e["args"]["ret"], int) for e in rets)


def test_kretprobes_registered_with_maxactive_and_misses_counted(run):
    pid = run["tool"].proc.pid
    assert re.search(rf"^r\d+:kprobes/r_do_sys_openat2_bcc_{pid} do_sys_openat2$",
                     run["during"], re.M), run["during"]
    (summary,) = run["tool"].json("summary")
    assert summary["kretprobe_misses"] == 0 and summary["lost"] == 0
    rows = {r["probe"]: r for r in summary["probes"]}
    assert rows["do_sys_openat2__return"]["latency_ns"]["max"] > 0


def test_nothing_left_in_kprobe_events(run):
    assert f"_bcc_{run['tool'].proc.pid}" not in run["after"]


def test_blacklisted_function_refused():
    if not IN_VM:
        return
    names = [ln.split()[1] for ln in
             Path("/sys/kernel/debug/kprobes/blacklist").read_text().splitlines() if ln.split()]
    kallsyms = Path("/proc/kallsyms").read_text()
    name = next(n for n in names if re.search(rf" [tT] {re.escape(n)}$", kallsyms, re.M))
    r = run_tool("probe", f"p:{name}", timeout=300)
    assert r.returncode == 1, r.stderr
    assert f"{name} is in the kernel's kprobe blacklist" in r.stderr.splitlines()[0]


def test_missing_kernel_function_refused():
    if not IN_VM:
        return
    r = run_tool("probe", "p:do_sys_openat3", timeout=300)
    assert r.returncode == 1 and "not a kernel function" in r.stderr


def test_a_variable_where_kallsyms_lists_functions_only():
    """@jiffies_64 reads where kallsyms has variables; where it has none, one line says why."""
    if not IN_VM:
        return
    r = run_tool("probe", "--dry-run", "p:do_sys_openat2 j=@jiffies_64:u64", timeout=300)
    if DATA:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.splitlines()[0].endswith("@jiffies_64: no such symbol in /proc/kallsyms")
        assert "CONFIG_KALLSYMS_ALL is not set" in r.stderr, r.stderr
