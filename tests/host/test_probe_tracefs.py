"""probe --backend tracefs: the kernel's own uprobe_events in an instance of ours
(no kprobes here: the VM tier does kprobes). Same events as the BPF backend,
our leftovers cleaned, other users of tracefs untouched."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from pathlib import Path


from tooling import Tool, leftovers, run_tool, settle, tracefs_objects_of, unique

TRACEFS = Path("/sys/kernel/tracing")




def start_target(binary: str, iterations: int, tag: str) -> subprocess.Popen:
    return subprocess.Popen([binary, tag, str(iterations), "0", "/nonexistent"],
                            stdin=subprocess.PIPE, text=True)


def specs(b: str) -> list[str]:
    return [f"p:{b}:three a=$arg1:s32 b=$arg2:u32 s=+0($arg3):string",
            f"r:{b}:fails ret=$retval:s64", f"p:{b}:echo x=$arg1:x64"]


def test_same_events_as_the_bpf_backend(target_bin):
    """One after the other on the same workload: on this kernel a uprobe_events
    probe cannot be enabled at an address where a perf-attached uprobe sits
    (EINVAL), so the two backends cannot watch one function at once."""
    tag = unique('tag "quoted" and spaced')
    got = {}
    for backend in ("bpf", "tracefs"):
        target = start_target(target_bin, 3, tag)
        with Tool("probe", "--json", "--backend", backend, "-p", str(target.pid),
                  *specs(target_bin)) as t:
            target.stdin.write("go\n")
            target.stdin.close()
            # the target is not reaped until its events are read: ftrace's comm
            # cache may not know it ("<...>"), and the tool then reads /proc/TID/comm,
            # which a zombie still has
            t.wait_until(lambda: len(t.json()) >= 3 * 4)
        assert target.wait(60) == 0
        assert t.json("meta")[0].get("backend", "bpf") == backend
        got[backend] = [(e["probe"], e["pid"] == target.pid, e["tid"] == target.pid, e["comm"],
                         e["args"], e.get("errno")) for e in t.json()]
        if backend == "tracefs":
            assert all(e["where"] for e in t.json())
    assert len(got["bpf"]) == 3 * 4 and got["bpf"] == got["tracefs"]
    assert ("three", True, True, "probe_target", {"a": -7, "b": 8, "s": tag}, None) \
        in got["tracefs"]
    assert ("fails", True, True, "probe_target", {"ret": -2}, {"ret": "ENOENT"}) \
        in got["tracefs"]


def ours() -> tuple[str, list[str]]:
    return (TRACEFS / "uprobe_events").read_text(), \
        [d.name for d in (TRACEFS / "instances").iterdir() if d.name.startswith("bpfprobes-")]


def test_a_killed_runs_events_are_cleaned_by_the_next_start(target_bin):
    t = Tool("probe", "--json", "--backend", "tracefs", f"p:{target_bin}:echo").wait_live()
    # this run's own objects, as its meta line names them (other runs may be live)
    meta = t.meta()
    instance = Path(meta["instance"]).name
    group = meta["events"][0].split()[0].split(":", 1)[1].split("/")[0] + "/"
    events, instances = ours()
    assert group in events and instance in instances
    t.stop(signal.SIGKILL)
    events, instances = ours()
    assert group in events and instance in instances      # what SIGKILL leaves behind
    r = run_tool("probe", "--backend", "tracefs", "--verbose", "-d", "0.3",
                 f"p:{target_bin}:echo")
    assert r.returncode == 0, r.stderr
    # this start reaps the killed run, unless another bpfprobes start did it first
    assert f"removed instances/{instance}, left by a killed run" in r.stderr \
        or instance not in ours()[1], r.stderr
    events, instances = ours()
    assert group not in events and instance not in instances
    assert tracefs_objects_of(r.pid, r.held) == []


def test_another_tracefs_user_is_untouched(target_bin):
    other_event = f"othertool/keepme_{uuid.uuid4().hex[:12]}"
    other_instance = TRACEFS / "instances" / unique("othertool")
    fd = os.open(TRACEFS / "uprobe_events", os.O_WRONLY | os.O_APPEND)
    os.write(fd, f"p:{other_event} {target_bin}:{_offset(target_bin, 'echo'):#x}\n".encode())
    os.close(fd)
    other_instance.mkdir()
    try:
        enable = other_instance / "events" / other_event / "enable"
        enable.write_text("1")
        r = run_tool("probe", "--backend", "tracefs", "-d", "0.3", f"p:{target_bin}:echo")
        assert r.returncode == 0, r.stderr
        assert f"p:{other_event} " in (TRACEFS / "uprobe_events").read_text()
        assert other_instance.exists()
        assert enable.read_text().strip() == "1"
    finally:
        other_instance.rmdir()
        fd = os.open(TRACEFS / "uprobe_events", os.O_WRONLY | os.O_APPEND)
        os.write(fd, f"-:{other_event}\n".encode())
        os.close(fd)


def _offset(binary: str, symbol: str) -> int:
    from bpfprobes.kernel.elfsym import Elf
    return Elf(binary).symbol_offset(symbol)


def test_auto_falls_back_to_tracefs_when_bcc_cannot_compile(target_bin):
    target = start_target(target_bin, 2, "fallback")
    env = {"BPFPROBES_KERNEL_HEADERS": "/nonexistent/headers", "BPFPROBES_NO_PROGRAM_CACHE": "1"}
    t = Tool("probe", "--json", "-p", str(target.pid), f"p:{target_bin}:echo x=$arg1:s64",
             env=env).wait_live()
    target.communicate("go\n", timeout=60)
    settle(0.6)
    t.stop()
    assert t.json("meta")[0]["backend"] == "tracefs"
    assert "the BPF backend cannot run here (no kernel headers" in t.stderr
    assert [e["args"]["x"] for e in t.json()] == [-5, 5, -5, 5]


def test_overrun_is_reported_as_lost(target_bin):
    n = 20000
    target = start_target(target_bin, n, "overrun")
    with Tool("probe", "--json", "--backend", "tracefs", "--buffer-pages", "1", "-p",
              str(target.pid), f"p:{target_bin}:echo") as t:
        t.pause()           # the reader stopped: 2n events surely overrun a 4 KiB buffer
        try:
            target.communicate("go\n", timeout=120)
        finally:
            t.resume()
    seen, [summary] = len(t.json()), t.json("summary")
    assert summary["lost"] == sum(x["count"] for x in t.json("lost"))
    assert summary["lost"] > 0 and seen + summary["lost"] <= 2 * n


def test_what_tracefs_cannot_do_is_refused(target_bin):
    for extra, words in [
            (["t:syscalls:sys_enter_openat"], "a tracepoint spec is not available with "
                                              "--backend tracefs"),
            (["--filter", "x > 1", f"p:{target_bin}:echo x=$arg1"], "--filter is not available"),
            (["--rate-limit", "5", f"p:{target_bin}:echo"], "--rate-limit is not available")]:
        r = run_tool("probe", "--backend", "tracefs", *extra)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert leftovers(r.pid, r.held) == [] and not r.held.tokens   # refused before creating


def test_kernel_stacks_follow_their_event(target_bin):
    """-s: ftrace's "<stack trace>" line and its frames belong to the event before."""
    target = start_target(target_bin, 1, "stacks")
    with Tool("probe", "--json", "--backend", "tracefs", "-s", "-p", str(target.pid),
              f"p:{target_bin}:echo x=$arg1:s64") as t:
        target.communicate("go\n", timeout=60)
        settle(0.6)
    events = t.json()
    assert [e["args"]["x"] for e in events] == [-5, 5]
    assert all(e["kstack"] and not any("=>" in f for f in e["kstack"]) for e in events)


