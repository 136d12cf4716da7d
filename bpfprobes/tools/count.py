"""count: how often kernel functions, tracepoints or user functions fire, counted
in the kernel (BCC's funccount, with tracepoints and uprobes in one table).

Check a function's rate with this before tracing it event by event: a
per-event probe on a path called a million times a second costs the system
far more than a counter does.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from tabulate import tabulate

from bpfprobes import __version__
from bpfprobes.backends.bpf import perfbuffer
from bpfprobes.backends.bpf.backend import BpfBackend
from bpfprobes.backends.bpf.loaded import LoadedProgram
from bpfprobes.base.safetext import for_terminal
from bpfprobes.gen import codegen
from bpfprobes.kernel.running import Kernel, current
from bpfprobes.plan import countplan, runconfig
from bpfprobes.present import exporter
from bpfprobes.present.decode import COUNT_KEY, cstr
from bpfprobes.present.output import JsonOutput, TextOutput
from bpfprobes.session import loop
from bpfprobes.session.core import Live, Session
from bpfprobes.tools import shared

PROG = "bpfprobes count"
COUNT_KEYS = 10240            # (target, pid, comm) rows kept with --by; beyond: counted drops
BY = {"pid": ("COUNT_BY_PID",), "comm": ("COUNT_BY_COMM",),
      "pid,comm": ("COUNT_BY_PID", "COUNT_BY_COMM")}


@dataclass(frozen=True)
class Options:
    patterns: list[str] = field(default_factory=list)    # FUNC, t:CAT:EVENT, p:/PATH:FUNC
    by: str | None = None               # BY's keys: per process id and/or name too
    interval: float | None = None       # a table each interval
    pid: int | None = None
    duration: float | None = None
    json: bool = False
    limit: int = countplan.DEFAULT_LIMIT    # most targets a pattern may attach
    force: bool = False                 # more than that
    verbose: bool = False
    prometheus: tuple[str, int] | None = None   # also serve /metrics here


PUBLISH_S = 0.5                 # the metrics' snapshot is at most this old


def metric_families(counts: dict, names: list[str], by: str | None, lost: int) -> list:
    """bpfprobes_calls_total{target[, pid][, comm]} and bpfprobes_lost_events_total."""
    labels = ["target", *(c for c in ("pid", "comm") if by and c in by)]

    def values(target: int, pid: int | None, comm: str | None) -> list[str]:
        return [names[target], *([str(pid)] if "pid" in labels else []),
                *([comm] if "comm" in labels else [])]
    return [exporter.counter("calls", "Calls counted in the kernel", labels,
                             ((values(*key), n) for key, n in counts.items())),
            exporter.counter("lost_events", "Calls not counted (full table, skipped runs)",
                             [], [([], lost)])]


class Counts:
    """The kernel's table, read and summed over CPUs: {(target, pid, comm): calls}."""

    def __init__(self, loaded: LoadedProgram, by: str | None) -> None:
        self.loaded = loaded
        self.by = by

    def read(self) -> dict[tuple[int, int | None, str | None], int]:
        out: dict[tuple[int, int | None, str | None], int] = {}
        for raw, per_cpu in self.loaded.table_items("counts"):
            if self.by is None:                 # an array indexed by target
                key = (int.from_bytes(raw[:4], "little"), None, None)
            else:
                row = COUNT_KEY.unpack(raw)
                key = (row["target"], row["pid"] if "pid" in self.by else None,
                       cstr(row["comm"]) if "comm" in self.by else None)
            if sum(per_cpu):
                out[key] = out.get(key, 0) + sum(per_cpu)
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


