"""irq: what a device's interrupt handlers do, how often, how long, from where.

The by-hand recipe (ask ethtool for the driver, read /proc/interrupts, find
the handler in kallsyms, plant a kprobe with a stack dump) as one command:
name a NIC or a disk (or --irq N / --name PATTERN) and get every handler run
with its time, the task it interrupted and its execution context, or a table
per IRQ and CPU. Softirq vectors and tasklets too.
"""
from __future__ import annotations

import struct
import sys
import time
from dataclasses import dataclass, field

from tabulate import tabulate

from bpfprobes import __version__
from bpfprobes.backends.bpf.backend import BpfBackend
from bpfprobes.base.errors import KernelError, UsageError
from bpfprobes.base.safetext import for_terminal, write_line
from bpfprobes.gen import codegen, probegen
from bpfprobes.kernel import errnos, features, interrupts, irqhandlers, policy, tracectx
from bpfprobes.kernel.running import Kernel, current
from bpfprobes.plan import metricplan, runconfig
from bpfprobes.plan.probeplan import FOLDED_STACK_ENTRIES
from bpfprobes.plan.attach import Attach
from bpfprobes.present import histogram, metricrows
from bpfprobes.present.decode import IRQ_KINDS, irq_event
from bpfprobes.present.latency import Reservoir, human_ns
from bpfprobes.present.output import Column, JsonOutput, Quiet, TextOutput
from bpfprobes.session import loop
from bpfprobes.session.core import Session, decoding, standard_meta
from bpfprobes.tools import folded, probehist, probeoptions, shared
from bpfprobes.tools.shared import Clock, SessionOptions

# include/linux/interrupt.h: the vectors in order, the same on every kernel since 5.x
SOFTIRQS = ("HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED",
            "HRTIMER", "RCU")
# irqreturn_t bits
IRQ_RETURNS = {0: "IRQ_NONE", 1: "IRQ_HANDLED", 2: "IRQ_WAKE_THREAD",
               3: "IRQ_HANDLED|IRQ_WAKE_THREAD"}
KERNEL_FILTER_SLOTS = runconfig.IRQ_SLOTS     # bpf_c/irq.h irq_config.irqs
NO_LINE = 0x7FFFFFFF              # an unused slot: no IRQ has this number
HIST_SERIES = 4096                # --hist: (kind, line) histograms kept
STACK_ENTRIES = 4096
NO_STACK = -1                 # bpf_c/irq.bpf.c kstack(): this event wants no stack
PROG = "bpfprobes irq"


@dataclass(frozen=True)
class Options(SessionOptions):
    device: str | None = None           # a NIC (eth0) or a disk (vda)
    irq: list[int] = field(default_factory=list)      # these IRQ lines
    name: str | None = None             # lines whose /proc/interrupts name matches
    softirq: int = 0                    # a mask of SOFTIRQS
    tasklet: bool = False
    tasklet_schedule: bool = False
    handler: list[str] = field(default_factory=list)  # kprobe these handler functions
    attach: str | None = None           # policy.CHOICES
    stack: bool = False
    summary: bool = False
    interval: float | None = None
    quiet: bool = False
    hist: bool = False                  # a histogram per kind and line, in the kernel
    folded: bool = False                # stacks counted in the kernel, folded at exit
    linear: int | None = None           # its buckets this wide (default: log2)
    unit: str = "us"


