"""irq: what a device's interrupt handlers do, how often, how long, from where.

The by-hand recipe (ask ethtool for the driver, read /proc/interrupts, find
the handler in kallsyms, plant a kprobe with a stack dump) as one command:
name a NIC or a disk (or --irq N / --name PATTERN) and get every handler run
with its time, the task it interrupted and its execution context, or a table
per IRQ and CPU. Softirq vectors and tasklets too.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

from tabulate import tabulate

from .. import __version__, codegen, errnos, features, interrupts, irqhandlers, policy, \
    runconfig, stream, tracectx
from ..bpfbackend import BpfBackend
from ..decode import irq_event
from ..errors import KernelError
from ..kernel import Kernel, current
from ..latency import Reservoir, human_ns
from ..loader import Attach
from ..output import Column, JsonOutput, Quiet, TextOutput
from ..safetext import for_terminal, write_line
from ..session import Session, decoding, standard_meta
from . import common

# include/linux/interrupt.h: the vectors in order, the same on every kernel since 5.x
SOFTIRQS = ("HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED",
            "HRTIMER", "RCU")
# irqreturn_t bits
IRQ_RETURNS = {0: "IRQ_NONE", 1: "IRQ_HANDLED", 2: "IRQ_WAKE_THREAD",
               3: "IRQ_HANDLED|IRQ_WAKE_THREAD"}
KERNEL_FILTER_SLOTS = runconfig.IRQ_SLOTS     # bpf_c/irq.h irq_config.irqs
NO_LINE = 0x7FFFFFFF              # an unused slot: no IRQ has this number
STACK_ENTRIES = 4096
NO_STACK = -1                 # bpf_c/irq.bpf.c kstack(): this event wants no stack
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,510}")     # KSYM_NAME_LEN 512 with the NUL
PROG = "bpfprobes irq"

EXAMPLES = """\
    bpfprobes irq                         # every hardirq handler run, timed
    bpfprobes irq eth0 -v                 # the NIC's lines (pyroute2, sysfs) and why
    bpfprobes irq vda --summary -d 10     # the disk: count, rate, p50/p99/max per IRQ and CPU
    bpfprobes irq vda -i 1 -q             # that table every second, no event lines
    bpfprobes irq --irq 36 -s             # one line, with kernel stacks
    bpfprobes irq --name 'virtio*-input*' # lines by name (shell wildcards)
    bpfprobes irq --softirq NET_RX,NET_TX # softirq vectors, timed
    bpfprobes irq --tasklet               # tasklets run, and their functions
    bpfprobes irq --tasklet-schedule -s   # who schedules tasklets (kprobe)
    bpfprobes irq eth0 --attach kprobe --handler vring_interrupt -s
    bpfprobes irq vda --json -d 5         # JSON lines
