"""`make bench`'s exporter row: what watching opens costs, per way of watching.

A paced workload opens numbered missing paths at RATE a second (soak.py's, so
the rate is steady and made up at once after a slow moment). Each
configuration runs alone for SECONDS on the whole system, and its process's
CPU time and RSS are read from /proc at the start and the end:

  bpfprobes serve       a session with [[count]] opens by comm and [[opensnoop]]
                        by comm and errno: counted in the kernel, /metrics scraped
                        every second (as Prometheus would, by this script)
  bpfprobes count       the same opens counted in the kernel, --json totals
  bpfprobes probe       the same exits as JSON lines, one per event, into a pipe
  bpftrace              `@[comm] = count()` printed every second (the in-kernel peer)

The workload's own CPU is given too: the probes run in its syscalls, so what a
tracer costs the traced process shows there.

Not a test: it prints a table and writes bench/EXPORTER.md; it never fails on
figures, only when a configuration does not run.

    .venv/bin/python bench/exporter.py                  # 30 s each at 20,000 opens/s
    .venv/bin/python bench/exporter.py --seconds 10 --rate 5000
"""
from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE)]

from run import ROOT, machine, write_readme  # noqa: E402  - the same header as RESULTS.md
from soak import _proc_stats  # noqa: E402  - (RSS MB, CPU s) from /proc

BPFPROBES = str(ROOT / ".venv/bin/bpfprobes")
SESSION = """\
[[count]]
name = "opens"
targets = ["t:syscalls:sys_enter_openat"]
by = ["comm"]

[[opensnoop]]
by = ["comm", "errno"]
"""


@dataclass
class Config:
    name: str
    argv: list[str]
    ready: str                  # a line (stdout or stderr) that says it is attached
    scrape: bool = False        # serve: GET /metrics every second


@dataclass
class Result:
    name: str
    cpu_per_s: float | None = None
    load_cpu_per_s: float | None = None     # the workload's: its syscalls run the probes
    rss_mb: float | None = None
    opens: int = 0
    scrapes: int = 0
    error: str | None = None


def configs(session: Path) -> list[Config]:
    out = [Config("bpfprobes serve (scraped every 1 s)",
                  [BPFPROBES, "serve", "--listen", "127.0.0.1:0", str(session)],
                  ": serving http", scrape=True),
           Config("bpfprobes count --json --by comm",
                  [BPFPROBES, "count", "--json", "--by", "comm",
                   "t:syscalls:sys_enter_openat"], '"type":"meta"'),
           Config("bpfprobes probe --json (a line per event)",
                  [BPFPROBES, "probe", "--json", "t:syscalls:sys_exit_openat ret"],
                  '"type":"meta"')]
    if shutil.which("bpftrace"):
        out.append(Config("bpftrace @[comm] = count(), printed every 1 s",
                          ["bpftrace", "-e", "tracepoint:syscalls:sys_enter_openat "
                           "{ @[comm] = count(); } interval:s:1 { print(@); }"], "Attaching"))
    return out


def _watch(proc: subprocess.Popen, ready: str, seen: threading.Event, said: list) -> None:
    """Read both streams to the end (a pipe never fills); keep the ready line."""
    def pump(stream) -> None:
        for line in stream:
            if ready in line and not seen.is_set():
                said.append(line)
                seen.set()
    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=pump, args=(stream,), daemon=True).start()


def measure(c: Config, rate: int, seconds: float) -> Result:
    r = Result(c.name)
    proc = subprocess.Popen(c.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", preexec_fn=lambda: signal.signal(
                                signal.SIGINT, signal.SIG_DFL))
    live, said = threading.Event(), []
    _watch(proc, c.ready, live, said)
    if not live.wait(120) or proc.poll() is not None:
        proc.kill()
        r.error = "did not start"
        return r
    # serve says where: "serving http://127.0.0.1:PORT/metrics: ..."
    url = said[0].split("serving ", 1)[1].split(": ", 1)[0] if c.scrape else ""
    prefix = f"/tmp/bpfprobes-exporter-{uuid.uuid4().hex[:8]}-"
    load = subprocess.Popen([sys.executable, str(HERE / "soak.py"), "--workload", "open",
                             str(rate), prefix], stdout=subprocess.PIPE, text=True)
    time.sleep(2.0)                                 # past the workload's start-up
    rss0, cpu0 = _proc_stats(proc.pid)
    _, load0 = _proc_stats(load.pid)
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        if c.scrape:
            with urllib.request.urlopen(url, timeout=10) as resp:
                resp.read()
            r.scrapes += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
    rss1, cpu1 = _proc_stats(proc.pid)
    _, load1 = _proc_stats(load.pid)
    elapsed = time.monotonic() - t0
    r.load_cpu_per_s = (load1 - load0) / elapsed
    load.send_signal(signal.SIGTERM)
    r.opens = int(load.communicate(timeout=30)[0] or 0)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    r.cpu_per_s, r.rss_mb = (cpu1 - cpu0) / elapsed, max(rss0, rss1)
    return r


README_MARKERS = ("<!-- exporter: written by make bench -->", "<!-- exporter: end -->")


def table(results: list[Result], rate: int) -> str:
    base = next((x.cpu_per_s for x in results if x.cpu_per_s), None)
    rows = [(x.name, f"{x.cpu_per_s:.3f}" if x.cpu_per_s is not None else "-",
             f"{x.cpu_per_s / base:.1f}x" if x.cpu_per_s and base else "-",
             f"{x.load_cpu_per_s:.3f}" if x.load_cpu_per_s is not None else "-",
             f"{x.rss_mb:.0f}" if x.rss_mb else "-", f"{x.opens:,}",
             x.error or (f"{x.scrapes} scrapes" if x.scrapes else ""))
            for x in results]
    return tabulate(rows, (f"watching opens at {rate:,}/s", "tracer CPU s/s", "vs serve",
                           "workload CPU s/s", "RSS MB", "opens", "note"),
                    tablefmt="github", disable_numparse=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rate", type=int, default=20_000)
    p.add_argument("--out", default=str(HERE / "EXPORTER.md"))
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--no-write", action="store_true",
                   help="print only; leave EXPORTER.md and the README")
    args = p.parse_args(argv)
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        session = Path(tmp) / "session.toml"
        session.write_text(SESSION)
        results = []
        for c in configs(session):
            print(f"exporter bench: {c.name}, {args.seconds:g} s at {args.rate:,}/s", flush=True)
            results.append(measure(c, args.rate, args.seconds))
    text = table(results, args.rate)
    print(text)
    header = (f"{info['date']}, kernel {info['kernel']}, commit {info['commit']}, {info['cpu']}, "
              f"load {info['load']:.2f} at start. {args.seconds:g} s each at {args.rate:,} "
              "opens/s (bench/exporter.py; CPU and RSS of the tracer's process from /proc).")
    if args.no_write:
        return 1 if any(x.error for x in results) else 0
    Path(args.out).write_text("\n".join([
        "# Exporter cost: bpfprobes serve against the other ways of watching opens", "",
        header, "", text, ""]))
    if write_readme(Path(args.readme), header + "\n\n" + text, README_MARKERS):
        print(f"exporter bench: wrote its table in {args.readme}")
    return 1 if any(x.error for x in results) else 0


if __name__ == "__main__":
    sys.exit(main())
