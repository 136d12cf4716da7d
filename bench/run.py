"""`make bench`: bpfprobes against its peers, side by side, on three storms:
open() (opensnoop), fork+exec (execsnoop) and calls of a user function (probe
with a uprobe).

Every round runs the untraced workload and each tracer in turn (the order
rotates between rounds) for each storm size, so slow drifts of a shared, noisy
machine fall on every tracer alike; ratios are taken within a round, then the
median over rounds is shown, with the range. It prints a table per storm and
writes bench/RESULTS.md and the README's cost tables (between its cost markers).

    .venv/bin/python bench/run.py            # 3 rounds: 200,000 and 1,000,000 opens,
                                             # 20,000 execs, 200,000 calls
    .venv/bin/python bench/run.py --quick    # 1 round, smaller storms (under 2 min)
    .venv/bin/python bench/run.py --vm       # the kprobe path in the test VM, ratios only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path[:0] = [str(HERE), str(ROOT)]

import measure  # noqa: E402
import tracers  # noqa: E402
from measure import Context, Run  # noqa: E402

SIZES = (200_000, 1_000_000)
EXEC_SIZES = (20_000,)          # fork+exec: ~0.7 ms each here
CALL_SIZES = (200_000,)         # a uprobe hit: a few us
SUSTAINED_RATES = (100_000, 200_000, 300_000, 400_000, 500_000, 600_000, 800_000)
SUSTAINED_SECONDS = 3.0
STORM_TITLES = {"open": "open() storm: opensnoop and its peers",
                "exec": "fork+exec storm: execsnoop and its peers",
                "call": "uprobe storm: probe and bpftrace on a user function"}


def build_workload() -> str:
    """gcc bench/workload.c -> bench/out/workload (when missing or stale)."""
    src, exe = HERE / "workload.c", OUT / "workload"
    OUT.mkdir(exist_ok=True)
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return str(exe)


def available(ts: tuple[tracers.Tracer, ...]) -> tuple[list[tracers.Tracer], list[str]]:
    """Tracers whose program exists here; the others are named, not run."""
    ok, missing = [], []
    for t in ts:
        prog = t.command(sys.executable, str(ROOT))[0]
        (ok if shutil.which(prog) or Path(prog).exists() else missing).append(t)
    return ok, [t.name for t in missing]


def rounds(ctx: Context, ts: list[tracers.Tracer], sizes: tuple[int, ...], n_rounds: int,
           log=None) -> list[tuple[int, Run]]:
    """(round, run) for every run; untraced opens and closes each round and size.
    The tracers share one storm (Tracer.storm)."""
    log = log or (lambda line: print(line, flush=True))
    kind = ts[0].storm if ts else "open"
    runs: list[tuple[int, Run]] = []
    for t in ts:
        if t.warm_up:
            log(f"warm-up: {t.name}: {_progress(-1, measure.traced(t, ctx, 1000))}")
    for r in range(n_rounds):
        order = ts[r % len(ts):] + ts[:r % len(ts)]
        for n in sizes:
            batch = [measure.untraced(ctx, n, kind)]
            for t in order:
                if n == min(sizes) or not t.smallest_only:
                    batch.append(measure.traced(t, ctx, n))
            batch.append(measure.untraced(ctx, n, kind))
            for run in batch:
                log(_progress(r, run))
                runs.append((r, run))
    return runs


def _progress(r: int, run: Run) -> str:
    bits = [f"round {r + 1}", f"N={run.n:,}", run.tracer,
            f"{run.ns_per_op:.0f} ns/op" if run.ns_per_op else "-"]
    if run.captured is not None:
        bits.append(f"captured {run.captured:,} lost {run.lost}")
    if run.live_s is not None:
        bits.append(f"live {run.live_s:.2f} s")
    if run.error:
        bits.append(f"ERROR {run.error}")
    if run.note:
        bits.append(f"NOTE {run.note}")
    return "  ".join(bits)


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _ratios(ok: list[tuple[int, Run]], untraced: list[tuple[int, Run]], attr: str) -> list[float]:
    """Each run's `attr` over the mean of the untraced runs' in its own round."""
    base: dict[int, list[float]] = {}
    for r, x in untraced:
        if getattr(x, attr):
            base.setdefault(r, []).append(getattr(x, attr))
    return [getattr(x, attr) / statistics.mean(base[r]) for r, x in ok
            if getattr(x, attr) and r in base]


def summarize(runs: list[tuple[int, Run]], names: list[str],
              sizes: tuple[int, ...], storm: str = "open") -> list[dict]:
    """One row per (size, tracer): medians over rounds; ratios within each round."""
    rows = []
    for n in sizes:
        untraced = [(r, x) for r, x in runs if x.tracer == "untraced" and x.n == n]
        for name in ["untraced", *names]:
            mine = [(r, x) for r, x in runs if x.tracer == name and x.n == n]
            if not mine:
                continue
            ok = [(r, x) for r, x in mine if not x.error]
            ratios = _ratios(ok, untraced, "ns_per_op")
            rss = [x.rss_mb for _, x in ok if x.rss_mb is not None]
            collateral = _ratios(ok, untraced, "getppid_ns")
            row = {"tracer": name, "storm": storm, "N": n, "runs": len(ok),
                   "ns_per_open": _median([x.ns_per_op for _, x in ok]),
                   "ratio": _median(ratios),
                   "ratio_range": [min(ratios), max(ratios)] if ratios else None,
                   "rss_range": [min(rss), max(rss)] if rss else None,
                   "capture": _median([x.captured / n for _, x in ok
                                       if x.captured is not None]),
                   "lost": _median([x.lost for _, x in ok if x.lost is not None]),
                   "lost_max": max([x.lost for _, x in ok if x.lost is not None], default=None),
                   "live_s": _median([x.live_s for _, x in ok]),
                   "rss_mb": _median([x.rss_mb for _, x in ok]),
                   "buffers_mb": _median([x.buffers_mb for _, x in ok]),
                   "tree_rss_mb": _median([x.tree_rss_mb for _, x in ok]),
                   "getppid_ratio": _median(collateral),
                   "getppid_range": [min(collateral), max(collateral)] if collateral else None,
                   "cpu_per_m": _median([x.cpu_s / x.events_total * 1e6 for _, x in ok
                                         if x.cpu_s is not None and x.events_total]),
                   "errors": [x.error for _, x in mine if x.error]
                   + [x.note for _, x in mine if x.note]}
            rows.append(row)
    return rows


def _fmt(value, spec: str, empty: str = "") -> str:
    return empty if value is None else format(value, spec)


def table(rows: list[dict], ratios_only: bool = False) -> str:
    from tabulate import tabulate  # noqa: PLC0415 - installed by make setup-test
    head = ["tracer", "N", "ns/op", "x untraced", "capture", "lost", "live s",
            "peak RSS MB", "of it buffers", "tree peak MB", "CPU s / M events", "getppid x"]
    body = []
    for r in rows:
        lost = _fmt(r["lost"], ".0f")
        if r["lost_max"] is not None and r["lost_max"] != r["lost"]:
            lost += f" (max {r['lost_max']})"
        capture = _fmt(r["capture"], ".2%") if r["tracer"] != "untraced" else ""
        if r["capture"] is not None and "count" in r["tracer"]:
            capture = f">= {r['capture']:.0%}*"
        body.append([r["tracer"], f"{r['N']:,}",
                     "" if ratios_only else _fmt(r["ns_per_open"], ".0f"),
                     _fmt(r["ratio"], ".2f"), capture, lost, _fmt(r["live_s"], ".2f"),
                     _fmt(r["rss_mb"], ".0f"), _fmt(r.get("buffers_mb"), ".0f"),
                     _fmt(r.get("tree_rss_mb"), ".0f"), _fmt(r["cpu_per_m"], ".2f"),
                     _fmt(r.get("getppid_ratio"), ".2f")])
    if ratios_only:
        head.pop(2)
        for b in body:
            b.pop(2)
    return tabulate(body, head, tablefmt="github", disable_numparse=True)


# what `make bench` writes (its figures), relative to the checkout
FIGURE_FILES = ("README.md", "bench/RESULTS.md", "bench/EXPORTER.md")


def machine() -> dict:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    # the figures' own files do not count: a run writes them before the exporter's starts
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no",
                            "--", ".", *(f":!{f}" for f in FIGURE_FILES)],
                           capture_output=True, text=True).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "kernel": platform.release(), "commit": commit + (" (+ uncommitted changes)" if dirty
                                                              else ""),
            "cpu": f"{cpu}, {os.cpu_count()} CPUs", "load": os.getloadavg()[0]}


def run_host(args) -> tuple[list[dict], dict]:
    exe = build_workload()
    host = tracers.HOST + ((tracers.baseline(args.baseline),) if args.baseline else ())
    chosen = host + tracers.EXEC + tracers.CALL
    ts, missing = available(chosen if not args.tracers else
                            tuple(t for t in chosen if any(s in t.name for s in args.tracers)))
    for name in missing:
        print(f"bench: {name} is not installed here: skipped", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="bpfbench-", dir="/tmp"))
    ctx = Context(exe, sys.executable, str(ROOT), work, pin=args.pin)
    info = machine()
    t0 = time.monotonic()
    rows: list[dict] = []
    try:
        for storm, sizes in (("open", args.sizes), ("exec", args.exec_sizes),
                             ("call", args.call_sizes)):
            mine = [t for t in ts if t.storm == storm]
            if mine:
                runs = rounds(ctx, mine, sizes, args.rounds)
                rows += summarize(runs, [t.name for t in mine], sizes, storm)
        if args.sustained:
            info["sustained"] = [_sustained_row(t, measure.sustained(t, ctx, SUSTAINED_RATES,
                                                                     SUSTAINED_SECONDS))
                                 for t in tracers.SUSTAINED if t in ts]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info.update(minutes=round((time.monotonic() - t0) / 60, 1), load_end=os.getloadavg()[0],
                rounds=args.rounds, skipped=missing)
    return rows, info


def _sustained_row(t: tracers.Tracer, steps: list[measure.Step]) -> dict:
    kept = [s for s in steps if s.captured >= s.n]
    first_loss = next((s for s in steps if s.captured < s.n), None)
    row = {"tracer": t.name, "kept_up": kept[-1].achieved if kept else None,
           "loss_at": first_loss.achieved if first_loss else None,
           "capture_there": first_loss.captured / first_loss.n if first_loss else None}
    print(f"sustained: {t.name}: " + ", ".join(f"{s.achieved:,.0f}/s {s.captured / s.n:.2%}"
                                               for s in steps), flush=True)
    return row


def sustained_table(rows: list[dict]) -> str:
    """Markdown: the highest paced rate each tracer took whole, and where it lost."""
    lines = ["| tracer | kept up with, nothing lost | first rate with loss | captured there |",
             "| --- | --- | --- | --- |"]
    top = f"none up to {SUSTAINED_RATES[-1]:,}/s (the top of the ladder)"
    for r in rows:
        kept = f"{r['kept_up']:,.0f} opens/s" if r["kept_up"] else \
            f"none (below {SUSTAINED_RATES[0]:,}/s)"
        lines.append(f"| {r['tracer']} | {kept} | "
                     f"{_fmt(r['loss_at'], ',.0f', top)}{'/s' if r['loss_at'] else ''} | "
                     f"{_fmt(r['capture_there'], '.2%', '')} |")
    return "\n".join(lines)


SUSTAINED_TITLE = (f"Sustained rate: paced open() storms rising {SUSTAINED_RATES[0]:,} to "
                   f"{SUSTAINED_RATES[-1]:,} a second, {SUSTAINED_SECONDS:.0f} s each, one "
                   "tracer run; the highest taken whole (every event printed, none lost)")


def by_storm(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """The rows of each storm, in STORM_TITLES' order (a VM row has no storm: open)."""
    return [(k, mine) for k in STORM_TITLES
            if (mine := [r for r in rows if r.get("storm", "open") == k])]


