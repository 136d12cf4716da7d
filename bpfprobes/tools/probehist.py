"""probe --hist: a histogram per probe (and per process with --by) of its latency
or of a captured argument (--hist-of), bucketed in the kernel (bpf_c/metrics.h);
no event leaves it. Printed each -i interval (that interval's calls) and at exit
(the whole run), as bpftrace's hist() and BCC's funclatency print them."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from bpfprobes import __version__
from bpfprobes.backends.bpf.backend import BpfBackend
from bpfprobes.base.errors import UsageError
from bpfprobes.base.safetext import for_terminal
from bpfprobes.gen import codegen, probegen
from bpfprobes.kernel.running import Kernel
from bpfprobes.plan import metricplan, probeplan
from bpfprobes.plan.probeattach import attachments
from bpfprobes.present import histogram, metricrows
from bpfprobes.present.output import JsonOutput, TextOutput
from bpfprobes.session import loop
from bpfprobes.session.core import Live, Session
from bpfprobes.tools import count

UNITS = {"ns": 1, "us": 1000, "ms": 1_000_000}
SERIES = 4_096                  # histograms kept (probe x process); beyond: one other row


def metric_options(o, pairs: bool) -> metricplan.Options:
    """The plan's metrics: by the asked keys, bucketing the latency or --hist-of."""
    if o.hist_of is None and not (o.latency or pairs):
        raise UsageError("--hist buckets a latency (a p: and r: pair, or --latency) or an "
                         "argument (--hist-of NAME), and there is neither",
                         "e.g. --hist 'p:FUNC' 'r:FUNC', or --hist --hist-of ret 'r:FUNC "
                         "ret=$retval'")
    # a latency's log2 buckets go to 2^40 ns (18 min); an argument's to 2^64
    slots = metricplan.SLOTS if o.hist_of is None or o.linear else metricplan.VALUE_SLOTS
    return metricplan.Options(tuple((o.by or "").split(",")) if o.by else (), SERIES,
                              timed=o.hist_of is None, value=o.hist_of,
                              linear=o.linear,
                              divide=UNITS[o.unit] if o.hist_of is None else 1, slots=slots)


def run(k: Kernel, plan: probeplan.Plan, o, prog: str) -> loop.Summary:
    m = metric_options(o, plan.pairs > 0)
    plan = probeplan.with_metrics(plan, m)
    signed = frozenset(p.event for p, pl in zip(plan.probes, plan.metric_labels)
                       if pl.value is not None and pl.value.type.kind == "s")
    labels = metricrows.Labels("probe", tuple(p.event for p in plan.probes),
                               pid="pid" in m.by, comm="comm" in m.by)
    unit = o.unit if m.value is None else None
    return session(k, prog, probegen.probe_program(plan, k.abi), attachments(k, plan), labels,
                   Hist(histogram.Buckets(m.slots, m.linear), unit,
                        m.value or f"latency in {unit}", f"{len(plan.probes)} probes", signed),
                   o, {"of": m.value or "latency", "by": o.by})


@dataclass(frozen=True)
class Hist:
    """What a histogram run buckets, for its output."""
    buckets: histogram.Buckets
    unit: str | None            # a latency's; None: a value as it is
    what: str                   # "latency in us", an argument's name
    where: str                  # "2 probes", "IRQ 36"
    signed: frozenset = frozenset()     # the probes whose value is signed

    def of(self, probe: str) -> histogram.Buckets:
        return replace(self.buckets, signed=probe in self.signed)


def session(k: Kernel, prog: str, program: codegen.Program, attaches: list, labels:
            metricrows.Labels, h: Hist, o, meta_extra: dict) -> loop.Summary:
    """A run of a program in metrics mode whose rows are histograms (probe --hist,
    irq --hist): each -i interval's printed, and the run's at exit."""
    sink = JsonOutput(prog) if o.json else _Text(prog, h.what, h.where)
    readers: list[count.CountTables] = []
    state = {"last": {}, "next": None}

    def reader(loaded) -> count.CountTables:
        readers.append(count.CountTables(loaded, labels))
        return readers[-1]

    backend = BpfBackend(k, program, attaches, cacheable=False, reader=reader)

    def show(kind: str, totals: dict, last: dict) -> None:
        for (values, other), t in sorted(totals.items()):
            before = last.get((values, other))
            slots = [n - (before.slots[i] if before and i < len(before.slots) else 0)
                     for i, n in enumerate(t.slots)]
            negative = t.negative - (before.negative if before else 0)
            if not any(slots) and not negative:
                continue
            keys = dict(zip(labels.label_names, values))
            if other:
                keys = {labels.index_label: keys[labels.index_label], "other": True}
            buckets = h.of(keys[labels.index_label])
            # a comm is the traced system's text: escaped here, where a newline would
            # otherwise start a line of our own
            head = ", ".join(for_terminal(str(v)) for v in keys.values())
            text = f"@[{head}]" + (f" ({h.unit})" if h.unit else "") + ":\n" + \
                histogram.text(slots, buckets, negative)
            sink.table(kind, [{**keys, **({"unit": h.unit} if h.unit else {}),
                               "buckets": histogram.json_buckets(slots, buckets, negative)}],
                       text + "\n")

    def live() -> None:
        state["next"] = time.monotonic() + o.interval if o.interval else None

    def tick() -> None:
        if state["next"] is None or time.monotonic() < state["next"]:
            return
        now_totals = readers[-1].read()
        show("interval", now_totals, state["last"])
        state.update(last=now_totals, next=max(state["next"] + o.interval, time.monotonic()))

    def at_exit(_summary) -> dict:
        totals = readers[-1].final
        show("totals", totals, {})
        return {"events": sum(t.count for t in totals.values())}

    def meta(live_: Live) -> dict:
        return {"version": __version__, "kernel": k.release, "probes": live_.attached,
                "hist": f"linear:{h.buckets.linear}" if h.buckets.linear else "log2",
                "unit": h.unit, **meta_extra, "startup_s": live_.startup_s}

    return Session(prog, k, backend, sink, lambda _b: lambda _raw: False,
                   loop.Limits(o.duration, None), meta, verbose=o.verbose,
                   throttled=o.rate_limit is not None, on_live=live, on_tick=tick,
                   at_exit=at_exit).run()


class _Text(TextOutput):
    """--hist's text: what is bucketed, as funclatency says it; then the histograms."""

    def __init__(self, prog: str, what: str, where: str) -> None:
        super().__init__(prog, [], header=False)
        self.what, self.where = what, where

    def meta(self, meta: dict) -> None:
        self.out.write(f"Bucketing {for_terminal(self.what)} of {for_terminal(self.where)} in "
                       "the kernel. Ctrl-C to end.\n")
        self.out.flush()
