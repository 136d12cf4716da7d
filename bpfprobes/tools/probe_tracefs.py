"""`bpfprobes probe --backend tracefs`: the same specs as kernel dynamic events
(dynevents.py) in a trace instance of our own, read from its trace_pipe
(tracepipe.py), printed as the BPF backend prints them.

What the kernel's own events cannot do is refused up front, in one line:
tracepoint specs, --filter, --latency pairs, user stacks, counting, rate limits.
"""
from __future__ import annotations

import os

from bpfprobes import __version__
from bpfprobes.backends.tracefs import tracepipe
from bpfprobes.backends.tracefs.backend import TracefsBackend, kind_letter
from bpfprobes.base.errors import KernelError, UsageError
from bpfprobes.base.safetext import for_terminal
from bpfprobes.kernel import features, tracectx
from bpfprobes.kernel.running import Kernel
from bpfprobes.plan.probeplan import Plan
from bpfprobes.present import probefmt
from bpfprobes.present.output import Column, JsonOutput, Quiet, TextOutput
from bpfprobes.session import loop
from bpfprobes.session.core import Session
from bpfprobes.tools.shared import Clock


def unsupported(plan: Plan, o) -> str | None:
    """What this backend cannot do of what was asked, or None."""
    asks = [("a tracepoint spec", any(p.spec.kind == "tracepoint" for p in plan.probes)),
            ("a USDT spec (u:)", any(p.spec.usdt is not None for p in plan.probes)),
            ("--filter", plan.options.filter is not None), ("--latency", o.latency),
            ("-U", o.user_stack), ("--count", o.count), ("--rate-limit", o.rate_limit),
            ("--comm", o.comm is not None)]
    return next((what for what, asked in asks if asked), None)


def refuse_unsupported(plan: Plan, o) -> None:
    """What this backend cannot do, said before anything is created."""
    what = unsupported(plan, o)
    if what is not None:
        raise UsageError(f"{what} is not available with --backend tracefs",
                         "use the BPF backend (--backend bpf)")


def _json(plan: Plan, ln: tracepipe.Line, wall, ctx: tracectx.Context,
          counts: dict | None = None) -> dict:
    """An event as the BPF backend's JSON; an ambiguous one (see tracepipe) says so,
    with its raw text, and null for what could not be split. A value that does not
    read as its type is null too, counted in counts["unparsed"]."""
    p = next(q for q in plan.probes if q.event == ln.event)
    values = {}
    for s in p.layout.slots:
        text = ln.values.get(s.name)
        values[s.name] = tracepipe.typed(text, kind_letter(s))
        if values[s.name] is None and text not in (None, tracepipe.FAULT) and counts is not None:
            counts["unparsed"] = counts.get("unparsed", 0) + 1
    out = {"probe": ln.event, "pid": ln.pid, "tid": ln.tid, "comm": ln.comm, "cpu": ln.cpu,
           "ts": wall(ln.ts_ns), "ts_ns": ln.ts_ns, "args": values,
           "context": ctx.as_dict()}
    if ln.where:
        out["where"] = ln.where
    names = {s.name: probefmt.errno_of(p, s, values[s.name]) for s in p.layout.slots
             if values[s.name] is not None}
    names = {k: v for k, v in names.items() if v}
    if names:
        out["errno"] = names
    if ln.stack:
        out["kstack"] = ln.stack
    if ln.ambiguous:
        out["ambiguous"] = True
        out["raw"] = _raw(ln)
    return out


def _raw(ln: tracepipe.Line) -> str:
    """The text the event was read from, stray lines before it included."""
    return f"{ln.lead}\n{ln.raw}" if ln.lead else ln.raw


def trace(k: Kernel, plan: Plan, o, prog: str, why: str) -> int:
    """`o`: the probe tool's Options."""
    refuse_unsupported(plan, o)
    if k.tracefs is None:
        raise KernelError("tracefs is not mounted", "mount -t tracefs nodev /sys/kernel/tracing")
    for p in plan.probes:
        need = "uprobes" if p.spec.is_uprobe else "kprobes"
        if not features.check(k, need).available:
            raise KernelError(f"cannot use kernel dynamic events for {p.spec.text}: "
                              f"{features.check(k, need).why}")
    sink = JsonOutput(prog) if o.json else _Text(prog, header=o.header)
    # JSON lines are the record: --quiet silences the text lines only
    shown = Quiet(sink) if o.quiet and not o.json else sink
    ctx = tracectx.Decoder(k.abi.name)
    clock = Clock()
    counts: dict[str, int] = {}

    def on_event(ln: tracepipe.Line) -> bool:
        if o.pid is not None and ln.pid != o.pid:
            return False
        if o.tid is not None and ln.tid != o.tid:
            return False
        if o.json:
            shown.event(_json(plan, ln, clock.wall, ctx(_ctx_fields(ln)), counts))
        else:
            # trace_pipe prints comm and strings raw: escaped for the terminal (a
            # swallowed line's newline shows as \n: one output line per event)
            mark = f" {AMBIGUOUS_MARK}" if ln.ambiguous else ""
            shown.event("\n".join([for_terminal(_raw(ln)) + mark,
                                   *(f" => {for_terminal(f)}" for f in ln.stack)]))
        if ln.ambiguous:                    # shown, but not an event the limit or total counts
            counts["ambiguous"] = counts.get("ambiguous", 0) + 1
        return not ln.ambiguous

    def meta(live) -> dict:
        return {"version": __version__, "kernel": k.release, "arch": k.abi.name,
                "backend": "tracefs", "why": why, **live.details, "startup_s": live.startup_s}

    def at_exit(_summary) -> dict:
        # ambiguous: shown flagged, not counted as events (the traced program could
        # have forged them); unparsed: values that did not read as their type (null)
        return {"ambiguous": counts.get("ambiguous", 0), "unparsed": counts.get("unparsed", 0)}

    buffer_kb = max(4, o.buffer_pages * os.sysconf("SC_PAGE_SIZE") // 1024)
    Session(prog, k, TracefsBackend(k, plan, buffer_kb, o.stack), sink, lambda _b: on_event,
            loop.Limits(o.duration, o.max_events), meta, verbose=o.verbose,
            at_exit=at_exit).run()
    return 0


class _Text(TextOutput):
    """ftrace's own lines (escaped), and loss said as the trace buffer's."""

    def __init__(self, prog: str, header: bool) -> None:
        super().__init__(prog, [Column(probefmt.FTRACE_HEADER, 0, lambda text: text,
                                       escape=False)], header=header)

    def lost(self, count: int, total: int) -> None:
        self.out.flush()
        self.err.write(f"{self.tool}: lost {count} events ({total} in all: trace buffer overrun)\n")
        self.err.flush()

    def summary(self, s: dict) -> None:
        self.out.flush()
        odd = "".join(f", {s[k]} {k}" for k in ("ambiguous", "unparsed") if s[k])
        self.err.write(f"{self.tool}: {s['events']} events{odd}, {s['lost']} lost (trace buffer "
                       f"overrun), {s['elapsed']:.1f} s, stopped by {s['reason']}\n")
        self.err.flush()


AMBIGUOUS_MARK = "[ambiguous]"


def _ctx_fields(ln: tracepipe.Line) -> dict:
    return {"cpu": ln.cpu, "source": tracectx.SOURCE_FTRACE, "implied": 0, "preempt": 0,
            "flags": ln.flags}