def run_in_vm(args) -> tuple[list[dict], dict]:
    """Boot the test VM once and run this script inside it (--in-vm)."""
    sys.path.insert(0, str(ROOT / "tests" / "vm"))
    from boot import run_in_vm as boot_and_run  # noqa: PLC0415

    build_workload()
    rw = tempfile.mkdtemp(prefix="bpfbench-vm-")
    os.chmod(rw, 0o777)
    result = Path(rw) / "vm.json"
    sizes = ",".join(str(n) for n in args.vm_sizes)
    # the storm's files and the tracers' outputs go to a tmpfs in the VM: on the
    # shared 9p filesystem every open is a round trip to QEMU (~10 ms)
    cmd = ("mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; "
           "mount -t debugfs nodev /sys/kernel/debug 2>/dev/null; "
           "mount -t tmpfs tmpfs /mnt; "
           f"BPFPROBES_CACHE=/mnt/cache {sys.executable} {HERE / 'run.py'} --in-vm {result} "
           f"--rounds {args.vm_rounds} --sizes {sizes}")
    t0 = time.time()
    rc, out = boot_and_run(cmd, rwdirs=[rw], echo=True)
    if rc != 0 or not result.exists():
        raise SystemExit(f"bench: the VM run failed (status {rc}); its output is above")
    data = json.loads(result.read_text())
    data["info"]["minutes"] = round((time.time() - t0) / 60, 1)
    shutil.rmtree(rw, ignore_errors=True)
    return data["rows"], data["info"]