class CountTables(perfbuffer.PerfBuffer):
    """count's transport: no event stream, the kernel's table read at each
    interval and once more at the stop (while still attached); loss is the
    program's drops and the runs the kernel skipped, as for every program."""

    def __init__(self, loaded: LoadedProgram, by: str | None) -> None:
        super().__init__(loaded, direct=False)       # BCC loads count's program
        self.kind = "tables"
        self.counts = Counts(loaded, by)
        self.final: dict = {}
        self.final_lost = 0

    def open(self, on_sample) -> None:
        pass

    def poll(self, timeout_ms: int) -> None:
        time.sleep(timeout_ms / 1000)

    def drain(self) -> None:
        pass

    def finish(self) -> None:
        self.final = self.counts.read()
        self.final_lost = self.lost         # the maps are gone once detached

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


def count_targets(k: Kernel, targets: list[countplan.Target], o: Options,
                  prog: str = PROG) -> int:
    """Attach a counter to each target, print tables, detach; the run's exit status."""
    defs: dict[str, object] = {"COUNT_KEYS": COUNT_KEYS if o.by else None,
                               **{d: True for d in BY.get(o.by or "", ())}}
    config = runconfig.pack(runconfig.COUNT, runconfig.task(skip_pid=os.getpid(), pid=o.pid))
    program = codegen.count_program(len(targets), defs, config)
    names = [t.name for t in targets]
    sink = JsonOutput(prog) if o.json else _Text(prog, names)
    tables: list[CountTables] = []

    def reader(loaded) -> CountTables:
        tables.append(CountTables(loaded, o.by))
        return tables[-1]

    # BCC loads it (its hash table is read through BCC); nothing streams: a table reader
    backend = BpfBackend(k, program, [t.attach for t in targets], cacheable=False, reader=reader)
    window = {"last": {}, "at": 0.0, "next": None, "published": 0.0}
    # bound before anything is attached: a port in use is one line, nothing attached
    metrics = exporter.Exporter(*o.prometheus) if o.prometheus else None

    def publish(counts: dict, lost: int) -> None:
        metrics.publish(metric_families(counts, names, o.by, lost))
        window["published"] = time.monotonic()

    def live() -> None:
        now = time.monotonic()
        window.update(at=now, next=now + o.interval if o.interval else None)

    def tick() -> None:
        now = time.monotonic()
        due_metrics = metrics is not None and now - window["published"] >= PUBLISH_S
        due_interval = window["next"] is not None and now >= window["next"]
        if not (due_metrics or due_interval):
            return
        current_counts = tables[-1].counts.read()      # one read of the table serves both
        if due_metrics:
            publish(current_counts, tables[-1].lost)
        if not due_interval:
            return
        last = window["last"]
        delta = {key: n - last.get(key, 0) for key, n in current_counts.items()
                 if n > last.get(key, 0)}
        table = rows(delta, names, now - window["at"], o.by)
        sink.table("interval", table, time.strftime("%H:%M:%S\n") + text_table(table, o.by))
        window.update(last=current_counts, at=now, next=max(window["next"] + o.interval, now))

    def at_exit(summary: loop.Summary) -> dict:
        if metrics is not None:
            publish(tables[-1].final, tables[-1].final_lost)    # the last scrapes get it
        table = rows(tables[-1].final, names, summary.elapsed, o.by)
        sink.table("totals", table, time.strftime("%H:%M:%S ") + "totals\n"
                   + text_table(table, o.by))
        return {"events": sum(tables[-1].final.values())}

    def meta(live: Live) -> dict:
        return {"version": __version__, "kernel": k.release, "targets": len(targets),
                "by": o.by, "pid": o.pid, "startup_s": live.startup_s,
                **({"metrics": f"http://{metrics.address}/metrics"} if metrics else {})}

    try:
        Session(prog, k, backend, sink, lambda _b: lambda _raw: False,
                loop.Limits(o.duration, None), meta, verbose=o.verbose,
                on_live=live, on_tick=tick, at_exit=at_exit).run()
    finally:
        if metrics is not None:
            metrics.close()
    return 0


def run(o: Options) -> int:
    shared.require_root()
    k = current()
    targets = countplan.expand(k, o.patterns, o.limit, o.force, o.pid)
    return count_targets(k, targets, o)
