"""count: how often kernel functions, tracepoints or user functions fire, counted
in the kernel (BCC's funccount, with tracepoints and uprobes in one table).

Check a function's rate with this before tracing it event by event: a
per-event probe on a path called a million times a second costs the system
far more than a counter does.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

from tabulate import tabulate

from .. import __version__, codegen, countplan, loader, perfring, runconfig, stream
from ..decode import cstr
from ..kernel import Kernel, current
from ..output import JsonOutput
from ..safetext import for_terminal
from . import common

PROG = "bpfprobes count"
COUNT_KEYS = 10240            # (target, pid, comm) rows kept with --by; beyond: counted drops
BY = {"pid": ("COUNT_BY_PID",), "comm": ("COUNT_BY_COMM",),
      "pid,comm": ("COUNT_BY_PID", "COUNT_BY_COMM")}

EXAMPLES = """\
    bpfprobes count 'vfs_*'                      # kernel functions: calls until Ctrl-C
    bpfprobes count -i 1 'tcp_send*'             # a table every second
    bpfprobes count --by comm 'vfs_read' 'vfs_write'   # by process name
    bpfprobes count -p 1234 --by pid 't:syscalls:sys_enter_*'
    bpfprobes count 'p:/lib/x86_64-linux-gnu/libc.so.6:malloc' -d 5
    bpfprobes count --force --limit 5000 'ext4_*'    # more targets than the default limit
    bpfprobes count --json -d 10 't:sched:sched_*'
    bpfprobes probe --count 'p:do_sys_openat2' 'r:do_sys_openat2'   # the same for probe specs
"""


def build_parser() -> common.Parser:
    p = common.parser(PROG, "Count calls of kernel functions, tracepoints and user functions "
                      "in the kernel.", EXAMPLES)
    p.add_argument("patterns", nargs="+", metavar="PATTERN",
                   help="FUNC (wildcards * ?), t:CAT:EVENT, or p:/PATH:FUNC")
    add_count_options(p)
    p.add_argument("-p", "--pid", type=common.pid_arg, help="only this process")
    p.add_argument("-d", "--duration", type=common.seconds_arg, metavar="SECONDS",
                   help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="JSON lines (meta, interval, summary)")
    p.add_argument("--limit", type=common.count_arg, default=countplan.DEFAULT_LIMIT,
                   metavar="N", help=f"most targets a pattern may attach (default "
                                     f"{countplan.DEFAULT_LIMIT})")
    p.add_argument("--force", action="store_true", help="attach more than --limit targets")
    p.add_argument("-v", "--verbose", action="store_true", help="list what is attached")
    return p


def add_count_options(p: argparse.ArgumentParser) -> None:
    """Options `probe --count` shares."""
    p.add_argument("--by", choices=sorted(BY), help="count per process id and/or name too")
    p.add_argument("-i", "--interval", type=common.seconds_arg, metavar="SECONDS",
                   help="print the counts of each interval")


class Counts:
    """The kernel's table, read and summed over CPUs: {(target, pid, comm): calls}."""

    def __init__(self, table, by: str | None) -> None:
        self.table = table
        self.by = by

    def read(self) -> dict[tuple[int, int | None, str | None], int]:
        out: dict[tuple[int, int | None, str | None], int] = {}
        if self.by is None:
            for key, per_cpu in self.table.items():
                total = sum(per_cpu)
                if total:
                    out[(key.value, None, None)] = total
            return out
        for key, per_cpu in self.table.items():
            k = (key.target, key.pid if "pid" in self.by else None,
                 cstr(bytes(key.comm)) if "comm" in self.by else None)
            out[k] = out.get(k, 0) + sum(per_cpu)
        return out


def rows(counts: dict, names: list[str], seconds: float, by: str | None) -> list[dict]:
    out = []
    for (target, pid, comm), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0])):
        row = {"target": names[target], "count": n, "rate": round(n / max(seconds, 1e-9), 1)}
        if by and "pid" in by:
            row["pid"] = pid
        if by and "comm" in by:
            row["comm"] = comm
        out.append(row)
    return out


def text_table(rs: list[dict], by: str | None) -> str:
    cols = ["target", *(c for c in ("pid", "comm") if by and c in by), "count", "rate"]
    head = {"target": "FUNC", "pid": "PID", "comm": "COMM", "count": "COUNT", "rate": "RATE/s"}
    # targets (ELF symbols of any binary) and comms come from the traced system
    text = {"target", "comm"}
    return tabulate([[for_terminal(r[c]) if c in text and r[c] is not None else r[c]
                      for c in cols] for r in rs], headers=[head[c] for c in cols],
                    disable_numparse=True, colalign=["left"] * (len(cols) - 2) + ["right"] * 2) \
        if rs else "(no calls)"


