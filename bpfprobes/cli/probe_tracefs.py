"""`bpfprobes probe --backend tracefs`: the same specs as kernel dynamic events
(dynevents.py) in a trace instance of our own, read from its trace_pipe
(tracepipe.py), printed as the BPF backend prints them.

What the kernel's own events cannot do is refused up front, in one line:
tracepoint specs, --filter, --latency pairs, user stacks, counting, rate limits.
"""
from __future__ import annotations

import os
import select
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


class TracePipe:
    """Our instance's trace_pipe as a stream.run transport: parsed Lines go to the
    sample callback (a Gate), the buffer's overrun is the loss. A Line is handed
    on once its stack lines (-s) are in: when the next event comes, or a poll
    finds nothing more."""

    def __init__(self, fd: int, session: dynevents.Session,
                 names_of: dict[str, list[str]]) -> None:
        self.fd, self.session, self.names_of = fd, session, names_of
        self.on_sample = None
        self.partial = b""
        self.pending: tracepipe.Line | None = None

    def open(self, on_sample) -> None:
        self.on_sample = on_sample

    def poll(self, timeout_ms: int) -> None:
        select.select([self.fd], [], [], timeout_ms / 1000)

    def drain(self) -> None:
        """What trace_pipe has now, read without waiting: its poll wakes only at
        buffer_percent, so a quiet trickle is read on the run loop's timer."""
        if not self._read() and self.pending is not None:
            self._hand_on()                 # no more stack lines can follow after a quiet poll

    def finish(self) -> None:
        """What was traced up to the stop."""
        self._read()
        if self.pending is not None:
            self._hand_on()

    @property
    def lost(self) -> int:
        return self.session.overrun()

    def _hand_on(self) -> None:
        line, self.pending = self.pending, None
        self.on_sample(line)

    def _read(self) -> bool:
        got_any = False
        while True:
            try:
                chunk = os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                return got_any
            if not chunk:
                return got_any
            got_any = True
            text = (self.partial + chunk).decode("utf-8", "backslashreplace")
            *complete, rest = text.split("\n")
            self.partial = rest.encode()
            for raw in complete:
                got = tracepipe.parse(raw, self.names_of)
                if got is None:             # e.g. the "<stack trace>" line before frames
                    continue
                if isinstance(got, str):
                    if self.pending is not None:
                        self.pending.stack.append(got)
                    continue
                if self.pending is not None:
                    self._hand_on()
                self.pending = got


def _loop(fd: int, session: dynevents.Session, plan: Plan, args, names_of, ctx, clock, sink,
          signals, prog: str) -> stream.Summary:
    def on_event(ln: tracepipe.Line) -> bool:
        if ln.pid is None:
            ln.pid = _tgid_of(ln.tid)
        if args.pid is not None and ln.pid != args.pid:
            return False
        if args.tid is not None and ln.tid != args.tid:
            return False
        if sink is not None:
            sink.event(_json(plan, ln, clock.wall, ctx(_ctx_fields(ln))))
        elif not args.quiet:
            sys.stdout.write(ln.raw + "".join(f"\n => {f}" for f in ln.stack) + "\n")
        return True

    def on_lost(count: int, total: int) -> None:
        if sink is not None:
            sink.lost(count, total)
        else:
            print(f"{prog}: lost {count} events ({total} in all: trace buffer overrun)",
                  file=sys.stderr)

    gate = stream.Gate(on_event, args.max_events)
    transport = TracePipe(fd, session, names_of)
    transport.open(gate)
    return stream.run(transport, gate, stream.Limits(args.duration, args.max_events), on_lost,
                      on_tick=sink.flush if sink is not None else sys.stdout.flush,
                      signals=signals)


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