def inside_vm(args) -> None:
    exe = str(OUT / "workload")
    ts, _ = available(tracers.VM)
    work = Path(tempfile.mkdtemp(prefix="bpfbench-", dir="/mnt"))
    # the emulated CPU is ~20x slower: markers every 20 ms are resolution enough
    ctx = Context(exe, sys.executable, str(ROOT), work, live_timeout=300.0, marker_every=0.02)
    info = {**machine(), "rounds": args.rounds}
    runs = rounds(ctx, ts, args.sizes, args.rounds)
    rows = summarize(runs, [t.name for t in ts], args.sizes)
    Path(args.in_vm).write_text(json.dumps({"rows": rows, "info": info,
                                            "runs": [asdict(r) for _, r in runs]}))


def results_md(host: tuple[list[dict], dict] | None, vm: tuple[list[dict], dict] | None) -> str:
    parts = ["# bench results", "",
             "Written by `make bench` (bench/run.py); see bench/README.md for the method.", ""]
    if host:
        rows, info = host
        parts += [f"## This machine: {info['date']}", "",
                  f"- kernel {info['kernel']}, commit {info['commit']}",
                  f"- {info['cpu']}; load average {info['load']:.2f} at the start, "
                  f"{info['load_end']:.2f} at the end (a shared machine: others compile and "
                  f"boot VMs on it)",
                  f"- {info['rounds']} round(s), medians; x untraced is the ratio to the "
                  f"untraced runs of the same round; {info['minutes']} min in all", ""]
        if info.get("skipped"):
            parts += [f"- not installed, skipped: {', '.join(info['skipped'])}", ""]
        for storm, mine in by_storm(rows):
            parts += [f"### {STORM_TITLES[storm]}", "", table(mine), ""]
        parts += ["\\* a floor counts every such call on the machine, "
                  "so its capture is at least the storm's.", ""]
        if info.get("sustained"):
            parts += [f"### {SUSTAINED_TITLE}", "", sustained_table(info["sustained"]), ""]
        parts += _errors(rows)
    if vm:
        rows, info = vm
        parts += [f"{VM_TITLE} (emulated CPU: ratios only): {info['date']}",
                  "", f"- kernel {info['kernel']} under QEMU without KVM, commit "
                  f"{info['commit']}; {info['minutes']} min with the boot", "",
                  table(rows, ratios_only=True), ""]
        parts += _errors(rows)
    return "\n".join(parts)


