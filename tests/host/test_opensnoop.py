"""opensnoop on this kernel's syscalls tracepoints: events the tests cause, checked
field by field, plus in-kernel filters, loss accounting and a peer side by side."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tooling import Tool, Workload, run_tool, settle, unique

# the path opensnoop takes here, and the two it falls back to elsewhere (forced by
# opensnoop_path.py): each sees every kind of open the tests check
PATHS = {"exit": ("tracepoint syscalls:sys_exit_openat", None),
         "raw": ("raw_tracepoint sys_exit", "raw"),
         "pairs": ("tracepoint syscalls:sys_enter_openat", "pairs")}
# what each path attaches nothing of (the exit-only path is no pair, no raw program)
NOT_ON = {"exit": ("sys_enter_", "raw_tracepoint"), "raw": ("tracepoint syscalls:",),
          "pairs": ("raw_tracepoint",)}


def run_ops(tool_args: list[str], comm: str, *ops: str,
            path: str = "exit") -> tuple[list[dict], list[int], Tool]:
    w = Workload(comm, *ops)
    forced = PATHS[path][1]
    main = (str(Path(__file__).with_name("opensnoop_path.py")), forced) if forced else \
        ("-m", "bpfprobes.cli.main", "opensnoop")
    with Tool("--json", *tool_args, main=main) as t:
        results = w.go()
        settle()
    return [e for e in t.json() if e["pid"] == w.pid], results, t


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("opens")
    spaced = d / f"{unique()} é ü space.txt"
    spaced.write_text("x")
    deep = d
    for i in range(5):   # 5 x 240-byte components: a path well over 1000 bytes
        deep = deep / (f"{i}" * 240)
    deep.mkdir(parents=True)
    long_file = deep / f"{unique()}.txt"
    long_file.write_text("x")
    return {"spaced": str(spaced), "long": str(long_file), "missing": str(d / unique("missing")),
            "created": str(d / unique("created")), "at2": str(spaced)}


@pytest.fixture(scope="module", params=sorted(PATHS))
def events(paths, request):
    """One opensnoop run over every kind of open the tests check, on each path."""
    ops = [f"open:{paths['spaced']}:O_RDONLY:", f"open:{paths['long']}:O_RDONLY:",
           f"open:{paths['missing']}:O_RDONLY:",
           f"open:{paths['created']}:O_WRONLY|O_CREAT:0640",
           f"openat2:{paths['at2']}:O_RDONLY|O_CLOEXEC:"]
    evs, results, tool = run_ops([], "bpfp-opener", *ops, path=request.param)
    assert tool.proc.returncode == 0, tool.stderr
    return {"events": evs, "results": results, "tool": tool, "path": request.param}


def only(events: list[dict], path: str, syscall: str = "openat") -> dict:
    hits = [e for e in events if e["path"] == path and e["syscall"] == syscall]
    assert len(hits) == 1, (path, [e["path"] for e in events])
    return hits[0]


def test_meta_line_says_tracepoint_and_why(events):
    [meta] = events["tool"].json("meta")
    assert meta["attach"] == "tracepoint"
    assert "kprobes unavailable" in meta["why"] or "forced" in meta["why"]
    assert meta["transport"] in ("perf_buffer", "ring_buffer")
    assert PATHS[events["path"]][0] in meta["probes"], meta["probes"]
    assert not any(other in probe for probe in meta["probes"]
                   for other in NOT_ON[events["path"]]), meta["probes"]
    [summary] = events["tool"].json("summary")
    # system-wide: another process's storm may overflow the buffer, never silently
    assert summary["lost"] == sum(x["count"] for x in events["tool"].json("lost"))
    assert summary["events"] >= 5


def test_unicode_and_space_path_with_pid_comm_fd(events, paths):
    e = only(events["events"], paths["spaced"])
    assert e["comm"] == "bpfp-opener" and e["tid"] == e["pid"]
    assert e["fd"] == events["results"][0] >= 3 and e["err"] == 0
    assert e["syscall"] == "openat" and e["uid"] == os.getuid()


def test_path_over_1000_bytes_is_whole(events, paths):
    assert len(paths["long"]) > 1000
    e = only(events["events"], paths["long"])
    assert e["truncated"] is False and e["fd"] == events["results"][1]


def test_enoent(events, paths):
    e = only(events["events"], paths["missing"])
    assert (e["fd"], e["err"], e["errno"]) == (-1, 2, "ENOENT")
    assert events["results"][2] == -2


def test_creat_wronly_flags_and_mode(events, paths):
    e = only(events["events"], paths["created"])
    assert e["flags"] & (os.O_WRONLY | os.O_CREAT) == os.O_WRONLY | os.O_CREAT
    assert e["mode"] == 0o640
    assert "O_WRONLY" in e["flags_names"] and "O_CREAT" in e["flags_names"]


def test_openat2_raw_syscall(events, paths):
    [e] = [x for x in events["events"] if x["syscall"] == "openat2"]
    assert e["path"] == paths["at2"] and e["fd"] == events["results"][4] >= 3
    assert e["flags"] & os.O_CLOEXEC


def test_extended_text_columns(paths, tmp_path):
    target = str(tmp_path / unique("text"))
    w = Workload("bpfp-text", f"open:{target}:O_WRONLY|O_CREAT:0640")
    with Tool("opensnoop", "-e", "-U", "-T", "-p", str(w.pid)) as t:
        w.go()
        settle()
    header, *rows = [ln for ln in t.lines if ln.strip()]
    assert header.split() == ["TIME(s)", "UID", "PID", "COMM", "FD", "ERR", "FLAGS", "MODE", "PATH"]
    [row] = [r for r in rows if r.endswith(target)]
    cols = row.split()
    assert cols[1:4] == [str(os.getuid()), str(w.pid), "bpfp-text"]
    assert int(cols[6], 8) & (os.O_WRONLY | os.O_CREAT) and cols[7] == "0640"


def test_failed_only_and_pid_filter_in_kernel(tmp_path):
    ok, bad = str(tmp_path / unique("ok")), str(tmp_path / unique("bad"))
    Path(ok).write_text("x")
    other = Workload("bpfp-other", f"open:{ok}:O_RDONLY:")
    w = Workload("bpfp-x", f"open:{ok}:O_RDONLY:", f"open:{bad}:O_RDONLY:")
    with Tool("opensnoop", "--json", "-x", "-p", str(w.pid)) as t:
        w.go()
        other.go()
        settle()
    evs = t.json()
    assert {e["pid"] for e in evs} == {w.pid}
    assert [e["path"] for e in evs if e["path"] in (ok, bad)] == [bad]
    assert t.json("meta")[0]["filters"] == {"pid": w.pid, "failed": True}


def test_flag_filter(tmp_path):
    ro, wo = str(tmp_path / unique("ro")), str(tmp_path / unique("wo"))
    Path(ro).write_text("x")
    w = Workload("bpfp-flags", f"open:{ro}:O_RDONLY:", f"open:{wo}:O_WRONLY|O_CREAT:0600")
    with Tool("opensnoop", "--json", "-f", "O_WRONLY", "-p", str(w.pid)) as t:
        w.go()
        settle()
    assert [e["path"] for e in t.json()] == [wo]


def test_comm_filter(tmp_path):
    f = str(tmp_path / unique("comm"))
    a, b = Workload("bpfp-alpha", f"open:{f}:O_RDONLY:"), Workload("bpfp-beta", f"open:{f}:O_RDONLY:")
    with Tool("opensnoop", "--json", "-n", "alpha") as t:
        a.go()
        b.go()
        settle()
    assert {e["comm"] for e in t.json() if e["path"] == f} == {"bpfp-alpha"}


def test_storm_captured_plus_lost_is_exact(tmp_path):
    """A tiny buffer overflows: every open is either delivered or counted lost."""
    n = 30000
    prefix = str(tmp_path / unique("storm"))
    w = Workload("bpfp-storm", f"storm:{prefix}:{n}")
    with Tool("opensnoop", "--json", "-p", str(w.pid), "--buffer-pages", "1") as t:
        t.pause()            # the reader stopped: n events surely overflow one page
        try:
            w.go()
        finally:
            t.resume()
    captured = sum(1 for e in t.json() if e["path"].startswith(prefix))
    lost_lines = sum(x["count"] for x in t.json("lost"))
    [summary] = t.json("summary")
    assert summary["lost"] == lost_lines
    assert captured + lost_lines == n, (captured, lost_lines)
    assert lost_lines > 0, "a 1-page buffer should overflow in this storm"


def test_same_events_as_libbpf_tools_opensnoop(tmp_path):
    peer_bin = "/usr/sbin/opensnoop"
    assert Path(peer_bin).exists(), "libbpf-tools is not installed (make setup-test)"
    files = [str(tmp_path / unique("peer")) for _ in range(5)]
    for f in files[:3]:
        Path(f).write_text("x")
    w = Workload("bpfp-peer", *[f"open:{f}:O_RDONLY:" for f in files])
    # line-buffered: the peer prints its header once attached, which is its 'live'
    peer = subprocess.Popen(["stdbuf", "-oL", peer_bin, "-p", str(w.pid)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    header = peer.stdout.readline()
    assert header.split()[:2] == ["PID", "COMM"], header
    peer_lines: list[str] = []
    reader = threading.Thread(target=lambda: peer_lines.extend(peer.stdout), daemon=True)
    reader.start()
    with Tool("opensnoop", "--json", "-p", str(w.pid)) as t:
        results = w.go()
        t.wait_until(lambda: len([e for e in t.json() if e["path"] in files]) >= 5)
        t.wait_until(lambda: sum(ln.rstrip().endswith(tuple(files)) for ln in peer_lines) >= 5)
    peer.send_signal(signal.SIGINT)
    peer.wait(10)
    reader.join(5)
    peer_out = "".join(peer_lines)
    ours = {(e["pid"], e["path"], e["fd"], e["err"]) for e in t.json() if e["path"] in files}
    theirs = set()
    for line in peer_out.splitlines():
        m = re.match(r"\s*(\d+)\s+(\S+)\s+(-?\d+)\s+(\d+)\s+(\S+)$", line)
        if m and m.group(5) in files:
            theirs.add((int(m.group(1)), m.group(5), int(m.group(3)), int(m.group(4))))
    assert ours == theirs and len(ours) == 5, (ours, peer_out)
    assert sorted(e[2] if e[3] == 0 else -e[3] for e in ours) == sorted(results)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_exits_cleanly_with_summary(sig):
    t = Tool("opensnoop", "--json").wait_live()
    start = time.monotonic()
    rc = t.stop(sig)
    assert rc == 0 and time.monotonic() - start < 2.0
    [summary] = t.json("summary")
    assert summary["reason"] == f"signal:{signal.Signals(sig).name}"
    assert "Traceback" not in t.stderr


def test_duration_and_max_events(tmp_path):
    r = run_tool("opensnoop", "--json", "-d", "1")
    assert r.returncode == 0 and '"reason":"duration"' in r.stdout.splitlines()[-1]
    f = str(tmp_path / unique("max"))
    w = Workload("bpfp-max", *[f"open:{f}:O_RDONLY:"] * 5)
    t = Tool("opensnoop", "--json", "--max-events", "3", "-p", str(w.pid)).wait_live()
    w.go()
    assert t.wait(10) == 0
    assert len(t.json()) == 3 and t.json("summary")[0]["reason"] == "max-events"


@pytest.mark.parametrize("args,needle", [
    (["-p", "abc"], "a PID must be a whole number"),
    (["-p", "-5"], "a PID must be at least 1"),
    (["--max-events", "0"], "a count must be at least 1"),
    (["-d", "soon"], "a duration must be a number"),
    (["-f", "O_BOGUS"], "unknown open flag 'O_BOGUS'"),
    (["--buffer-pages", "3"], "power of two"),
    (["--attach", "fentry"], "invalid choice"),
    (["--cgroup", "/nonexistent/cg"], "--cgroup /nonexistent/cg"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    r = run_tool("opensnoop", *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("opensnoop: error: ") and needle in first, r.stderr


def test_forcing_kprobes_here_fails_clearly():
    if Path("/sys/bus/event_source/devices/kprobe").exists():
        pytest.skip("this kernel has kprobes: the VM tier covers them")
    r = run_tool("opensnoop", "--attach", "kprobe")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("opensnoop: error: cannot use kprobes: kprobes unavailable")


def test_tracepoint_context_layout_matches_tracefs():
    """bpf_c/syscall_tp.h hard-codes the syscalls tracepoints' layout: check it here."""
    base = Path("/sys/kernel/tracing/events/syscalls")
    enter = (base / "sys_enter_openat" / "format").read_text()
    exit_ = (base / "sys_exit_openat" / "format").read_text()
    offsets = dict(re.findall(r"field:[^;]*?(\w+);\s*offset:(\d+);", enter))
    assert offsets["__syscall_nr"] == "8"
    assert [offsets[f] for f in ("dfd", "filename", "flags", "mode")] == ["16", "24", "32", "40"]
    assert dict(re.findall(r"field:[^;]*?(\w+);\s*offset:(\d+);", exit_))["ret"] == "16"


