"""`make soak`: one long session of a tool at a steady event rate.

The question a production user asks before leaving a tracer running: does it
grow, does it fall behind, does it drop anything? The soak runs the tool with
its defaults (the whole system, JSON lines into a pipe), starts a paced
workload that opens numbered paths (/tmp/bpfprobes-soak-<id>-<seq>, which do
not exist: ENOENT keeps the filesystem out of it) at RATE per second, and
reads the tool's output as it comes, ticking off every sequence number.

Every INTERVAL seconds it samples the tool's RSS and CPU time. At the end it
stops the workload, waits for the tool to catch up, stops it with SIGINT and
reads its summary line (events, lost). It prints a table and writes
bench/SOAK.md. Not a test: it reports, it does not pass or fail on numbers;
the exit status is non-zero only when the tool failed, missed an event or
reported loss.

    .venv/bin/python bench/soak.py                      # 10 min at 20,000 opens/s
    .venv/bin/python bench/soak.py --minutes 1 --rate 5000
    .venv/bin/python bench/soak.py --tool execsnoop      # 10 min at 200 execs/s
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE)]

from run import machine  # noqa: E402  - same header as bench/RESULTS.md

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CATCH_UP = 30.0          # s to wait for the last event after the workload stops
QUIET = 2.0              # s without output that counts as caught up


@dataclass(frozen=True)
class Soaked:
    """A tool the soak can run, and the workload that feeds it."""
    argv: tuple[str, ...]
    rate: int                    # default events per second
    action: str                  # what the workload does per event (--workload mode)


TOOLS = {
    "opensnoop": Soaked(("opensnoop", "--json"), 20_000, "open"),
    "execsnoop": Soaked(("execsnoop", "--json"), 200, "exec"),
}


# --- the workload (this script again, in --workload mode) ---------------------

def _event(action: str, path: str) -> None:
    if action == "open":
        try:
            os.close(os.open(path, os.O_RDONLY))
        except OSError:
            pass
    else:  # exec: /bin/true with the numbered path as its argument
        pid = os.fork()
        if pid == 0:
            try:
                os.execv("/bin/true", ["/bin/true", path])
            finally:
                os._exit(127)
        os.waitpid(pid, 0)


def workload(action: str, rate: int, prefix: str) -> None:
    """Events at `rate` per second until SIGTERM; prints how many on exit.
    Paced against the clock, so a slow moment is made up at once."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    t0, done = time.monotonic(), 0
    while not stop:
        due = int((time.monotonic() - t0) * rate)
        while done < due and not stop:
            _event(action, f"{prefix}{done}")
            done += 1
        time.sleep(0.001)
    print(done, flush=True)


# --- the session -------------------------------------------------------------

@dataclass
class Sample:
    t: float
    rss_mb: float
    cpu_s: float
    seen: int


@dataclass
class Session:
    tool: str
    rate: int
    seconds: float
    caused: int = 0
    seen: bytearray = field(default_factory=bytearray)   # one byte per sequence number
    captured: int = 0
    duplicates: int = 0
    events: int | None = None          # the tool's summary: every event it printed
    lost: int | None = None
    lost_lines: int = 0
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None


def _proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MB, CPU seconds) of a live process."""
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * PAGE / 1e6
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / TICK


class Reader:
    """The tool's stdout, line by line, without blocking the sampling."""

    def __init__(self, proc: subprocess.Popen, session: Session, prefix: str) -> None:
        self.proc, self.s, self.prefix = proc, session, prefix
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ)
        self.partial = b""
        self.last_data = time.monotonic()
        self.meta: dict | None = None

    def pump(self, timeout: float) -> bool:
        """Read what is there within `timeout`; False once the pipe is closed."""
        if not self.sel.select(timeout):
            return True
        chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
        if not chunk:
            return False
        self.last_data = time.monotonic()
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            self._line(line)
        return True

    def _line(self, line: bytes) -> None:
        key = self.prefix.encode()
        at = line.find(key)
        if at >= 0:                     # one of ours: tick its number off
            end = at + len(key)
            stop = end
            while stop < len(line) and 48 <= line[stop] <= 57:
                stop += 1
            seq = int(line[end:stop])
            seen = self.s.seen
            if seq >= len(seen):
                seen.extend(bytes(seq + 1 - len(seen) + (1 << 20)))
            if seen[seq]:
                self.s.duplicates += 1
            else:
                seen[seq] = 1
                self.s.captured += 1
            return
        if line.startswith(b'{"type":"event"'):
            return
        rec = json.loads(line)
        if rec["type"] == "meta":
            self.meta = rec
        elif rec["type"] == "lost":
            self.s.lost_lines += rec.get("count", 0)
        elif rec["type"] == "summary":
            self.s.events, self.s.lost = rec["events"], rec["lost"]