VM_TITLE = "## Kprobe path in the test VM"
README_START, README_END = "<!-- cost: written by make bench -->", "<!-- cost: end -->"
# the kprobe path's table, written by a run with --vm (or --vm-only)
VM_MARKERS = ("<!-- cost-vm: written by make bench --vm -->", "<!-- cost-vm: end -->")


def _spread(median, span, spec: str, unit: str = "") -> str:
    """`1.23` or, over several rounds, `1.23 (1.20-1.31)`."""
    if median is None:
        return ""
    text = f"{format(median, spec)}{unit}"
    low, high = (format(x, spec) for x in span) if span else (None, None)
    if low != high:
        text += f" ({low}-{high}{unit})"
    return text


def readme_block(rows: list[dict], info: dict) -> str:
    """The README's cost tables: each storm's largest size in this run, medians
    with the range over rounds."""
    lines = [f"{info['date']}, kernel {info['kernel']}, commit {info['commit']}, "
             f"{info['rounds']} round(s) ({info['cpu']}); median (range over rounds)."]
    for storm, mine in by_storm(rows):
        n = max(r["N"] for r in mine)
        lines += ["", f"{STORM_TITLES[storm].capitalize()}, N = {n:,}:", "",
                  "| tracer | ns per op | x untraced | capture | lost | live after | peak RSS "
                  "| process tree peak | CPU s / M events | getppid() x untraced |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [_readme_row(r) if r["tracer"] != "untraced" else
                  f"| untraced | {_fmt(r.get('ns_per_open'), ',.0f')} | 1.00 | | | | | | | |"
                  for r in mine if r["N"] == n]
    if info.get("sustained"):
        lines += ["", SUSTAINED_TITLE + ":", "", sustained_table(info["sustained"])]
    lines += ["", "ns per op: the storm's time per operation (an open+close, a fork+exec+wait, "
              "a call) with the tracer attached, median; untraced: the workload alone. "
              "Peak RSS counts the event buffers' resident pages (named after it; a BPF ring "
              "buffer's data pages are mapped twice and so counted twice). Process tree peak: "
              "the largest of the tracer and any process it starts (BCC's compile child). "
              "getppid() x untraced: a syscall no tracer here traces, run with each one "
              "attached (what it costs the rest of the system)."]
    return "\n".join(lines)


