"""`bpfprobes probe --backend tracefs`: the same specs as kernel dynamic events
(dynevents.py) in a trace instance of our own, read from its trace_pipe
(tracepipe.py), printed as the BPF backend prints them.

What the kernel's own events cannot do is refused up front, in one line:
tracepoint specs, --filter, --latency pairs, user stacks, counting, rate limits.
"""
from __future__ import annotations

import os
import re
import select
import sys
import time
from dataclasses import replace

from .. import __version__, dynevents, features, ftracetask, probefmt, spec, stream, tracectx, \
    tracepipe
from ..errors import KernelError, UsageError
from ..kernel import Kernel
from ..output import JsonOutput
from ..probeplan import Plan
from ..safetext import decode_exact, for_terminal, write_line
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


def _json(plan: Plan, ln: tracepipe.Line, wall, ctx: tracectx.Context,
          counts: dict | None = None) -> dict:
    """An event as the BPF backend's JSON; an ambiguous one (see tracepipe) says so,
    with its raw text, and null for what could not be split. A value that does not
    read as its type is null too, counted in counts["unparsed"]."""
    p = next(q for q in plan.probes if q.event == ln.event)
    values = {}
    for s in p.layout.slots:
        text = ln.values.get(s.name)
        values[s.name] = tracepipe.typed(text, _kind_letter(s))
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


