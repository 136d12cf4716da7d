"""execsnoop on this machine's kernel (tracepoint path: no kprobes here).

Every test causes its own execs, tagged with a unique argument, and checks
them with the pids and parent pids it knows.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tooling import EXECVEAT, SYS_EXECVEAT, Tool, leftovers, run_tool, unique

TRUE = "/bin/true"


def tricky_args(tag: str, count: int) -> list[str]:
    """`count` arguments with spaces, quotes, backslashes, non-ASCII, an empty one."""
    shapes = ["with space", 'dq"uote', "sq'uote", "ünïcødé €", "back\\slash", "", "tab\there",
              "$HOME *", "-x=1"]
    return [f"{tag}:{i}:{shapes[i % len(shapes)]}" if i % len(shapes) != 5 else ""
            for i in range(count)]


def tagged(tool: Tool, tag: str) -> list[dict]:
    """Events with `tag` in an argument, but not the tools themselves (their -l has it)."""
    return [e for e in tool.json() if any(tag in a for a in e["argv"])
            and "bpfprobes.cli.main" not in e["argv"]]


def wait_for(get, count: int, timeout: float = 10.0) -> list:
    """Poll until `get()` has at least `count` items (the tool drains every 100 ms),
    then a little longer, so that an unexpected extra would be seen too."""
    deadline = time.monotonic() + timeout
    while len(get()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    return get()


def run(argv: list[str], **kw) -> int:
    """Run a program to completion; its pid is the exec's pid."""
    p = subprocess.Popen(argv, **kw)
    p.wait()
    return p.pid


def test_25_arguments_intact_with_max_args_30():
    tag = unique("es25")
    args = tricky_args(tag, 24)                           # argv[0] + 24 = 25 arguments
    with Tool("execsnoop", "--json", "--max-args", "30", "-l", tag) as tool:
        before = time.time()
        pid = run([TRUE, *args])
        missing = tag + "-missing"
        with pytest.raises(FileNotFoundError):           # failed: not shown without -x
            subprocess.run([f"/nonexistent/{missing}", tag])
        events = wait_for(lambda: tagged(tool, tag), 1)
    assert len(events) == 1, events
    e = events[0]
    assert e["argv"] == [TRUE, *args]
    assert (e["pid"], e["tid"], e["ppid"], e["uid"]) == (pid, pid, os.getpid(), os.getuid())
    assert (e["comm"], e["ret"], e["errno"], e["syscall"]) == ("true", 0, None, "execve")
    assert (e["truncated"], e["truncation"], e["cut_args"]) == (False, [], [])
    assert before - 1 < e["ts"] < time.time() + 1


def test_truncation_marked_at_default_20_in_text_and_json():
    tag = unique("es20")
    args = tricky_args(tag, 24)
    with Tool("execsnoop", "--json", "-l", tag) as js, \
            Tool("execsnoop", "-q", "-T", "-t", "-U", "-l", tag) as text:
        pid = run([TRUE, *args])
        events = wait_for(lambda: tagged(js, tag), 1)
        lines = wait_for(lambda: [ln for ln in text.lines if tag in ln], 1)
    assert len(events) == 1 and events[0]["argv"] == [TRUE, *args[:19]]
    assert events[0]["truncated"] and events[0]["truncation"] == ["max-args"]
    assert re.match(r"TIME +TIME\(s\) +UID +PCOMM +PID +PPID +RET ARGS$", text.lines[0])
    quoted = " ".join('"' + a.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t") + '"'
                      for a in [TRUE, *args[:19]])
    assert len(lines) == 1
    fields = lines[0].split(None, 7)
    assert re.fullmatch(r"\d\d:\d\d:\d\d", fields[0]) and float(fields[1]) > 0
    assert fields[2:7] == [str(os.getuid()), "true", str(pid), str(os.getpid()), "0"]
    assert fields[7] == quoted + " ..."


