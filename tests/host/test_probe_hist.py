"""probe --hist on this kernel: histograms bucketed in the kernel, against what the
test caused: bpftrace's hist() on the same workload gives the same bucket counts;
a latency histogram holds every call in the bucket of its known sleep; --by comm,
linear buckets, -i intervals and JSON."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tooling import Tool, Workload, run_tool, unique

LINE = re.compile(r"^(\[[^\]\)]*[\]\)]|\(\.\.\., 0\])\s+(\d+) \|")


def buckets(text: str) -> dict[str, int]:
    """{bucket label: count} of a histogram printed as bpftrace prints one."""
    return {m[1]: int(m[2]) for m in map(LINE.match, text.splitlines()) if m}


def test_the_same_buckets_as_bpftraces_hist(tmp_path):
    """pread64's count for 3,000 preads of spread sizes, in bpftrace and in bpfprobes."""
    if shutil.which("bpftrace") is None:
        pytest.fail("bpftrace is not installed: `make setup-test` installs Debian's")
    data = tmp_path / "data"
    data.write_bytes(b"x" * 70000)
    w = Workload(unique("hist")[:15], f"sizes:{data}:3000")
    # BEGIN runs once every probe is attached: its line says bpftrace is live
    bt = subprocess.Popen(["bpftrace", "-e", 'BEGIN { printf("live\\n"); } '
                           f"tracepoint:syscalls:sys_enter_pread64 "
                           f"/pid == {w.pid}/ {{ @ = hist(args->count); }}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # "Attaching 2 probes...", then BEGIN's line (none: bpftrace ended)
        assert any(line.strip() == "live" for line in iter(bt.stdout.readline, ""))
        with Tool("probe", "--hist", "--hist-of", "count", "-p", str(w.pid),
                  "t:syscalls:sys_enter_pread64 count") as t:
            assert w.go() == [3000]
        bt.send_signal(2)
        theirs = buckets(bt.communicate(timeout=60)[0])
    finally:
        if bt.poll() is None:           # a failure above: no bpftrace left behind
            bt.kill()
            bt.wait()
    ours = buckets("\n".join(t.lines))
    assert sum(ours.values()) == 3000 and ours == theirs, (ours, theirs)
    assert len(ours) >= 15                          # 0, 1, and every power of two to 64K


def test_a_latency_histogram_holds_every_call_in_its_sleeps_bucket(target_bin):
    n, nap_us = 60, 3000
    proc = subprocess.Popen([target_bin, unique("t"), str(n), str(nap_us), "/nonexistent"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        with Tool("probe", "--hist", "--json", "-p", str(proc.pid),
                  f"p:{target_bin}:nap", f"r:{target_bin}:nap") as t:
            proc.communicate("go\n", timeout=60)
    finally:
        proc.kill()
    [rows] = [r["rows"] for r in t.json("totals")]
    assert rows[0]["probe"] == "nap__return" and rows[0]["unit"] == "us"
    got = rows[0]["buckets"]
    assert sum(b["count"] for b in got) == n
    # usleep(3000) takes at least 3 ms: [2K, 4K) us or above, never below
    assert all(b["min"] >= 2048 for b in got if b["count"]), got


def test_by_comm_linear_buckets_and_intervals(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(b"x" * 100)
    comm = unique("lin")[:15]
    w = Workload(comm, f"sizes:{data}:200")
    with Tool("probe", "--hist", "--linear", "10000", "--hist-of", "count", "--by", "comm",
              "--json", "-i", "0.5", "-p", str(w.pid), "t:syscalls:sys_enter_pread64 count") as t:
        assert w.go() == [200]
        assert t.wait_until(lambda: t.json("interval"), 10)
    intervals = [row for r in t.json("interval") for row in r["rows"]]
    [totals] = [r["rows"] for r in t.json("totals")]
    assert totals[0]["comm"] == comm
    total = {b["min"]: b["count"] for b in totals[0]["buckets"]}
    assert sum(total.values()) == 200
    assert [b["max"] - b["min"] for b in totals[0]["buckets"] if b["max"]] == \
        [10000] * len([b for b in totals[0]["buckets"] if b["max"]])
    # the intervals' histograms add up to the whole run's
    summed: dict = {}
    for row in intervals:
        for b in row["buckets"]:
            summed[b["min"]] = summed.get(b["min"], 0) + b["count"]
    assert {k: v for k, v in summed.items() if v} == {k: v for k, v in total.items() if v}


@pytest.mark.parametrize("args, message", [
    (["--hist", "t:syscalls:sys_enter_pread64 count"], "--hist buckets a latency"),
    (["--hist", "--hist-of", "nothere", "t:syscalls:sys_enter_pread64 count"],
     "--hist-of nothere: no probe captures it"),
    (["--linear", "5", "t:syscalls:sys_enter_pread64 count"],
     "--linear shape a histogram: add --hist"),
    (["--hist", "--count", "--hist-of", "count", "t:syscalls:sys_enter_pread64 count"],
     "not with --count"),
    (["--hist", "--prometheus", "127.0.0.1:0", "--hist-of", "count",
      "t:syscalls:sys_enter_pread64 count"], "not with --prometheus"),
    (["--hist", "--dry-run", "--hist-of", "count", "t:syscalls:sys_enter_pread64 count"],
     "not with --dry-run"),
    (["--by", "comm", "t:syscalls:sys_enter_pread64 count"], "--by goes with --count or --hist"),
    (["--hist", "--hist-of", "count", "-s", "t:syscalls:sys_enter_pread64 count"],
     "not with -s"),
])
def test_bad_hist_options_are_one_line(args, message):
    r = run_tool("probe", *args)
    assert r.returncode == 2 and message in r.stderr.splitlines()[0], r.stderr
    assert not r.held.progs


def test_each_probe_buckets_by_its_own_sign(target_bin):
    """One run, one function, the value read signed by one probe and unsigned by the
    other: echo(-5) is a negative for the first and a huge number for the second."""
    proc = subprocess.Popen([target_bin, unique("t"), "20", "10", "/nonexistent"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        with Tool("probe", "--hist", "--hist-of", "x", "--json", "-p", str(proc.pid),
                  f"p:{target_bin}:echo x=$arg1:s64", f"p:{target_bin}:echo x=$arg1:u64") as t:
            proc.communicate("go\n", timeout=60)
    finally:
        proc.kill()
    rows = {r["probe"]: {(b["min"], b["max"]): b["count"] for b in r["buckets"] if b["count"]}
            for total in t.json("totals") for r in total["rows"]}
    # signed: -5 among the negatives, (..., 0); unsigned: 2^64 - 5 in the last log2
    # bucket, [2^63, ...): every 64-bit value has its own
    assert rows == {"echo": {(None, 0): 20, (4, 8): 20},
                    "echo_2": {(4, 8): 20, (1 << 63, None): 20}}, rows


def test_a_comm_cannot_write_lines_of_its_own(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(b"x" * 100)
    w = Workload("a\n[1G, 2G) 999", f"sizes:{data}:50")
    with Tool("probe", "--hist", "--hist-of", "count", "--by", "comm", "-p", str(w.pid),
              "t:syscalls:sys_enter_pread64 count") as t:
        assert w.go() == [50]
    assert not [line for line in t.lines if line.startswith("[1G, 2G)")], t.lines
    assert any(line.startswith("@[sys_enter_pread64, a\\n[1G, 2G) 999]") for line in t.lines), \
        t.lines