def _capture_text(r: dict) -> str:
    if r["capture"] is not None and "count" in r["tracer"]:
        return f">= {r['capture']:.0%} (every such call on the machine)"
    return _fmt(r["capture"], ".2%")


def _readme_row(r: dict) -> str:
    capture = _capture_text(r)
    mb = r.get("buffers_mb")
    buffers = "" if not mb else f", {mb:.0f} MB of it buffers" if mb >= 1 else \
        f", {mb:.1f} MB of it buffers"
    return (f"| {r['tracer']} | {_fmt(r.get('ns_per_open'), ',.0f')} | "
            f"{_spread(r['ratio'], r.get('ratio_range'), '.2f')} | "
            f"{capture} | {_fmt(r['lost'], ',.0f')} | {_fmt(r['live_s'], '.2f')} s | "
            f"{_spread(r['rss_mb'], r.get('rss_range'), '.0f', ' MB')}{buffers} | "
            f"{_fmt(r.get('tree_rss_mb'), '.0f')} MB | {_fmt(r['cpu_per_m'], '.2f')} | "
            f"{_spread(r.get('getppid_ratio'), r.get('getppid_range'), '.2f')} |")


def write_readme(path: Path, block: str,
                 markers: tuple[str, str] = (README_START, README_END)) -> bool:
    """Put `block` between the README's markers; False when they are missing."""
    text = path.read_text()
    start, end = text.find(markers[0]), text.find(markers[1])
    if start < 0 or end < start:
        return False
    path.write_text(text[:start + len(markers[0])] + "\n" + block + "\n" + text[end:])
    return True