def test_long_arguments_cut_and_marked():
    tag = unique("escut")
    long_arg, rest = "A" * 9000, ["B" * 5000, "C" * 3000]
    many = ["D" * 1000] * 20
    with Tool("execsnoop", "--json", "--max-args", "40", "-l", tag) as tool:
        run([TRUE, tag, long_arg, *rest])
        run([TRUE, tag, *many])
        events = wait_for(lambda: tagged(tool, tag), 2)
    assert len(events) == 2
    one, two = sorted(events, key=lambda e: len(e["argv"]))
    # an argument longer than 8 KiB keeps its first 8191 bytes and says so
    assert one["argv"] == [TRUE, tag, long_arg[:8191], *rest]
    assert one["cut_args"] == [2] and one["truncation"] == ["arg-cut"]
    # 16 KiB of arguments: the one that overflows is cut, those after are missing
    assert two["truncation"] == ["space", "arg-cut"] and two["cut_args"] == [len(two["argv"]) - 1]
    assert two["argv"][:-1] == [TRUE, tag, *many[:len(two["argv"]) - 3]]
    assert two["argv"][-1] == "D" * len(two["argv"][-1]) and len(two["argv"][-1]) < 1000
    sent = sum(len(a.encode()) + 3 for a in two["argv"])  # 2-byte header + NUL each
    assert 16384 - 3 <= sent <= 16384


def test_failed_exec_shown_with_x_as_minus_2():
    tag = unique("esfail")
    path = f"/nonexistent/{tag}"
    with Tool("execsnoop", "--json", "-x", "-l", tag) as tool:
        with pytest.raises(FileNotFoundError):
            subprocess.run([path, "arg one"])
        events = wait_for(lambda: tagged(tool, tag), 1)
    assert len(events) == 1, events
    e = events[0]
    assert (e["ret"], e["errno"], e["ppid"]) == (-2, "ENOENT", os.getpid())
    assert e["argv"] == [path, "arg one"]
    # the forked child's comm: the exec failed, so it is still ours
    assert e["comm"] == Path("/proc/self/comm").read_text().strip()


def test_execveat_success_and_failure(tmp_path):
    tag = unique("esat")
    nr = str(SYS_EXECVEAT[os.uname().machine])
    with Tool("execsnoop", "--json", "-x", "-l", tag) as tool:
        ok = subprocess.Popen([sys.executable, "-c", EXECVEAT, "/bin", nr, "true", tag, "x y"])
        assert ok.wait() == 0
        bad = subprocess.Popen([sys.executable, "-c", EXECVEAT, str(tmp_path), nr, "true", tag])
        assert bad.wait() == 100 + 2                       # ENOENT: no "true" in tmp_path
        events = wait_for(lambda: [e for e in tagged(tool, tag) if e["syscall"] == "execveat"], 2)
    events = [e for e in events if e["syscall"] == "execveat"]
    by_pid = {e["pid"]: e for e in events}
    assert len(events) == 2 and set(by_pid) == {ok.pid, bad.pid}
    good = by_pid[ok.pid]
    assert (good["argv"], good["ret"], good["comm"], good["ppid"]) == (["true", tag, "x y"], 0,
                                                                      "true", os.getpid())
    assert (by_pid[bad.pid]["ret"], by_pid[bad.pid]["argv"]) == (-2, ["true", tag])


def test_exec_from_a_thread_keeps_pid_and_reports_its_tid():
    """The kernel makes an exec'ing thread the leader: pid stays, the tid changes."""
    tag = unique("esthr")
    code = ("import os, threading\n"
            "argv = ['true', os.environ['TAG']]\n"
            "t = threading.Thread(target=lambda: os.execv('/bin/true', argv))\n"
            "t.start(); t.join()\n")
    with Tool("execsnoop", "--json", "-l", tag) as tool:
        pid = run([sys.executable, "-c", code], env={**os.environ, "TAG": tag})
        events = wait_for(lambda: tagged(tool, tag), 1)
    assert len(events) == 1
    e = events[0]
    assert (e["pid"], e["ppid"], e["comm"], e["argv"]) == (pid, os.getpid(), "true", ["true", tag])
    assert e["tid"] != pid


def test_ppid_filter_and_ppid_of_grandchildren():
    tag = unique("esppid")
    script = f"read go; {TRUE} {tag} one; {TRUE} {tag} two; exit 0"
    parent = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE, text=True)
    try:
        with Tool("execsnoop", "--json", "-P", str(parent.pid)) as tool:
            run([TRUE, tag, "not a child"])                  # our child, not the shell's
            parent.communicate("go\n", timeout=10)
            events = wait_for(lambda: tagged(tool, tag), 2)
    finally:
        parent.kill() if parent.poll() is None else None
    assert sorted(e["argv"][2] for e in events) == ["one", "two"], events
    assert all(e["ppid"] == parent.pid and e["pid"] != parent.pid for e in events)


def test_uid_filter_by_user_name():
    tag = unique("esuid")
    with Tool("execsnoop", "--json", "-u", "nobody", "-l", tag) as tool:
        run([TRUE, tag, "root"])
        pid = run([TRUE, tag, "nobody"], user="nobody")
        events = wait_for(lambda: tagged(tool, tag), 1)
    assert [(e["pid"], e["argv"][2], e["uid"]) for e in events] == [(pid, "nobody", 65534)]