def soak(tool: str, rate: int, seconds: float, interval: float, log) -> Session:
    s = Session(tool, rate, seconds)
    prefix = f"/tmp/bpfprobes-soak-{uuid.uuid4().hex[:8]}-"
    argv = [str(ROOT / ".venv/bin/bpfprobes"), *TOOLS[tool].argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = Reader(proc, s, prefix)
    while reader.meta is None:                  # attached once the meta line is out
        if not reader.pump(30.0) or proc.poll() is not None:
            s.error = f"{tool} did not start: {proc.stderr.read().decode().strip()}"
            return s
    load = subprocess.Popen([sys.executable, __file__, "--workload", TOOLS[tool].action,
                             str(rate), prefix], stdout=subprocess.PIPE, text=True)
    t0 = next_sample = time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        if now >= next_sample:
            rss, cpu = _proc_stats(proc.pid)
            s.samples.append(Sample(now - t0, rss, cpu, s.captured))
            log(f"  {now - t0:6.0f} s  {s.captured:>10,} seen  RSS {rss:6.1f} MB  CPU {cpu:6.1f} s")
            next_sample += interval
        if not reader.pump(min(0.2, max(0.0, next_sample - now))):
            s.error = f"{tool} exited early: {proc.stderr.read().decode().strip()}"
            load.terminate()
            return s
    load.send_signal(signal.SIGTERM)
    s.caused = int(load.communicate(timeout=30)[0])
    deadline = time.monotonic() + CATCH_UP      # let the tool drain its buffers
    while s.captured < s.caused and time.monotonic() < deadline:
        reader.pump(0.2)
    while time.monotonic() - reader.last_data < QUIET and time.monotonic() < deadline:
        reader.pump(0.2)
    rss, cpu = _proc_stats(proc.pid)
    s.samples.append(Sample(time.monotonic() - t0, rss, cpu, s.captured))
    proc.send_signal(signal.SIGINT)
    while reader.pump(1.0):
        pass
    proc.wait(timeout=15)
    return s


def report(s: Session, info: dict) -> str:
    first, last = s.samples[0], s.samples[-1]
    warm = s.samples[min(1, len(s.samples) - 1)]     # after the first interval
    peak = max(x.rss_mb for x in s.samples)
    captured = s.captured
    cpu = last.cpu_s - first.cpu_s
    rows = [
        ("tool", f"bpfprobes {s.tool} (whole system, --json into a pipe)"),
        ("duration", f"{s.seconds / 60:.1f} min at {s.rate:,} events/s"),
        ("events caused", f"{s.caused:,}"),
        ("captured", f"{captured:,} ({100 * captured / max(1, s.caused):.3f}%)"
                     + (f", {s.duplicates} duplicates" if s.duplicates else "")),
        ("lost (tool's summary)", f"{s.lost}"),
        ("all events the tool printed", f"{s.events:,}" if s.events is not None else "-"),
        ("RSS at start / after 1st interval / end / peak",
         f"{first.rss_mb:.1f} / {warm.rss_mb:.1f} / {last.rss_mb:.1f} / {peak:.1f} MB"),
        ("RSS growth after warm-up", f"{last.rss_mb - warm.rss_mb:+.1f} MB"),
        ("tool CPU", f"{cpu:.1f} s ({cpu / max(1, captured) * 1e6:.1f} s per million events)"),
    ]
    samples = tabulate([(f"{x.t:.0f}", f"{x.seen:,}", f"{x.rss_mb:.1f}", f"{x.cpu_s:.1f}")
                        for x in s.samples], ("t (s)", "captured", "RSS (MB)", "CPU (s)"),
                       tablefmt="github", disable_numparse=True)
    return "\n".join([
        f"# Soak: bpfprobes {s.tool}",
        "",
        f"{info['date']}, kernel {info['kernel']}, commit {info['commit']}, {info['cpu']}, "
        f"load {info['load']:.2f} at start.",
        "",
        tabulate(rows, ("", ""), tablefmt="github"),
        "",
        "Samples:",
        "",
        samples,
        "",
    ])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tool", choices=sorted(TOOLS), default="opensnoop")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=int, help="events per second (default: per tool)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--out", default=str(HERE / "SOAK.md"))
    p.add_argument("--workload", nargs=3, metavar=("ACTION", "RATE", "PREFIX"),
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.workload:
        action, rate, prefix = args.workload
        workload(action, int(rate), prefix)
        return 0
    rate = args.rate or TOOLS[args.tool].rate
    info = machine()
    print(f"soak: {args.tool}, {args.minutes:g} min at {rate:,}/s", flush=True)
    s = soak(args.tool, rate, args.minutes * 60, args.interval, lambda m: print(m, flush=True))
    if s.error:
        print(f"soak: {s.error}", file=sys.stderr)
        return 1
    text = report(s, info)
    print(text)
    Path(args.out).write_text(text)
    ok = s.captured == s.caused and s.lost == 0 and not s.duplicates
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