"""


def _irq_list(text: str) -> list[int]:
    """'36' or '36,37'."""
    irq = common.int_type(0, "an IRQ number", NO_LINE - 1)
    return [irq(part.strip()) for part in text.split(",")]


def _symbol(text: str) -> str:
    """A kernel function name as kallsyms spells it (foo, foo.isra.0): it becomes a
    kprobe target, so nothing else gets through."""
    if not _SYMBOL.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{common.shown(text)} is not a kernel function name")
    return text


def _softirq_list(text: str) -> int:
    """'NET_RX,timer' or 'all' -> a bit mask of vectors."""
    if text.strip().lower() == "all":
        return (1 << len(SOFTIRQS)) - 1
    mask = 0
    for part in text.split(","):
        name = part.strip().upper().removesuffix("_SOFTIRQ")
        if name not in SOFTIRQS:
            raise argparse.ArgumentTypeError(
                f"unknown softirq {part.strip()!r} (one of {', '.join(SOFTIRQS)}, or all)")
        mask |= 1 << SOFTIRQS.index(name)
    return mask


def build_parser() -> common.Parser:
    p = common.parser(PROG, "Trace interrupt handlers of a device, softirqs and "
                      "tasklets: counts, handler time, stacks, and the context of each event.",
                      EXAMPLES)
    p.add_argument("device", nargs="?", metavar="DEVICE",
                   help="a network interface (eth0) or block device (vda, nvme0n1)")
    p.add_argument("--irq", type=_irq_list, action="extend", default=[], metavar="N[,N]",
                   help="these IRQ lines (repeatable)")
    p.add_argument("--name", metavar="PATTERN",
                   help="IRQ lines whose name in /proc/interrupts matches (shell wildcards)")
    p.add_argument("--softirq", type=_softirq_list, default=0, metavar="VEC[,VEC]",
                   help=f"softirq vectors ({', '.join(SOFTIRQS)}, or all)")
    p.add_argument("--tasklet", action="store_true", help="tasklets run (irq:tasklet_entry/exit)")
    p.add_argument("--tasklet-schedule", action="store_true",
                   help="tasklets scheduled (a kprobe on __tasklet_schedule; with -s: by whom)")
    p.add_argument("--handler", action="append", default=[], type=_symbol, metavar="FUNC",
                   help="kprobe this handler function (repeatable); else the known one")
    p.add_argument("--attach", choices=policy.CHOICES,
                   help="force kprobes on the handlers or the irq tracepoints "
                        "(default: kprobes where available and the handler is known)")
    p.add_argument("-s", "--stack", action="store_true", help="kernel stack of each event")
    p.add_argument("--summary", action="store_true",
                   help="at exit, a table per IRQ and CPU: count, rate, p50/p99/max")
    p.add_argument("-i", "--interval", type=common.seconds_arg, metavar="SECONDS",
                   help="print the table every SECONDS (and reset it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no event lines (tables only)")
    common.add_session_options(p)
    return p


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


def plan(args, k: Kernel) -> Plan:
    wants_hard = bool(args.device or args.irq or args.name or args.handler) or not (
        args.softirq or args.tasklet or args.tasklet_schedule)
    lines = interrupts.read_lines()
    p = Plan(None, lines, softirq_mask=args.softirq, tasklet=args.tasklet,
             tasklet_schedule=args.tasklet_schedule)
    if args.tasklet_schedule and not features.check(k, "kprobes").available:
        raise KernelError("--tasklet-schedule needs kprobes: "
                          + features.check(k, "kprobes").why, "try --tasklet")
    if not wants_hard:
        return p
    p.device = dev = interrupts.resolve(args.device, args.irq, args.name, lines)
    if dev.irqs:
        if len(dev.irqs) <= KERNEL_FILTER_SLOTS:
            p.kernel_filter = dev.irqs
        else:
            p.user_filter = set(dev.irqs)
    names = {n: lines[n].name for n in dev.irqs}
    p.handlers = irqhandlers.find(k.kallsyms, dev.driver, dev.module, names)
    if args.handler:
        p.handler_symbols = list(args.handler)
    elif dev.irqs and len(p.handlers.by_irq) == len(dev.irqs):
        p.handler_symbols = p.handlers.symbols
    tps = ["irq:irq_handler_entry", "irq:irq_handler_exit"]
    choice = policy.choose(k, args.attach, p.handler_symbols, tps) if p.handler_symbols \
        else _no_handler(k, args.attach, dev, p.handlers, tps)
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
    from .. import tpformat  # noqa: PLC0415
    text = k.tracepoint_format("irq", event)
    if text is None:
        raise KernelError(f"tracepoint irq:{event} not found in tracefs")
    fields = tpformat.parse(text)
    return {define: fields[name].offset for name, define in wanted.items() if name in fields}


def program_and_attaches(p: Plan, k: Kernel, stack: bool,
                         rate: runconfig.RateLimit | None = None) -> tuple:
    defs: dict[str, object] = {}
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
            defs["HARDIRQ_TP"] = True
            defs.update(_tp_offsets(k, "irq_handler_entry", {"irq": "TP_IRQ_OFF"}))
            defs.update(_tp_offsets(k, "irq_handler_exit", {"ret": "TP_RET_OFF"}))
            attaches += [Attach("tracepoint", "irq:irq_handler_entry", "tp_irq_entry"),
                         Attach("tracepoint", "irq:irq_handler_exit", "tp_irq_exit")]
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

    def __init__(self, p: Plan, k: Kernel, clock: common.Clock, stack: bool) -> None:
        self.p, self.k, self.clock, self.stack = p, k, clock, stack
        self.ctx = tracectx.Decoder(k.abi.name)
        self.stacks = None
        self.table = Table()
        self._funcs: dict[int, str] = {}

    def loaded(self, loaded) -> None:
        if self.stack:
            self.stacks = loaded["stacks"]

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
        out = {"kind": kind, "ts": self.clock.wall(e["ts_ns"]), "cpu": c.cpu,
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
            out["stack"] = [self.k.kallsyms.format(a) for a in self.stacks.walk(e["kstack"])]
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


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    common.require_root()
    k = current()
    p = plan(args, k)
    rate_meta = {"rate_limit": args.rate_limit.meta()} if args.rate_limit else {}
    program, attaches = program_and_attaches(p, k, args.stack, args.rate_limit)
    if args.verbose:
        for line in p.describe():       # device, driver and IRQ line names
            write_line(sys.stderr, f"{PROG}: {for_terminal(line)}")
    events = Events(p, k, common.Clock(), args.stack)
    sink = JsonOutput(PROG) if args.json else \
        _TextSink(PROG, _columns(), header=not args.quiet)
    shown = Quiet(sink) if args.quiet else sink
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
        if args.interval:
            next_report = time.monotonic() + args.interval

    def tick() -> None:
        nonlocal next_report
        now = time.monotonic()
        if next_report is not None and now >= next_report:
            report("interval")
            next_report = max(next_report + args.interval, now)

    def at_exit(_summary) -> dict:
        # -i: the last, partial interval; --summary alone: the whole run
        if args.interval is not None:
            report("interval")
        elif args.summary:
            report("summary")
        return {}

    meta = {"version": __version__, "kernel": k.release, "arch": k.abi.name,
            "attach": p.mechanism or "tracepoint", "why": p.why,
            "device": p.device.as_dict() if p.device else None,
            "handlers": p.handlers.by_irq if p.handlers else {},
            "softirqs": [n for i, n in enumerate(SOFTIRQS) if p.softirq_mask >> i & 1],
            "tasklets": p.tasklet, "tasklet_schedule": p.tasklet_schedule, **rate_meta}
    # -s: BCC loads it (its stack map is read through BCC)
    backend = BpfBackend(k, program, attaches, cacheable=not args.stack, pages=args.buffer_pages)
    Session(PROG, k, backend, sink, consumer, stream.Limits(args.duration, args.max_events),
            standard_meta(meta), verbose=args.verbose, throttled=args.rate_limit is not None,
            on_live=live, on_tick=tick, at_exit=at_exit).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