@dataclass
class Plan:
    """What will be traced, with what, and why."""
    device: interrupts.Device | None       # None: no hardirqs
    lines: dict[int, interrupts.Line]
    mechanism: str | None = None            # kprobe | tracepoint, for hardirqs
    why: str = ""
    handlers: irqhandlers.Handlers | None = None
    handler_symbols: list[str] = field(default_factory=list)
    softirq_mask: int = 0
    tasklet: bool = False
    tasklet_schedule: bool = False
    kernel_filter: list[int] | None = None  # IRQs compared in BPF
    user_filter: set[int] | None = None     # too many for BPF: compared here

    def describe(self) -> list[str]:
        out = []
        if self.device is not None:
            d = self.device
            out += d.evidence
            out.append(f"{d.name}: driver {d.driver or '-'}, module {d.module or 'built in'}, "
                       f"IRQs {', '.join(map(str, d.irqs)) or 'all'}")
            if self.handlers is not None:
                for irq, sym in sorted(self.handlers.by_irq.items()):
                    out.append(f"IRQ {irq} ({self.lines[irq].name}): handler {sym}")
                if self.handlers.candidates:
                    out.append("handler-like functions of the module (for --handler): "
                               + ", ".join(self.handlers.candidates))
            out.append(f"hardirqs by {self.mechanism}: {self.why}")
            if self.user_filter:
                out.append(f"more than {KERNEL_FILTER_SLOTS} lines: filtered in userspace")
        if self.softirq_mask:
            out.append("softirqs " + ", ".join(n for i, n in enumerate(SOFTIRQS)
                                                if self.softirq_mask >> i & 1))
        return out


def plan(o: Options, k: Kernel) -> Plan:
    wants_hard = bool(o.device or o.irq or o.name or o.handler) or not (
        o.softirq or o.tasklet or o.tasklet_schedule)
    lines = interrupts.read_lines()
    p = Plan(None, lines, softirq_mask=o.softirq, tasklet=o.tasklet,
             tasklet_schedule=o.tasklet_schedule)
    if o.tasklet_schedule and not features.check(k, "kprobes").available:
        raise KernelError("--tasklet-schedule needs kprobes: "
                          + features.check(k, "kprobes").why, "try --tasklet")
    if not wants_hard:
        return p
    p.device = dev = interrupts.resolve(o.device, o.irq, o.name, lines)
    if dev.irqs:
        if len(dev.irqs) <= KERNEL_FILTER_SLOTS:
            p.kernel_filter = dev.irqs
        else:
            p.user_filter = set(dev.irqs)
    names = {n: lines[n].name for n in dev.irqs}
    p.handlers = irqhandlers.find(k.kallsyms, dev.driver, dev.module, names)
    if o.handler:
        p.handler_symbols = list(o.handler)
    elif dev.irqs and len(p.handlers.by_irq) == len(dev.irqs):
        p.handler_symbols = p.handlers.symbols
    tps = ["irq:irq_handler_entry", "irq:irq_handler_exit"]
    choice = policy.choose(k, o.attach, p.handler_symbols, tps) if p.handler_symbols \
        else _no_handler(k, o.attach, dev, p.handlers, tps)
    p.mechanism, p.why = choice.mechanism, choice.why
    return p


def _no_handler(k: Kernel, forced: str | None, dev: interrupts.Device,
                handlers: irqhandlers.Handlers, tps: list[str]) -> policy.Choice:
    if not dev.irqs:
        why = "every line: the irq tracepoints see them all"
    else:
        unknown = [n for n in dev.irqs if n not in handlers.by_irq]
        why = f"no handler function known for IRQ {', '.join(map(str, unknown))} " \
              f"(driver {dev.driver or '-'}; name one with --handler)"
    if forced == policy.KPROBE:
        raise KernelError(f"cannot use kprobes: {why}", "try --handler FUNC")
    missing = [t for t in tps if not k.tracepoint_exists(*t.split(":"))]
    if missing:
        raise KernelError(f"cannot trace hardirqs: tracepoint {missing[0]} not found; {why}")
    return policy.Choice(policy.TRACEPOINT, f"{why}; using {', '.join(tps)}")