def trace(k: Kernel, plan: Plan, args, prog: str, why: str) -> int:
    refuse_unsupported(plan, args)
    if k.tracefs is None:
        raise KernelError("tracefs is not mounted", "mount -t tracefs nodev /sys/kernel/tracing")
    for p in plan.probes:
        need = "uprobes" if p.spec.is_uprobe else "kprobes"
        if not features.check(k, need).available:
            raise KernelError(f"cannot use kernel dynamic events for {p.spec.text}: "
                              f"{features.check(k, need).why}")
    stop = stream.stop_signals()
    stop.check("planning")
    started = time.monotonic()
    notes = [f"removed {r}, left by a killed run" for r in dynevents.reap(k.tracefs)]
    stop.check("reaping")
    sink = JsonOutput(prog) if args.json else None
    names_of = {p.event: [(s.name, _kind_letter(s)) for s in p.layout.slots]
                for p in plan.probes}
    ctx = tracectx.Decoder(k.abi.name)
    clock = common.Clock()
    buffer_kb = max(4, args.buffer_pages * os.sysconf("SC_PAGE_SIZE") // 1024)
    with dynevents.Session(k.tracefs, buffer_kb=buffer_kb, stacks=args.stack) as session:
        # the Session removes whatever it holds on the way out; the recorder never
        # raises, so a signal cannot fall between writing an event and recording it
        stop.check("creating the trace instance")
        (session.instance / "trace_clock").write_text("mono")  # bpf_ktime_get_ns()'s clock
        lines = []
        for p in plan.probes:
            stop.check("adding events")
            up = p.uprobe.file_offset if p.uprobe else None
            s = replace(p.spec, group=session.group, event=p.event)
            line = spec.to_kprobe_events(s, k.abi, uprobe_offset=up)      # shown: the real path
            # written: /proc/self/fd/N of the checked file, held open, which the kernel
            # resolves to that inode whatever a directory of the path became (F1)
            written = line if p.uprobe is None else \
                spec.to_kprobe_events(replace(s, path=p.uprobe.target), k.abi, uprobe_offset=up)
            session.add("uprobe" if p.spec.is_uprobe else "kprobe", written, p.event)
            lines.append(line)
        stop.check("adding events")
        fd = session.pipe()
        try:
            stop.check("opening trace_pipe")
            meta = {"version": __version__, "kernel": k.release, "arch": k.abi.name,
                    "backend": "tracefs", "why": why, "instance": str(session.instance),
                    "events": lines, "startup_s": round(time.monotonic() - started, 3)}
            with stream.catch_signals() as signals:
                if args.verbose:
                    for line in notes + [f"tracefs: {ln}" for ln in lines]:
                        print(f"{prog}: {for_terminal(line)}", file=sys.stderr)
                    print(f"{prog}: live after {meta['startup_s']} s", file=sys.stderr)
                if sink is not None:
                    sink.meta(meta)
                    sink.flush()
                elif args.header:
                    print(probefmt.FTRACE_HEADER, flush=True)
                summary, counts = _loop(fd, session, plan, args, names_of, ctx, clock, sink,
                                        signals, prog)
        finally:
            os.close(fd)            # before the instance goes: an open pipe keeps it busy
    # ambiguous: shown flagged, not counted as events (the traced program could
    # have forged them); unparsed: values that did not read as their type (null)
    done = {"events": summary.events, "lost": summary.lost, "reason": summary.reason,
            "elapsed": round(summary.elapsed, 3), "ambiguous": counts.get("ambiguous", 0),
            "unparsed": counts.get("unparsed", 0), "recursion_misses": summary.recursion_misses}
    if sink is not None:
        sink.summary(done)
    else:
        sys.stdout.flush()
        odd = "".join(f", {done[k]} {k}" for k in ("ambiguous", "unparsed") if done[k])
        print(f"{prog}: {done['events']} events{odd}, {done['lost']} lost (trace buffer "
              f"overrun), {done['elapsed']:.1f} s, stopped by {done['reason']}", file=sys.stderr)
    return 0


class TracePipe:
    """Our instance's trace_pipe as a stream.run transport: parsed Lines go to the
    sample callback (a Gate), the buffer's overrun is the loss. Each read() is
    checked as a whole by tracepipe.Reader against the records it consumed (the
    per-CPU `read events` counters: nobody else reads our instance), so a line
    that a string value or a comm forged is never handed on as a normal event.
    A Line is handed on once its stack lines (-s) are in: when the next event
    comes, or a poll finds nothing more."""

    def __init__(self, fd: int, session: dynevents.Session | None,
                 names_of: dict[str, list]) -> None:
        self.fd, self.session = fd, session
        self.reader = tracepipe.Reader(names_of)
        self.on_sample = None
        self.partial = b""
        self.partial_records = 0
        self.stats = _open_stats(session)
        self.consumed = self._records_read()

    def open(self, on_sample) -> None:
        self.on_sample = on_sample

    def poll(self, timeout_ms: int) -> None:
        select.select([self.fd], [], [], timeout_ms / 1000)

    def drain(self) -> None:
        """What trace_pipe has now, read without waiting: its poll wakes only at
        buffer_percent, so a quiet trickle is read on the run loop's timer."""
        if not self._read():
            self._hand_on(self.reader.flush())  # no more stack lines can follow a quiet poll
        else:
            self._hand_on(self.reader.take())

    def finish(self) -> None:
        """What was traced up to the stop."""
        self._read()
        if self.partial:                    # a line the kernel never ended: not trusted
            self.reader.feed([decode_exact(self.partial)], -1)   # -1 records: tainted
            self.partial = b""
        self._hand_on(self.reader.flush())

    def close(self) -> None:
        """The per-CPU stats files: open, they keep the instance from being removed."""
        for f in self.stats:
            os.close(f)
        self.stats = []

    @property
    def lost(self) -> int:
        return self.session.overrun() if self.session is not None else 0

    def _hand_on(self, lines: list) -> None:
        if self.session is not None:    # ftrace's process column is a cache: checked
            ftracetask.resolve(lines, self.session.tracefs)
        for line in lines:
            self.on_sample(line)

    def _records_read(self) -> int | None:
        """Records consumed from our instance so far (every CPU), or None."""
        if not self.stats:
            return None
        total = 0
        for f in self.stats:
            try:
                m = _READ_EVENTS.search(os.pread(f, 4096, 0))
            except OSError:
                return None
            if m is None:
                return None
            total += int(m.group(1))
        return total

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
            now = self._records_read()
            records = None if now is None or self.consumed is None else now - self.consumed
            self.consumed = now
            # the kernel fills a read with whole records, each ending in a newline; a
            # read that does not end in one is kept and checked with the next
            data, self.partial = self.partial + chunk, b""
            if records is not None:
                records += self.partial_records
            if not data.endswith(b"\n"):
                self.partial, self.partial_records = data, records or 0
                continue
            self.partial_records = 0
            # split as bytes, then decode each whole line keeping every byte (the
            # kernel prints strings raw, not always UTF-8)
            lines = [decode_exact(raw) for raw in data.split(b"\n")[:-1]]
            self.reader.feed(lines, records)


_READ_EVENTS = re.compile(rb"^read events: (\d+)", re.M)


def _open_stats(session: dynevents.Session | None) -> list[int]:
    """Our instance's per-CPU stats files, open for the run (read with pread)."""
    if session is None:
        return []
    per_cpu = session.instance / "per_cpu"
    fds = []
    try:
        for cpu in sorted(per_cpu.iterdir()):
            fds.append(os.open(cpu / "stats", os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        for f in fds:
            os.close(f)
        return []
    return fds


def _loop(fd: int, session: dynevents.Session, plan: Plan, args, names_of, ctx, clock, sink,
          signals, prog: str) -> tuple[stream.Summary, dict]:
    counts: dict[str, int] = {}

    def on_event(ln: tracepipe.Line) -> bool:
        if args.pid is not None and ln.pid != args.pid:
            return False
        if args.tid is not None and ln.tid != args.tid:
            return False
        if sink is not None:
            sink.event(_json(plan, ln, clock.wall, ctx(_ctx_fields(ln)), counts))
        elif not args.quiet:
            # trace_pipe prints comm and strings raw: escaped for the terminal (a
            # swallowed line's newline shows as \n: one output line per event)
            mark = f" {AMBIGUOUS_MARK}" if ln.ambiguous else ""
            write_line(sys.stdout, "\n".join([for_terminal(_raw(ln)) + mark,
                                              *(f" => {for_terminal(f)}" for f in ln.stack)]))
        if ln.ambiguous:                    # shown, but not an event the limit or total counts
            counts["ambiguous"] = counts.get("ambiguous", 0) + 1
        return not ln.ambiguous

    def on_lost(count: int, total: int) -> None:
        if sink is not None:
            sink.lost(count, total)
        else:
            print(f"{prog}: lost {count} events ({total} in all: trace buffer overrun)",
                  file=sys.stderr)

    gate = stream.Gate(on_event, args.max_events)
    transport = TracePipe(fd, session, names_of)
    transport.open(gate)
    try:
        return stream.run(transport, gate, stream.Limits(args.duration, args.max_events),
                          on_lost, on_tick=sink.flush if sink is not None else sys.stdout.flush,
                          signals=signals), counts
    finally:
        transport.close()           # its stats files hold the instance busy, as the pipe does


AMBIGUOUS_MARK = "[ambiguous]"


def _ctx_fields(ln: tracepipe.Line) -> dict:
    return {"cpu": ln.cpu, "source": tracectx.SOURCE_FTRACE, "implied": 0, "preempt": 0,
            "flags": ln.flags}