def vm_readme_block(rows: list[dict], info: dict) -> str:
    """The README's kprobe-path table from the test VM: ratios only (emulated CPU)."""
    lines = [f"{info['date']}, kernel {info['kernel']} under QEMU without KVM (emulated "
             f"CPU: ratios only), commit {info['commit']}, {info.get('rounds', '?')} round(s) "
             f"of {max(r['N'] for r in rows):,} opens:", "",
             "| tracer | x untraced | capture | lost | peak RSS | CPU s / M events |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["tracer"] != "untraced":
            lines.append(f"| {r['tracer']} | {_spread(r['ratio'], r.get('ratio_range'), '.2f')} "
                         f"| {_capture_text(r)} | {_fmt(r['lost'], ',.0f')} | "
                         f"{_fmt(r['rss_mb'], '.0f')} MB | {_fmt(r['cpu_per_m'], '.2f')} |")
    return "\n".join(lines)



def merge_results(path: Path, host, vm) -> str:
    """RESULTS.md with the sections this run measured; a section it did not
    measure (the VM's, on a host-only run) is kept from the previous file."""
    text = results_md(host, vm)
    old = path.read_text() if path.exists() else ""
    if vm is None and VM_TITLE in old:
        text = text.rstrip("\n") + "\n\n" + old[old.index(VM_TITLE):]
    elif host is None and "## This machine" in old:
        kept = old[old.index("## This machine"):]
        kept = kept[:kept.index(VM_TITLE)] if VM_TITLE in kept else kept
        head, _, tail = text.partition(VM_TITLE)
        text = head.rstrip("\n") + "\n\n" + kept.rstrip("\n") + "\n\n" + VM_TITLE + tail
    return text


def _errors(rows: list[dict]) -> list[str]:
    errs = [f"- {r['tracer']} N={r['N']:,}: {e}" for r in rows for e in r["errors"]]
    return (["Runs that failed (left out of the medians) or had to be killed (no loss "
             "report):", "", *errs, ""]) if errs else []


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="1 round; 200,000 opens, 5,000 execs, 50,000 calls; print only")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sizes", type=lambda s: tuple(int(x) for x in s.split(",")), default=SIZES)
    p.add_argument("--exec-sizes", type=lambda s: tuple(int(x) for x in s.split(",")),
                   default=EXEC_SIZES)
    p.add_argument("--call-sizes", type=lambda s: tuple(int(x) for x in s.split(",")),
                   default=CALL_SIZES)
    p.add_argument("--no-sustained", dest="sustained", action="store_false",
                   help="leave out the sustained-rate ladder (~2-3 min)")
    p.add_argument("--tracers", nargs="*", help="only tracers whose name contains one of these")
    p.add_argument("--pin", type=int, help="pin the workload to this CPU")
    p.add_argument("--vm", action="store_true", help="also run the kprobe table in the test VM")
    p.add_argument("--vm-only", action="store_true", help="only the VM table")
    p.add_argument("--vm-rounds", type=int, default=2)
    p.add_argument("--vm-sizes", type=lambda s: tuple(int(x) for x in s.split(",")),
                   default=(50_000,))
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--no-write", action="store_true",
                   help="print only; leave RESULTS.md and the README")
    p.add_argument("--baseline", metavar="DIR",
                   help="also run bpfprobes opensnoop from this checkout (an older commit)")
    p.add_argument("--in-vm", metavar="JSON", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.sizes, a.exec_sizes, a.call_sizes = 1, (200_000,), (5_000,), (50_000,)
        a.sustained = False
        a.no_write = True           # a quick check: the README keeps the full run's figures
    return a


def _exit_on(signum: int, _frame) -> None:
    # SIGTERM/SIGHUP unwind like Ctrl-C: every `finally` stops its tracer
    sys.exit(128 + signum)


def main(argv=None) -> int:
    args = parse_args(argv)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _exit_on)
    if os.geteuid() != 0:
        print("bench: error: run as root (the tracers load BPF programs)", file=sys.stderr)
        return 1
    if args.in_vm:
        inside_vm(args)
        return 0
    host = None if args.vm_only else run_host(args)
    if host:
        for storm, mine in by_storm(host[0]):
            print(f"\n{STORM_TITLES[storm]}\n" + table(mine))
        if host[1].get("sustained"):
            print(f"\n{SUSTAINED_TITLE}\n" + sustained_table(host[1]["sustained"]))
    vm = run_in_vm(args) if args.vm or args.vm_only else None
    if vm:
        print("\n" + table(vm[0], ratios_only=True))
    if not args.no_write:
        Path(args.results).write_text(merge_results(Path(args.results), host, vm))
        print(f"\nbench: wrote {args.results}")
        if host and write_readme(Path(args.readme), readme_block(*host)):
            print(f"bench: wrote the cost table in {args.readme}")
        if vm and write_readme(Path(args.readme), vm_readme_block(*vm), VM_MARKERS):
            print(f"bench: wrote the VM's kprobe table in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