def _tp_offsets(k: Kernel, event: str, wanted: dict[str, str]) -> dict[str, int]:
    """TP_*_OFF defines for the fields of irq:EVENT (from its format file)."""
    from bpfprobes.plan import tpformat  # noqa: PLC0415 - only when hardirqs use tracepoints
    text = k.tracepoint_format("irq", event)
    if text is None:
        raise KernelError(f"tracepoint irq:{event} not found in tracefs")
    fields = tpformat.parse(text)
    return {define: fields[name].offset for name, define in wanted.items() if name in fields}


def program_and_attaches(p: Plan, k: Kernel, stack: bool,
                         rate: runconfig.RateLimit | None = None,
                         hist: dict | None = None) -> tuple:
    defs: dict[str, object] = dict(hist or {})
    # the interrupted task is whoever ran: no task filter, not even our own PID
    config = {**runconfig.task(rate=rate), "softirq_mask": p.softirq_mask}
    attaches: list[Attach] = []
    defs.update(codegen.abi_defines(k.abi, False))
    defs.update(tracectx.preempt_defines(k.kallsyms, k.btf))
    if p.device is not None:
        if p.kernel_filter is not None:
            slots = p.kernel_filter + [NO_LINE] * (KERNEL_FILTER_SLOTS - len(p.kernel_filter))
            config.update(irq_filter=1, irqs=slots)
        if p.mechanism == policy.KPROBE:
            defs["HARDIRQ_KP"] = True
            for sym in p.handler_symbols:
                attaches += [Attach("kprobe", sym, "kp_handler"),
                             Attach("kretprobe", sym, "kr_handler")]
        else:
            # raw: a skipped run is counted (recursion_misses); a perf tracepoint's is not
            defs["HARDIRQ_TP"] = True
            attaches += [Attach("raw_tracepoint", "irq_handler_entry", "raw_irq_entry"),
                         Attach("raw_tracepoint", "irq_handler_exit", "raw_irq_exit")]
    if p.softirq_mask:
        defs.update({"SOFTIRQ": True, **_tp_offsets(k, "softirq_entry", {"vec": "TP_VEC_OFF"})})
        attaches += [Attach("tracepoint", "irq:softirq_entry", "tp_softirq_entry"),
                     Attach("tracepoint", "irq:softirq_exit", "tp_softirq_exit")]
    if p.tasklet:
        defs.update({"TASKLET": True, **_tp_offsets(k, "tasklet_entry", {"func": "TP_FUNC_OFF"})})
        attaches += [Attach("tracepoint", "irq:tasklet_entry", "tp_tasklet_entry"),
                     Attach("tracepoint", "irq:tasklet_exit", "tp_tasklet_exit")]
    if p.tasklet_schedule:
        b = k.btf
        if b is None:
            raise KernelError("--tasklet-schedule needs the kernel's BTF "
                              "(tasklet_struct.func's offset)")
        defs.update({"TASKLET_SCHED": True,
                     "TASKLET_FUNC": b.member_offset("tasklet_struct", "func")})
        attaches.append(Attach("kprobe", "__tasklet_schedule", "kp_tasklet_schedule"))
    if stack:
        defs["STACKS"] = STACK_ENTRIES
    return codegen.ready_tool("irq", defs, runconfig.pack(runconfig.IRQ, config)), attaches


