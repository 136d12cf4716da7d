"""`bpfprobes probe --backend tracefs`: the same specs as kernel dynamic events
(dynevents.py) in a trace instance of our own, read from its trace_pipe
(tracepipe.py), printed as the BPF backend prints them.

What the kernel's own events cannot do is refused up front, in one line:
tracepoint specs, --filter, --latency pairs, user stacks, counting, rate limits.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
from dataclasses import replace

from .. import __version__, dynevents, features, probefmt, spec, stream, tracectx, tracepipe
from ..errors import KernelError, UsageError
from ..kernel import Kernel
from ..output import JsonOutput
from ..probeplan import Plan
from . import common

READ_BYTES = 1 << 20
POLL_S = 0.1


def unsupported(plan: Plan, args) -> str | None:
    """What this backend cannot do of what was asked, or None."""
    asks = [("a tracepoint spec", any(p.spec.kind == "tracepoint" for p in plan.probes)),
            ("--filter", plan.options.filter is not None), ("--latency", args.latency),
            ("-U", args.user_stack), ("--count", args.count), ("--rate-limit", args.rate_limit),
            ("--comm", args.comm is not None)]
    return next((what for what, asked in asks if asked), None)


def refuse_unsupported(plan: Plan, args) -> None:
    """What this backend cannot do, said before anything is created."""
    what = unsupported(plan, args)
    if what is not None:
        raise UsageError(f"{what} is not available with --backend tracefs",
                         "use the BPF backend (--backend bpf)")


def _kind_letter(slot) -> str:
    k = slot.type.kind
    return "symbol" if k == "symbol" else k if k in ("u", "s", "x") else "string"


def _json(plan: Plan, ln: tracepipe.Line, wall, ctx: tracectx.Context) -> dict:
    p = next(q for q in plan.probes if q.event == ln.event)
    values = {s.name: tracepipe.typed(ln.values.get(s.name, "(fault)"), _kind_letter(s))
              for s in p.layout.slots}
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
    return out


def trace(k: Kernel, plan: Plan, args, prog: str, why: str) -> int:
    refuse_unsupported(plan, args)
    if k.tracefs is None:
        raise KernelError("tracefs is not mounted", "mount -t tracefs nodev /sys/kernel/tracing")
    for p in plan.probes:
        need = "uprobes" if p.spec.is_uprobe else "kprobes"
        if not features.check(k, need).available:
            raise KernelError(f"cannot use kernel dynamic events for {p.spec.text}: "
                              f"{features.check(k, need).why}")
    started = time.monotonic()
    notes = [f"removed {r}, left by a killed run" for r in dynevents.reap(k.tracefs)]
    sink = JsonOutput(prog) if args.json else None
    names_of = {p.event: [s.name for s in p.layout.slots] for p in plan.probes}
    ctx = tracectx.Decoder(k.abi.name)
    clock = common.Clock()
    buffer_kb = max(4, args.buffer_pages * os.sysconf("SC_PAGE_SIZE") // 1024)
    with dynevents.Session(k.tracefs, buffer_kb=buffer_kb, stacks=args.stack) as session:
        (session.instance / "trace_clock").write_text("mono")  # bpf_ktime_get_ns()'s clock
        lines = []
        for p in plan.probes:
            up = p.uprobe.file_offset if p.uprobe else None
            s = replace(p.spec, group=session.group, event=p.event)
            line = spec.to_kprobe_events(s, k.abi, uprobe_offset=up)
            session.add("uprobe" if p.spec.is_uprobe else "kprobe", line, p.event)
            lines.append(line)
        fd = session.pipe()
        try:
            meta = {"version": __version__, "kernel": k.release, "arch": k.abi.name,
                    "backend": "tracefs", "why": why, "instance": str(session.instance),
                    "events": lines, "startup_s": round(time.monotonic() - started, 3)}
            with stream.catch_signals() as signals:
                if args.verbose:
                    for line in notes + [f"tracefs: {ln}" for ln in lines]:
                        print(f"{prog}: {line}", file=sys.stderr)
                    print(f"{prog}: live after {meta['startup_s']} s", file=sys.stderr)
                if sink is not None:
                    sink.meta(meta)
                    sink.flush()
                elif args.header:
                    print(probefmt.FTRACE_HEADER, flush=True)
                summary = _loop(fd, session, plan, args, names_of, ctx, clock, sink, signals,
                                prog)
        finally:
            os.close(fd)            # before the instance goes: an open pipe keeps it busy
    done = {"events": summary.events, "lost": summary.lost, "reason": summary.reason,
            "elapsed": round(summary.elapsed, 3)}
    if sink is not None:
        sink.summary(done)
    else:
        sys.stdout.flush()
        print(f"{prog}: {done['events']} events, {done['lost']} lost (trace buffer overrun), "
              f"{done['elapsed']:.1f} s, stopped by {done['reason']}", file=sys.stderr)
    return 0


def _loop(fd: int, session: dynevents.Session, plan: Plan, args, names_of, ctx, clock, sink,
          signals, prog: str) -> stream.Summary:
    start = time.monotonic()
    deadline = start + args.duration if args.duration else None
    shown, partial, pending, reported = 0, b"", None, 0
    reason = None

    def emit(ln: tracepipe.Line) -> None:
        nonlocal shown
        if ln.pid is None:
            ln.pid = _tgid_of(ln.tid)
        if args.pid is not None and ln.pid != args.pid:
            return
        if args.tid is not None and ln.tid != args.tid:
            return
        if args.max_events is not None and shown >= args.max_events:
            return
        shown += 1
        if sink is not None:
            sink.event(_json(plan, ln, clock.wall, ctx(_ctx_fields(ln))))
        elif not args.quiet:
            sys.stdout.write(ln.raw + "".join(f"\n => {f}" for f in ln.stack) + "\n")

    def read_all() -> bool:
        """Everything trace_pipe has now (non-blocking: its poll wakes only at
        buffer_percent, so a quiet trickle is read on the timer)."""
        nonlocal partial, pending
        got_any = False
        while True:
            try:
                chunk = os.read(fd, READ_BYTES)
            except BlockingIOError:
                return got_any
            if not chunk:
                return got_any
            got_any = True
            text = (partial + chunk).decode("utf-8", "backslashreplace")
            *complete, rest = text.split("\n")
            partial = rest.encode()
            for raw in complete:
                got = tracepipe.parse(raw, names_of)
                if isinstance(got, str):
                    if pending is not None:
                        pending.stack.append(got)
                    continue
                if pending is not None:
                    emit(pending)
                pending = got

    while reason is None:
        wait = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
        select.select([fd], [], [], wait)
        if not read_all() and pending is not None:
            emit(pending)                   # no more stack lines can follow after a quiet poll
            pending = None
        lost = session.overrun()
        if lost > reported:
            if sink is not None:
                sink.lost(lost - reported, lost)
            else:
                print(f"{prog}: lost {lost - reported} events ({lost} in all: trace buffer "
                      f"overrun)", file=sys.stderr)
            reported = lost
        if sink is not None:
            sink.flush()
        else:
            sys.stdout.flush()
        if args.max_events is not None and shown >= args.max_events:
            reason = "max-events"
        elif signals.caught is not None:
            reason = f"signal:{signal.Signals(signals.caught).name}"
        elif deadline is not None and time.monotonic() >= deadline:
            reason = "duration"
    read_all()                              # what was traced up to the stop
    if pending is not None:
        emit(pending)
    return stream.Summary(events=shown, lost=reported, reason=reason,
                          elapsed=time.monotonic() - start)


_TGIDS: dict[int, int] = {}


def _tgid_of(tid: int) -> int:
    """The process of a thread ftrace printed without one: record-tgid knows a
    task's process only once the scheduler switched it while tracing (it shows
    "(-------)" before). From /proc while the thread lives; else its own id."""
    if tid not in _TGIDS:
        try:
            with open(f"/proc/{tid}/status") as f:
                _TGIDS[tid] = next(int(ln.split()[1]) for ln in f if ln.startswith("Tgid:"))
        except (OSError, StopIteration, ValueError):
            return tid
    return _TGIDS[tid]


def _ctx_fields(ln: tracepipe.Line) -> dict:
    return {"cpu": ln.cpu, "source": tracectx.SOURCE_FTRACE, "implied": 0, "preempt": 0,
            "flags": ln.flags}
