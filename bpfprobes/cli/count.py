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

from .. import __version__, codegen, countplan, runconfig, stream
from ..bpfbackend import BpfBackend
from ..decode import cstr
from ..kernel import Kernel, current
from ..output import JsonOutput, TextOutput
from ..safetext import for_terminal
from ..session import Live, Session
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


class CountTables(stream.PerfBuffer):
    """count's transport: no event stream, the kernel's table read at each
    interval and once more at the stop (while still attached); loss is the
    program's drops and the runs the kernel skipped, as for every program."""

    def __init__(self, loaded, by: str | None) -> None:
        super().__init__(loaded, direct=False)       # BCC loads count's program
        self.kind = "tables"
        self.counts = Counts(loaded["counts"], by)
        self.final: dict = {}

    def open(self, on_sample) -> None:
        pass

    def poll(self, timeout_ms: int) -> None:
        time.sleep(timeout_ms / 1000)

    def drain(self) -> None:
        pass

    def finish(self) -> None:
        self.final = self.counts.read()

    def close(self) -> None:
        pass


class _Text(TextOutput):
    """count's text: a line saying what is counted, tables as they come, calls."""

    def __init__(self, prog: str, names: list[str]) -> None:
        super().__init__(prog, [], header=False)
        self.names = names

    def meta(self, meta: dict) -> None:
        shown = for_terminal(", ".join(self.names[:3]))
        self.out.write(f"Counting {len(self.names)} targets ({shown}"
                       f"{', ...' if len(self.names) > 3 else ''}). Ctrl-C to end.\n")
        self.out.flush()

    def table(self, kind: str, rows: list[dict], text: str) -> None:
        self.out.write(text + "\n")            # text_table escaped what came from the system
        self.out.flush()

    def summary(self, s: dict) -> None:
        self.out.flush()
        self.err.write(f"{self.tool}: {s['events']} calls, {s['lost']} lost, "
                       f"{s['elapsed']:.1f} s, stopped by {s['reason']}\n")
        self.err.flush()


def count_targets(k: Kernel, targets: list[countplan.Target], args, prog: str = PROG,
                  pid: int | None = None) -> int:
    """Attach a counter to each target, print tables, detach; the run's exit status."""
    defs: dict[str, object] = {"COUNT_KEYS": COUNT_KEYS if args.by else None,
                               **{d: True for d in BY.get(args.by or "", ())}}
    config = runconfig.pack(runconfig.COUNT, runconfig.task(skip_pid=os.getpid(), pid=pid))
    program = codegen.count_program(len(targets), defs, config)
    names = [t.name for t in targets]
    sink = JsonOutput(prog) if args.json else _Text(prog, names)
    tables: list[CountTables] = []

    def reader(loaded) -> CountTables:
        tables.append(CountTables(loaded, args.by))
        return tables[-1]

    # BCC loads it (its hash table is read through BCC); nothing streams: a table reader
    backend = BpfBackend(k, program, [t.attach for t in targets], cacheable=False, reader=reader)
    window = {"last": {}, "at": 0.0, "next": None}

    def live() -> None:
        now = time.monotonic()
        window.update(at=now, next=now + args.interval if args.interval else None)

    def tick() -> None:
        now = time.monotonic()
        if window["next"] is None or now < window["next"]:
            return
        current_counts, last = tables[-1].counts.read(), window["last"]
        delta = {key: n - last.get(key, 0) for key, n in current_counts.items()
                 if n > last.get(key, 0)}
        table = rows(delta, names, now - window["at"], args.by)
        sink.table("interval", table, time.strftime("%H:%M:%S\n") + text_table(table, args.by))
        window.update(last=current_counts, at=now, next=max(window["next"] + args.interval, now))

    def at_exit(summary: stream.Summary) -> dict:
        table = rows(tables[-1].final, names, summary.elapsed, args.by)
        sink.table("totals", table, time.strftime("%H:%M:%S ") + "totals\n"
                   + text_table(table, args.by))
        return {"events": sum(tables[-1].final.values())}

    def meta(live: Live) -> dict:
        return {"version": __version__, "kernel": k.release, "targets": len(targets),
                "by": args.by, "pid": pid, "startup_s": live.startup_s}

    Session(prog, k, backend, sink, lambda _b: lambda _raw: False,
            stream.Limits(args.duration, None), meta, verbose=args.verbose,
            on_live=live, on_tick=tick, at_exit=at_exit).run()
    return 0


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