class Events:
    """Samples -> event dicts with names, context and stacks; kept in the tables."""

    def __init__(self, p: Plan, k: Kernel, clock: Clock, stack: bool) -> None:
        self.p, self.k, self.clock, self.stack = p, k, clock, stack
        self.ctx = tracectx.Decoder(k.abi.name)
        self.stacks = None
        self.table = Table()
        self._funcs: dict[int, str] = {}

    def loaded(self, loaded) -> None:
        if self.stack:
            self.stacks = loaded

    def func(self, addr: int) -> str | None:
        if not addr:
            return None
        name = self._funcs.get(addr)
        if name is None:
            hit = self.k.kallsyms.resolve(addr)
            name = hit[0].name if hit else f"{addr:#x}"
            self._funcs[addr] = name
        return name

    def __call__(self, raw: bytes) -> dict | None:
        e = irq_event(raw)
        irq, kind = e["irq"], e["kind"]
        if kind == "hardirq" and self.p.user_filter is not None and irq not in self.p.user_filter:
            return None
        c = self.ctx(e["ctx"])
        line = self.p.lines.get(irq) if kind == "hardirq" else None
        out = {"kind": kind, "ts": self.clock.wall(e["ts_ns"]), "ts_ns": e["ts_ns"], "cpu": c.cpu,
               "irq": irq if kind in ("hardirq", "softirq") else None,
               "name": (line.name if line else None) if kind == "hardirq" else
               SOFTIRQS[irq] if kind == "softirq" and 0 <= irq < len(SOFTIRQS) else None,
               "handler": self.func(e["func"]) or (self.p.handlers.by_irq.get(irq)
                                                   if kind == "hardirq" and self.p.handlers
                                                   else None),
               "duration_ns": e["duration_ns"] if kind != "tasklet_schedule" else None,
               "ret": IRQ_RETURNS.get(e["ret"], str(e["ret"])) if kind == "hardirq" else None,
               "pid": e["pid"], "tid": e["tid"], "comm": e["comm"],
               "context": c.as_dict()}
        if self.stacks is not None and e["kstack"] >= 0:
            out["stack"] = [self.k.kallsyms.format(a)
                            for a in self.stacks.stack("stacks", e["kstack"])]
        elif self.stacks is not None and e["kstack"] != NO_STACK:
            # the kernel could not keep it (EEXIST: another stack hashed to its bucket);
            # said, as probe -s says it, never silently left out
            out["stack_error"] = errnos.name(e["kstack"]) or str(e["kstack"])
        self.table.add(out)
        return out


def _label(e: dict) -> str:
    if e["kind"] == "hardirq":
        return str(e["irq"])
    if e["kind"] == "softirq":
        return e["name"] or str(e["irq"])
    return e["kind"]