_TYPED = ("a8=%di:x8 a16=%di:x16 a32=%di:x32 a64=%di:x64 b8=%si:s8 b16=%si:s16 b32=%si:s32 "
          "b64=%si:s64 c8=%dx:u8 c16=%dx:u16 c32=%dx:u32 c64=%dx:u64")


def test_values_print_as_the_kernels_own_trace_prints_them(target_bin):
    """Every integer type and typed $retval, on the kernel's own uprobe events (what
    perf-tools writes) and on the BPF backend: the same text, character for
    character; bpfprobes adds only the errno name of a negative signed return."""
    b = target_bin
    entry, ret = f"{b}:{_offset(b, 'f6'):#x} {_TYPED}", f"{b}:{_offset(b, 'fails'):#x}"
    group = f"bpfptest_{uuid.uuid4().hex[:8]}"
    lines = [f"p:{group}/f6 {entry}", f"r:{group}/fails {ret} rx=$retval:x64 rs=$retval:s64",
             f"r:{group}/fails_u {ret} ru=$retval:u32"]
    instance = TRACEFS / "instances" / unique("bpfptest")
    fd = os.open(TRACEFS / "uprobe_events", os.O_WRONLY | os.O_APPEND)
    try:
        for line in lines:
            os.write(fd, (line + "\n").encode())
        instance.mkdir()
        (instance / "events" / group / "enable").write_text("1")
        target = start_target(b, 1, unique("k"))
        target.communicate("go\n", timeout=60)
        kernel = sorted(re.sub(r"^.*?: \(.*?\) ", "", line)
                        for line in (instance / "trace").read_text().splitlines()
                        if ": (" in line and not line.startswith("#"))
        (instance / "events" / group / "enable").write_text("0")
    finally:
        if instance.exists():
            instance.rmdir()
        for line in lines:
            os.write(fd, f"-:{group}/{line.split('/')[1].split()[0]}\n".encode())
        os.close(fd)
    target = start_target(b, 1, unique("b"))
    with Tool("probe", "--verbose", "-p", str(target.pid), f"p:{b}:f6 {_TYPED}",
              f"r:{b}:fails rx=$retval:x64 rs=$retval:s64", f"r:{b}:fails ru=$retval:u32") as t:
        target.communicate("go\n", timeout=60)
        assert t.wait_until(lambda: sum(": (" in line for line in t.lines) >= 3)
    ours = sorted(re.sub(r" \(E[A-Z0-9]+\)", "", re.sub(r"^.*?: \(.*?\) ", "", line))
                  for line in t.lines if ": (" in line)
    assert len(kernel) == 3 and ours == kernel, (ours, kernel)
    assert any(k.startswith("a8=0xff a16=0xffff ") for k in kernel), kernel     # x: hex
    assert "rx=0xfffffffffffffffe rs=-2" in kernel and "ru=4294967294" in kernel, kernel