def test_perf_buffer_forced(tmp_path):
    """--perf-buffer: the mission's transport, even where a BPF ring buffer exists."""
    f = str(tmp_path / unique("perfbuf"))
    w = Workload("bpfp-perfbuf", f"open:{f}:O_RDONLY:")
    with Tool("opensnoop", "--json", "--perf-buffer", "-p", str(w.pid)) as t:
        w.go()
        settle()
    assert t.json("meta")[0]["transport"] == "perf_buffer"
    assert [(e["path"], e["err"]) for e in t.json()] == [(f, 2)]


def test_full_path_from_cwd_dirfd_and_across_mounts(tmp_path):
    """-F: a relative path made absolute in the kernel, from the task's cwd, from
    openat's dirfd, in a directory on another mount (/dev/shm: tmpfs, under /dev's),
    and cut (marked) past 64 steps up; absolute paths stay as given."""
    base = Path(os.path.realpath(tmp_path))
    (base / "a").mkdir()
    (base / "b").mkdir()
    shm = Path("/dev/shm") / unique("bpfp-shm")
    shm.mkdir()
    deep = base / "/".join(["d"] * 70)
    deep.mkdir(parents=True)
    try:
        ops = [f"chdir:{base / 'a'}", "open:rel1:O_RDONLY:", f"openat:{base / 'b'}:rel2",
               "openat2:rel3:O_RDONLY:", f"open:{base / 'abs'}:O_RDONLY:",
               f"chdir:{shm}", "open:rel4:O_RDONLY:", f"chdir:{deep}", "open:rel5:O_RDONLY:"]
        evs, results, _ = run_ops(["-F"], unique("bpfp-full")[:15], *ops)
    finally:
        shm.rmdir()
    assert results == [0, -2, -2, -2, -2, 0, -2, 0, -2], results
    got = {e["path"].rsplit("/", 1)[1]: e for e in evs}
    assert got["rel1"]["path"] == f"{base}/a/rel1" and got["rel1"]["syscall"] == "openat"
    assert got["rel2"]["path"] == f"{base}/b/rel2"
    assert got["rel3"]["path"] == f"{base}/a/rel3" and got["rel3"]["syscall"] == "openat2"
    assert got["abs"]["path"] == f"{base}/abs" and not got["abs"]["truncated"]
    assert got["rel4"]["path"] == f"{shm}/rel4"
    # 64 steps up from 70 d's: the leading components are gone, and it says so
    assert got["rel5"]["truncated"] and got["rel5"]["path"] == "/" + "d/" * 64 + "rel5"
    assert all(not e["truncated"] for k, e in got.items() if k != "rel5")
