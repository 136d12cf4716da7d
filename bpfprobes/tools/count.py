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
from bpfprobes.backends.bpf import tables
from bpfprobes.backends.bpf.backend import BpfBackend
from bpfprobes.backends.bpf.loaded import LoadedProgram
from bpfprobes.base.safetext import for_terminal
from bpfprobes.gen import codegen
from bpfprobes.kernel.running import Kernel, current
from bpfprobes.plan import countplan, runconfig
from bpfprobes.present import exporter, metricrows
from bpfprobes.present.output import JsonOutput, TextOutput
from bpfprobes.session import loop
from bpfprobes.session.core import Live, Session
from bpfprobes.tools import shared

PROG = "bpfprobes count"
COUNT_KEYS = 10240            # (target, pid, comm) rows kept with --by; beyond: `other` rows
BY = countplan.BY          # --by's keys (the plan's, read by the CLI without this module)


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
OTHER = "(other)"               # the row of calls past the table's rows (metrics.h)


def labels_of(names: list[str], by: str | None) -> metricrows.Labels:
    """count's labels: the target, and the process id and/or name with --by."""
    return metricrows.Labels("target", tuple(names), pid=bool(by and "pid" in by),
                             comm=bool(by and "comm" in by))


def metric_families(counts: dict, labels: metricrows.Labels, lost: int) -> list:
    """bpfprobes_calls_total{target[, pid][, comm][, other]} and bpfprobes_lost_events_total."""
    return [metricrows.counter("calls", "Calls counted in the kernel", labels, counts),
            exporter.counter("lost_events", "Calls not counted (full table, skipped runs)",
                             [], [([], lost)])]


class CountTables(tables.TableReader):
    """The transport of a counting program (count, serve's parts, --hist): its table,
    summed over CPUs, as {(label values, other?): Totals} whenever read(), and once
    more at the stop while still attached (`final`). The table is metrics.h's rows,
    or count's array indexed by target (without per-task labels)."""

    def __init__(self, loaded: LoadedProgram, labels: metricrows.Labels) -> None:
        super().__init__(loaded)
        self._program = loaded
        self.labels = labels
        self.final: dict = {}

    def read(self) -> dict:
        loaded = self._program
        if not loaded.has_map("counts"):
            return metricrows.fold(tables.percpu_rows(loaded, "metrics"),
                                   tables.percpu_rows(loaded, "metric_other"), self.labels)
        out: dict = {}
        for raw, per_cpu in loaded.table_items("counts"):
            target = int.from_bytes(raw[:4], "little")
            values = (self.labels.names[target],) if self.labels.index_label else ()
            if sum(per_cpu):
                out.setdefault((values, False), metricrows.Totals()).add(sum(per_cpu), 0, ())
        return out

    def finish(self) -> None:
        self.final = self.read()
        super().finish()


def rows(counts: dict, labels: metricrows.Labels, seconds: float) -> list[dict]:
    out = []
    for (values, other), t in sorted(counts.items(), key=lambda kv: (-kv[1].count, kv[0])):
        row = dict(zip(labels.label_names, values))
        if other:
            row.update({k: OTHER for k in row if k != "target"})
        elif labels.pid:
            row["pid"] = int(row["pid"])
        out.append({**row, "count": t.count, "rate": round(t.count / max(seconds, 1e-9), 1)})
    return out


def text_table(rs: list[dict], labels: metricrows.Labels) -> str:
    cols = [*labels.label_names, "count", "rate"]
    head = {"target": "FUNC", "pid": "PID", "comm": "COMM", "count": "COUNT", "rate": "RATE/s"}
    # targets (ELF symbols of any binary) and comms come from the traced system
    text = {"target", "comm"}
    return tabulate([[for_terminal(r[c]) if c in text and r[c] is not None else r[c]
                      for c in cols] for r in rs], headers=[head[c] for c in cols],
                    disable_numparse=True, colalign=["left"] * (len(cols) - 2) + ["right"] * 2) \
        if rs else "(no calls)"


class _Text(TextOutput):
    """count's text: a line saying what is counted, tables as they come, calls."""

    def __init__(self, prog: str, names: list[str]) -> None:
        super().__init__(prog, [], header=False)
        self.names = list(dict.fromkeys(names))     # a USDT probe's sites: one name

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
    defs: dict[str, object] = {"METRIC_SERIES": COUNT_KEYS if o.by else None,
                               **{d: True for d in BY.get(o.by or "", ())}}
    config = runconfig.pack(runconfig.COUNT, runconfig.task(skip_pid=os.getpid(), pid=o.pid))
    plan = countplan.attaching(k, targets)
    program = codegen.count_program(len(targets), defs, config, plan.counters)
    names = [t.name for t in targets]
    labels = labels_of(names, o.by)
    sink = JsonOutput(prog) if o.json else _Text(prog, names)
    readers: list[CountTables] = []

    def reader(loaded) -> CountTables:
        readers.append(CountTables(loaded, labels))
        return readers[-1]

    # BCC loads it (its hash table is read through BCC); nothing streams: a table reader
    backend = BpfBackend(k, program, plan.attaches, cacheable=False, reader=reader)
    window = {"last": {}, "at": 0.0, "next": None, "published": 0.0}
    # bound before anything is attached: a port in use is one line, nothing attached
    metrics = exporter.Exporter(*o.prometheus) if o.prometheus else None

    def publish(counts: dict, lost: int) -> None:
        metrics.publish(metric_families(counts, labels, lost))
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
        current_counts = readers[-1].read()     # one read of the table serves both
        if due_metrics:
            publish(current_counts, readers[-1].lost)
        if not due_interval:
            return
        last = window["last"]
        delta = {key: metricrows.Totals(t.count - last[key].count if key in last else t.count)
                 for key, t in current_counts.items()
                 if t.count > (last[key].count if key in last else 0)}
        table = rows(delta, labels, now - window["at"])
        sink.table("interval", table, time.strftime("%H:%M:%S\n") + text_table(table, labels))
        window.update(last=current_counts, at=now, next=max(window["next"] + o.interval, now))

    def at_exit(summary: loop.Summary) -> dict:
        totals = readers[-1].final
        if metrics is not None:
            publish(totals, readers[-1].final_lost)    # the last scrapes get it
        table = rows(totals, labels, summary.elapsed)
        sink.table("totals", table, time.strftime("%H:%M:%S ") + "totals\n"
                   + text_table(table, labels))
        return {"events": sum(t.count for t in totals.values())}

    def meta(live: Live) -> dict:
        return {"version": __version__, "kernel": k.release, "targets": len(targets),
                "attach": countplan.sharing(backend.loaded.attached),
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