class Table:
    """Per (kind, IRQ or vector or function, CPU): count, rate, time p50/p99/max."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.monotonic()
        self.rows: dict[tuple, Reservoir] = {}
        self.names: dict[tuple, str] = {}

    def add(self, e: dict) -> None:
        key = (e["kind"], _label(e), e["cpu"])
        r = self.rows.get(key)
        if r is None:
            r = self.rows[key] = Reservoir(keep=20_000)
            self.names[key] = e["name"] or e["handler"] or ""
        r.add(e["duration_ns"] or 0)

    def as_rows(self) -> list[dict]:
        span = max(1e-9, time.monotonic() - self.started)
        out = []
        for key in sorted(self.rows, key=lambda k: (k[0], _sort_key(k[1]), k[2])):
            s = self.rows[key].summary()
            out.append({"kind": key[0], "what": key[1], "name": self.names[key], "cpu": key[2],
                        "count": s["count"], "rate": round(s["count"] / span, 1),
                        "p50_ns": s["p50"], "p99_ns": s["p99"], "max_ns": s["max"]})
        return out

    def text(self) -> str:
        body = [[r["kind"], r["what"], r["name"], r["cpu"], r["count"], f"{r['rate']:.1f}",
                 human_ns(r["p50_ns"]), human_ns(r["p99_ns"]), human_ns(r["max_ns"])]
                for r in self.as_rows()]
        return tabulate(body, headers=["KIND", "IRQ", "NAME", "CPU", "COUNT", "RATE/s", "P50",
                                       "P99", "MAX"],
                        colalign=("left", "right", "left", "right", "right", "right", "right",
                                  "right", "right"))


def _sort_key(label: str) -> tuple:
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


def _columns() -> list[Column]:
    # escaped as printed: IRQ line names (drivers name them after devices),
    # handler symbols and the interrupted task's comm; cut before escaping, so
    # that an escape is never cut in half
    return [Column("TIME", -15, lambda e: time.strftime("%H:%M:%S", time.localtime(e["ts"]))
                   + f".{int(e['ts'] * 1e6) % 1000000:06d}", escape=False),
            Column("CPU", 3, lambda e: e["cpu"], escape=False),
            Column("CTX", 4, lambda e: e["context"]["flags"], escape=False),
            Column("IRQ", 5, lambda e: _label(e) if e["kind"] != "tasklet_schedule" else "-"),
            Column("NAME", -16, lambda e: (e["name"] or "-")[:16]),
            Column("HANDLER", -22, lambda e: (e["handler"] or "-")[:22]),
            Column("TIME(us)", 9, lambda e: "-" if e["duration_ns"] is None
                   else f"{e['duration_ns'] / 1000:.3f}", escape=False),
            Column("RET", -11, lambda e: e["ret"] or "-", escape=False),
            Column("INTERRUPTED", 0, lambda e: f"{e['comm']} ({e['pid']})")]


class _TextSink(TextOutput):
    """Event lines, then the stack under each (as BCC's trace -K prints it)."""

    def event(self, e: dict) -> None:
        super().event(e)
        for frame in e.get("stack", ()):
            self.out.write(f"        {for_terminal(frame)}\n")
        if "stack_error" in e:
            self.out.write(f"        stack unavailable: {e['stack_error']}\n")


def hist(o: Options, p: Plan, k: Kernel) -> int:
    """--hist: each kind's and line's handler times, bucketed in the kernel."""
    clash = [f for name, f in (("stack", "-s"), ("summary", "--summary"), ("quiet", "-q"),
                               ("max_events", "-n"), ("tasklet_schedule", "--tasklet-schedule"))
             if getattr(o, name)]
    if clash:
        raise UsageError(f"--hist buckets handler times in the kernel: not with {clash[0]}")
    buckets = metricplan.Options(max_series=HIST_SERIES, timed=True, linear=o.linear,
                                 divide=probehist.UNITS[o.unit])
    program, attaches = program_and_attaches(p, k, False, o.rate_limit, {
        "IRQ_HIST": True, **probegen.metric_defines(buckets, len(IRQ_KINDS))})

    labels = metricrows.Labels("kind", IRQ_KINDS, args=(("irq", lambda v: line_name(p, v)),))
    probehist.session(k, PROG, program, attaches, labels, probehist.Hist(
        histogram.Buckets(metricplan.SLOTS, o.linear), o.unit, f"handler time in {o.unit}",
        _watched(p)), o, {"device": p.device.as_dict() if p.device else None})
    return 0


def line_name(p: Plan, v: int) -> str:
    """A (kind << 32 | line) key as shown: a softirq's name, a line with its name."""
    kind, n = v >> 32, v & 0xffffffff
    if IRQ_KINDS[kind] == "softirq":
        return SOFTIRQS[n] if n < len(SOFTIRQS) else str(n)
    if IRQ_KINDS[kind] == "hardirq" and n in p.lines:
        return f"{n} {p.lines[n].name}"
    return str(n if n < 1 << 31 else n - (1 << 32))


def _watched(p: Plan) -> str:
    return ", ".join(
        [*(["IRQ " + ", ".join(map(str, p.device.irqs)) if p.device.irqs else "every IRQ line"]
           if p.device is not None else []),
         *(["softirqs"] if p.softirq_mask else []), *(["tasklets"] if p.tasklet else [])])


def stacks(o: Options, p: Plan, k: Kernel) -> int:
    """--folded: each kind's and line's handled calls by the kernel stack at entry
    (what was interrupted, and how the handler was reached), printed folded at exit
    with `KIND LINE` as the root frame."""
    clash = [f for name, f in (("summary", "--summary"), ("quiet", "-q"), ("hist", "--hist"),
                               ("max_events", "-n"), ("interval", "-i"),
                               ("tasklet_schedule", "--tasklet-schedule")) if getattr(o, name)]
    if clash:
        raise UsageError(f"--folded counts stacks in the kernel: not with {clash[0]}")
    rows = metricplan.Options(max_series=folded.SERIES)
    program, attaches = program_and_attaches(p, k, False, o.rate_limit, {
        "IRQ_FOLDED": True, "FOLDED_STACKS": FOLDED_STACK_ENTRIES,
        "FOLDED_SEED": folded.seed(), "FOLDED_SCRATCH": len(IRQ_KINDS),
        **probegen.metric_defines(rows, len(IRQ_KINDS))})

    def row(key: dict) -> folded.Row:
        args = struct.unpack_from("<2q", key["args"])
        return folded.Row(key["probe"], 0, "", args[1], folded.NOT_ASKED, 0, 0,
                          args[0] & 0xffffffffffffffff)

    folded.session(k, PROG, program, attaches, o, row,
                   lambda r: f"{IRQ_KINDS[r.index]} {line_name(p, r.label)}",
                   lambda r: None, f"stacks of {_watched(p)}",
                   {"device": p.device.as_dict() if p.device else None})
    return 0


def run(o: Options) -> int:
    shared.require_root()
    k = current()
    p = plan(o, k)
    if o.hist:
        return hist(o, p, k)
    probeoptions.check_unused(o)
    if o.folded:
        return stacks(o, p, k)
    rate_meta = {"rate_limit": o.rate_limit.meta()} if o.rate_limit else {}
    program, attaches = program_and_attaches(p, k, o.stack, o.rate_limit)
    if o.verbose:
        for line in p.describe():       # device, driver and IRQ line names
            write_line(sys.stderr, f"{PROG}: {for_terminal(line)}")
    events = Events(p, k, Clock(), o.stack)
    sink = JsonOutput(PROG) if o.json else \
        _TextSink(PROG, _columns(), header=not o.quiet)
    shown = Quiet(sink) if o.quiet else sink
    next_report: float | None = None

    def report(kind: str) -> None:
        rows = events.table.as_rows()
        sink.table(kind, rows, time.strftime("%H:%M:%S ") + kind + "\n"
                   + (events.table.text() if rows else "(no events)"))
        events.table.reset()

    def consumer(backend: BpfBackend):
        events.loaded(backend.loaded)       # its stack map
        return decoding(events, shown)(backend)

    def live() -> None:
        nonlocal next_report
        events.table.reset()                # rates count from attaching, not from start-up
        if o.interval:
            next_report = time.monotonic() + o.interval

    def tick() -> None:
        nonlocal next_report
        now = time.monotonic()
        if next_report is not None and now >= next_report:
            report("interval")
            next_report = max(next_report + o.interval, now)

    def at_exit(_summary) -> dict:
        # -i: the last, partial interval; --summary alone: the whole run
        if o.interval is not None:
            report("interval")
        elif o.summary:
            report("summary")
        return {}

    meta = {"version": __version__, "kernel": k.release, "arch": k.abi.name,
            "attach": p.mechanism or "tracepoint", "why": p.why,
            "device": p.device.as_dict() if p.device else None,
            "handlers": p.handlers.by_irq if p.handlers else {},
            "softirqs": [n for i, n in enumerate(SOFTIRQS) if p.softirq_mask >> i & 1],
            "tasklets": p.tasklet, "tasklet_schedule": p.tasklet_schedule, **rate_meta}
    # -s: BCC loads it (its stack map is read through BCC)
    backend = BpfBackend(k, program, attaches, cacheable=not o.stack, pages=o.buffer_pages)
    Session(PROG, k, backend, sink, consumer, loop.Limits(o.duration, o.max_events),
            standard_meta(meta), verbose=o.verbose, throttled=o.rate_limit is not None,
            on_live=live, on_tick=tick, at_exit=at_exit).run()
    return 0
