"""Counting many kernel functions at once, in the test VM: time from launch to
live, time from SIGINT to exit (the detach), and what each call then costs, for
about 100 functions (`vfs_*`) and about 1,000 (`vfs_*`, `ext4*`, `tcp_*`), under
bpfprobes count, bpftrace's wildcard probes and BCC's funccount.

    .venv/bin/python bench/attach.py                 # Debian 6.1 and 6.12: writes bench/ATTACH.md
    .venv/bin/python bench/attach.py --kernel 6.12

Per-call cost: the open+close storm of bench/workload.c on a tmpfs (each open
passes through several vfs_* functions) with the functions attached, against
the same storm untraced, in the same boot. The emulated CPU (TCG) makes every
time here slower than on hardware: compare tracers within a row, not with the
host's tables. Live is when the tracer says it is (bpfprobes' meta line,
bpftrace's BEGIN, funccount's "Tracing"), all three after their last attach.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "tests" / "vm")]

import measure  # noqa: E402

SETS = {"~100": ["vfs_*"], "~1,000": ["vfs_*", "ext4*", "tcp_*"]}
STORM = 20_000                  # opens per storm under emulation (~1 s untraced)
LIVE_TIMEOUT = 600.0


def _commands(patterns: list[str], python: str) -> dict[str, tuple[list[str], str]]:
    """tracer -> (argv, the text on its stdout that says it is live)."""
    probes = ",".join(f"kprobe:{p}" for p in patterns)
    regex = "^(" + "|".join(p.rstrip("*") for p in patterns) + ").*"
    return {
        "bpfprobes count": ([python, "-m", "bpfprobes.cli.main", "count", "--force", "--json",
                             *patterns], '"type":"meta"'),
        "bpftrace": (["bpftrace", "-e", f'BEGIN {{ printf("live\\n"); }} {probes} '
                      "{ @[probe] = count(); }"], "live"),
        "BCC funccount": (["funccount-bpfcc", "-r", regex], "Tracing"),
    }


def _storm(ctx: measure.Context) -> float:
    return measure.storm(ctx, STORM, str(ctx.work / "storm"))


def _one(name: str, argv: list[str], ready: str, ctx: measure.Context) -> dict:
    out = ctx.work / "out"
    with open(out, "wb") as fo:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=fo, stderr=subprocess.STDOUT, cwd=ROOT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    row = {"tracer": name}
    try:
        while ready.encode() not in out.read_bytes():
            if proc.poll() is not None or time.monotonic() - t0 > LIVE_TIMEOUT:
                tail = out.read_bytes()[-300:].decode(errors="replace").strip()
                row["error"] = tail.splitlines()[-1] if tail else f"exit {proc.returncode}"
                return row
            time.sleep(0.02)
        row["live_s"] = round(time.monotonic() - t0, 2)
        row["ns_per_open"] = _storm(ctx)
        t1 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=LIVE_TIMEOUT)
        row["exit_s"] = round(time.monotonic() - t1, 2)
        text = out.read_text(errors="replace")
        if name == "bpfprobes count":
            meta = json.loads(next(ln for ln in text.splitlines() if '"type":"meta"' in ln))
            row["targets"], row["how"] = meta["targets"], meta["attach"]
        return row
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def in_vm(result: Path) -> None:
    subprocess.run(["modprobe", "ext4"], check=True)     # a module: its functions listed once loaded
    ctx = measure.Context(str(HERE / "out" / "workload"), sys.executable, str(ROOT),
                          Path(tempfile.mkdtemp(dir="/mnt")))
    rows = []
    for label, patterns in SETS.items():
        base = [_storm(ctx) for _ in range(2)]
        for name, (argv, ready) in _commands(patterns, sys.executable).items():
            if shutil.which(argv[0]) is None:
                continue
            row = _one(name, argv, ready, ctx)
            row.update(set=label, untraced_ns=statistics.mean(base))
            base.append(_storm(ctx))          # drift between tracers
            print(json.dumps(row), flush=True)
            rows.append(row)
    result.write_text(json.dumps({"kernel": os.uname().release, "rows": rows}))


def table(kernel: str, rows: list[dict]) -> str:
    lines = [f"### {kernel}", "",
             "| functions | tracer | attached as | live after | exit after | x untraced per open |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['set']} | {r['tracer']} | failed: {r['error'][:80]} | | | |")
            continue
        how = f"{r['targets']:,}: {r['how']}" if "targets" in r else ""
        lines.append(f"| {r['set']} | {r['tracer']} | {how} | {r['live_s']:.1f} s | "
                     f"{r['exit_s']:.1f} s | {r['ns_per_open'] / r['untraced_ns']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", action="append", help="kernels.py names (default 6.1 and 6.12)")
    p.add_argument("--in-vm", metavar="JSON", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE / "ATTACH.md"))
    a = p.parse_args(argv)
    if a.in_vm:
        in_vm(Path(a.in_vm))
        return 0
    from boot import run_in_vm  # noqa: PLC0415 - tests/vm/boot.py
    from run import build_workload, machine  # noqa: PLC0415
    build_workload()
    parts = ["# Counting many kernel functions (bench/attach.py)", "",
             f"{machine()['date']}, commit {machine()['commit']}; the test VM (QEMU, TCG, "
             f"2 vCPUs): compare tracers within a row. Per open: a storm of {STORM:,} "
             "open+close on tmpfs, each passing through several vfs_* functions.", ""]
    for kernel in a.kernel or ["6.1", "6.12"]:
        rw = Path(tempfile.mkdtemp(prefix="bpfbench-attach-"))
        os.chmod(rw, 0o777)
        cmd = (f"mount -t tmpfs tmpfs /mnt; BPFPROBES_CACHE=/mnt/cache {sys.executable} "
               f"{HERE / 'attach.py'} --in-vm {rw / 'r.json'}")
        rc, _out = run_in_vm(cmd, rwdirs=[str(rw)], echo=True, kernel=kernel, timeout=5400)
        if rc != 0 or not (rw / "r.json").exists():
            print(f"attach: the {kernel} VM run failed (status {rc})", file=sys.stderr)
            return 1
        data = json.loads((rw / "r.json").read_text())
        parts += [table(f"{kernel} ({data['kernel']})", data["rows"]), ""]
        shutil.rmtree(rw, ignore_errors=True)
    text = "\n".join(parts)
    print(text)
    Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