def count_targets(k: Kernel, targets: list[countplan.Target], args, prog: str = PROG,
                  pid: int | None = None) -> int:
    """Attach a counter to each target, print tables, detach; the run's exit status."""
    defs: dict[str, object] = {"COUNT_KEYS": COUNT_KEYS if args.by else None,
                               **{d: True for d in BY.get(args.by or "", ())}}
    config = runconfig.pack(runconfig.COUNT, runconfig.task(skip_pid=os.getpid(), pid=pid))
    program = codegen.count_program(len(targets), defs, config)
    names = [t.name for t in targets]
    sink = JsonOutput(prog) if args.json else None
    stop = stream.stop_signals()
    stop.check("planning")
    started = time.monotonic()
    for stale in loader.reap_stale_events(k.tracefs):
        if args.verbose:
            print(f"{prog}: removed {stale}, left by a killed run", file=sys.stderr)
    stop.check("reaping")
    # BCC compiles in this process (uninterruptible): a signal during it is seen after
    with loader.compile_program(program, k.headers) as loaded:
        stop.check("compiling")
        for t in targets:
            stop.check("attaching")
            loaded.attach(t.attach)
        stop.check("attaching")
        live = time.monotonic()
        meta = {"version": __version__, "kernel": k.release, "targets": len(targets),
                "by": args.by, "pid": pid, "startup_s": round(live - started, 3)}
        if args.verbose:
            for a in loaded.attached:
                print(f"{prog}: attached {for_terminal(a.describe())}", file=sys.stderr)
        if sink is not None:
            sink.meta(meta)
            sink.flush()
        else:
            print(f"Counting {len(targets)} targets ({for_terminal(', '.join(names[:3]))}"
                  f"{', ...' if len(targets) > 3 else ''}). Ctrl-C to end.", flush=True)
        counts = Counts(loaded["counts"], args.by)
        reason = _wait(args, stop, counts, names, sink, live)
        final, ended = counts.read(), time.monotonic()
        drops = sum(loaded["drops"][loaded["drops"].Key(0)])
        # runs the kernel skipped (nested in another BPF program): calls not counted
        misses = sum(perfring.prog_info(fd)["recursion_misses"] for fd in loaded.prog_fds())
        drops += misses
    elapsed = ended - live
    table = rows(final, names, elapsed, args.by)
    calls = sum(final.values())
    if sink is not None:
        sink.table("totals", table, "")
        sink.summary({"events": calls, "lost": drops, "reason": reason,
                      "elapsed": round(elapsed, 3), "recursion_misses": misses})
    else:
        print(time.strftime("%H:%M:%S ") + "totals\n" + text_table(table, args.by), flush=True)
        print(f"{prog}: {calls} calls, {drops} lost, {elapsed:.1f} s, stopped by {reason}",
              file=sys.stderr)
    return 0


def _wait(args, signals, counts: Counts, names: list[str], sink, live: float) -> str:
    """Until a signal or -d; with -i, the counts of each interval as they end."""
    deadline = live + args.duration if args.duration else None
    last, last_t = {}, live
    next_report = live + args.interval if args.interval else None
    while True:
        now = time.monotonic()
        if signals.caught is not None:
            return signals.reason
        if deadline is not None and now >= deadline:
            return "duration"
        if next_report is not None and now >= next_report:
            current_counts = counts.read()
            delta = {key: n - last.get(key, 0) for key, n in current_counts.items()
                     if n > last.get(key, 0)}
            table = rows(delta, names, now - last_t, args.by)
            if sink is not None:
                sink.table("interval", table, "")
                sink.flush()
            else:
                print(time.strftime("%H:%M:%S\n") + text_table(table, args.by), flush=True)
            last, last_t = current_counts, now
            next_report = max(next_report + args.interval, now)
        waits = [0.1] + [t - now for t in (deadline, next_report) if t is not None]
        time.sleep(max(0.0, min(waits)))


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    common.require_root()
    k = current()
    targets = countplan.expand(k, args.patterns, args.limit, args.force, args.pid)
    return count_targets(k, targets, args, pid=args.pid)


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