def test_name_and_line_regexes():
    tag = unique("esre")
    with Tool("execsnoop", "--json", "-n", "^true$", "-l", f"{tag} (alpha|gamma)$") as tool:
        run([TRUE, tag, "alpha"])
        run([TRUE, tag, "beta"])                              # line does not match
        run(["/bin/echo", tag, "gamma"], stdout=subprocess.DEVNULL)   # name does not match
        run([TRUE, tag, "gamma"])
        events = wait_for(lambda: tagged(tool, tag), 2)
    assert sorted(e["argv"][2] for e in events) == ["alpha", "gamma"]


def test_json_lines_meta_events_summary_and_clean_detach():
    tag = unique("esjson")
    tool = Tool("execsnoop", "--json", "-v", "-l", tag).wait_live()
    ours = tool.held()          # by id: another execsnoop may run meanwhile
    try:
        pids = [run([TRUE, tag, str(i)]) for i in range(3)]
        wait_for(lambda: tagged(tool, tag), 3)
    finally:
        rc = tool.stop(signal.SIGINT)
    assert rc == 0, tool.stderr
    objs = tool.json(kind=None)
    meta, summary = objs[0], objs[-1]
    assert meta["type"] == "meta" and meta["tool"] == "execsnoop"
    assert meta["attach"] == "tracepoint" and "kprobes unavailable" in meta["why"]
    assert meta["ppid_from"].startswith("BTF") and meta["max_args"] == 20
    assert "tracepoint syscalls:sys_enter_execveat" in meta["probes"]
    events = [o for o in objs if o["type"] == "event"]
    assert sorted(e["pid"] for e in events) == sorted(pids)
    assert set(events[0]) == {"type", "pid", "tid", "ppid", "uid", "comm", "ret", "errno",
                              "syscall", "argv", "truncated", "truncation", "cut_args", "ts"}
    assert summary == {"type": "summary", "events": 3, "lost": 0, "reason": "signal:SIGINT",
                       "elapsed": summary["elapsed"], "recursion_misses": 0}
    assert "execsnoop: attach tracepoint:" in tool.stderr
    assert "parent PIDs from BTF" in tool.stderr
    assert ours.progs and leftovers(tool.proc.pid, ours) == []


# Samples of ~2.6 KiB: one fits in a page, so a 1-page buffer overflows
# whenever the reader is a moment late; every 100th (~5 KiB) never fits, so
# some loss is certain and the test always exercises the accounting.
STORM = """\
import os, sys
sys.stdin.readline()
n, tag = int(sys.argv[1]), sys.argv[2]
for batch in range(0, n, 50):
    pids = [os.posix_spawn("/bin/true", ["true", tag, str(i), "p" * (2500, 5000)[i % 100 == 0]],
                           {}) for i in range(batch, min(batch + 50, n))]
    for p in pids:
        os.waitpid(p, 0)
"""


def test_storm_every_exec_captured_or_counted_lost():
    tag, n = unique("esstorm"), 3000
    parent = subprocess.Popen([sys.executable, "-c", STORM, str(n), tag], stdin=subprocess.PIPE,
                              text=True)
    try:
        with Tool("execsnoop", "--json", "-P", str(parent.pid), "--buffer-pages", "1") as tool:
            parent.communicate("go\n", timeout=120)
            time.sleep(0.5)
    finally:
        parent.kill() if parent.poll() is None else None
    assert parent.returncode == 0
    events = tagged(tool, tag)
    lost = sum(o["count"] for o in tool.json("lost"))
    summary = tool.json("summary")[0]
    print(f"storm: {n} execs, {len(events)} captured, {lost} reported lost")
    assert len(events) + lost == n, (len(events), lost)
    assert summary["lost"] == lost and summary["events"] == len(events)
    assert lost >= n // 100                         # at least the samples bigger than the ring
    assert len({e["argv"][2] for e in events}) == len(events)


def _libbpf_events(lines: list[str], tag: str) -> set[tuple]:
    """libbpf-tools execsnoop columns: PCOMM PID PPID RET ARGS (arguments joined by spaces)."""
    out = set()
    for line in lines:
        if tag in line:
            comm, pid, ppid, ret, args = line.split(None, 4)
            out.add((int(pid), int(ppid), int(ret), tuple(args.split())))
    return out


def test_side_by_side_with_libbpf_tools_execsnoop():
    tag = unique("esside")
    peer = subprocess.Popen(["stdbuf", "-oL", "/usr/sbin/execsnoop"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peer_lines: list[str] = []
    reader = threading.Thread(
        target=lambda: peer_lines.extend(ln.rstrip("\n") for ln in peer.stdout), daemon=True)
    reader.start()
    try:
        with Tool("execsnoop", "--json", "-l", tag) as tool:
            wait_for(lambda: [ln for ln in peer_lines if ln.startswith("PCOMM")], 1, timeout=30)
            assert any(ln.startswith("PCOMM") for ln in peer_lines), peer_lines
            for i in range(10):
                run([TRUE, tag, str(i), *(["arg"] * i)])
            run(["/bin/echo", tag, "echo"], stdout=subprocess.DEVNULL)
            with pytest.raises(FileNotFoundError):
                subprocess.run([f"/nonexistent/{tag}"])       # neither shows it without -x
            ours = wait_for(lambda: tagged(tool, tag), 11)
            wait_for(lambda: [ln for ln in peer_lines if tag in ln], 11)
    finally:
        peer.send_signal(signal.SIGINT)
        peer.wait(10)
        reader.join(5)
    mine = {(e["pid"], e["ppid"], e["ret"], tuple(e["argv"])) for e in ours}
    assert len(mine) == 11
    assert mine == _libbpf_events(peer_lines, tag)


class _NoBtfKernel:
    """A kernel without BTF, with headers of the given status."""

    def __init__(self, status: str) -> None:
        self.headers = type("H", (), {"status": status, "path": "/lib/modules/x/build"})()

    def struct_offset(self, struct_name: str, member: str) -> None:
        return None


def test_ppid_offsets_never_from_another_kernels_headers():
    from bpfprobes.tools import execsnoop
    from bpfprobes.base.errors import KernelError
    defs, why = execsnoop._task_offsets(_NoBtfKernel("matching"))
    assert defs == {"TASK_FROM_HEADERS": True} and "this kernel's headers" in why
    with pytest.raises(KernelError, match="no BTF"):
        execsnoop._task_offsets(_NoBtfKernel("nearest"))


@pytest.mark.parametrize("argv, message", [
    (["--max-args", "0"], "--max-args"),
    (["--max-args", "5000"], "at most 1024"),
    (["-n", "(unclosed"], "bad regular expression"),
    (["-u", "no-such-user-here"], "no such user"),
    (["-P", "abc"], "a PID must be a whole number"),
    (["--attach", "uprobe"], "invalid choice"),
    (["--buffer-pages", "3"], "power of two"),
])
def test_bad_input_is_one_line_exit_2(argv, message):
    r = run_tool("execsnoop", *argv)
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.startswith("execsnoop: error:")
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 2


def test_help_ends_with_examples():
    r = run_tool("execsnoop", "--help")
    assert r.returncode == 0
    tail = r.stdout.split("examples:")[1]
    assert "execsnoop -x" in tail and "execsnoop -P 1234" in tail and "--json" in tail


def _record(arg: bytes, cut: bool = False) -> bytes:
    body = arg + b"\0"
    return (len(body) | (0x8000 if cut else 0)).to_bytes(2, "little") + body


def test_decode_golden_bytes_and_text_rendering():
    """No kernel needed: the record format of execsnoop.h, and the ARGS column."""
    import struct
    from bpfprobes.tools.execsnoop import _render_args
    from bpfprobes.present.decode import exec_event
    args = _record(b"/bin/x") + _record(b"a b") + _record(b"") + _record(b"caf\xe9\n") \
        + _record(b"L" * 5, cut=True)
    head = struct.pack("<QIIIIiHHHHI16s", 7, 10, 11, 1, 1000, -2, 1, 4 | 1, 5, 0, len(args),
                       b"x\0")
    e = exec_event(head + args)
    assert (e["ts_ns"], e["pid"], e["tid"], e["ppid"]) == (7, 10, 11, 1)
    assert (e["uid"], e["ret"]) == (1000, -2)
    assert (e["comm"], e["syscall"]) == ("x", "execveat")
    assert e["argv"] == ["/bin/x", "a b", "", "caf\udce9\n", "LLLLL"]     # exact: surrogateescape
    assert (e["cut"], e["truncation"]) == ([4], ["max-args", "arg-cut"])
    assert _render_args(False)(e) == "/bin/x a b  caf\\xe9\\n LLLLL... ..."
    assert _render_args(True)(e) == '"/bin/x" "a b" "" "caf\\xe9\\n" "LLLLL"... ...'
