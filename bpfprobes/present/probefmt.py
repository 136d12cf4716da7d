"""`bpfprobes probe` events: raw sample -> typed values -> ftrace line or JSON.

Text is what perf-tools' kprobe prints from trace_pipe:

    TASK-TID [CPU] TIMESTAMP: EVENT: (func+0x0) name=value ...
    TASK-TID [CPU] TIMESTAMP: EVENT: (caller+0x1c <- func) ret=-2 (ENOENT) latency_ns=1530

with `(fault)` for an argument that could not be read, `..."` for a string
that filled its slot, and stacks as ` => frame` lines; each line is escaped
for the terminal (safetext.for_terminal), a string value also has its `\\` and
`"` escaped so that its end is never in doubt. JSON carries the same facts
typed: ints as ints, strings as strings with every byte (decode.cstr).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from bpfprobes.base.safetext import for_terminal
from bpfprobes.kernel import errnos, tracectx
from bpfprobes.kernel.kallsyms import Kallsyms
from bpfprobes.kernel.tracectx import Context
from bpfprobes.plan import probefilter
from bpfprobes.plan.probelayout import Slot, typed
from bpfprobes.plan.probeplan import CALLER_MAYBE, CALLER_MISSING, Plan, Probe
from bpfprobes.plan.spec import Field, Retval
from bpfprobes.present.decode import PROBE_EVENT, cstr, probe_event
from bpfprobes.present.latency import Reservoir, human_ns

HEADER = PROBE_EVENT.head.size
# Addresses a kernel return probe may see instead of the real caller
TRAMPOLINES = ("trampoline", "rethook")      # a kretprobe's frames, not a caller's


@dataclass
class Event:
    probe: Probe
    head: dict
    values: dict             # argument name -> int | str | None (None: fault)
    truncated: set
    caller: str | None = None
    kstack: list[str] | None = None
    ustack: list[str] | None = None
    stack_errors: dict = field(default_factory=dict)
    context: Context | None = None           # --context

    @property
    def latency_ns(self) -> int | None:
        if self.probe.pair is None or not self.head["latency_ns"]:
            return None
        return self.head["latency_ns"]


def is_return_value(probe: Probe, slot: Slot) -> bool:
    a = probe.spec.args[slot.index]
    return isinstance(a.fetch, Retval) or (
        isinstance(a.fetch, Field) and a.fetch.name == "ret" and probe.spec.event.startswith("sys_exit"))


def errno_of(probe: Probe, slot: Slot, value) -> str | None:
    """ENOENT for a return value of -2 (signed), or an ERR_PTR (pointer-sized hex)."""
    if not isinstance(value, int) or not is_return_value(probe, slot):
        return None
    if slot.type.kind == "x" and slot.type.bits >= 32:
        value -= (1 << slot.type.bits) if value >> (slot.type.bits - 1) else 0
    elif slot.type.kind != "s":
        return None
    if value == -1 and probe.spec.is_uprobe:
        return None         # user code's -1 means "see errno", not EPERM
    return errnos.name(value)


class Stats:
    """Per-probe counts and latency percentiles for --summary."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.counts = {p.index: 0 for p in plan.probes}
        self.latencies = {p.index: Reservoir() for p in plan.probes}

    def add(self, ev: Event) -> None:
        self.note(ev.probe.index, ev.latency_ns)

    def note(self, index: int, latency_ns: int | None) -> None:
        """An event of probe `index` shown (proberows counts with no Event)."""
        self.counts[index] += 1
        if latency_ns is not None:
            self.latencies[index].add(latency_ns)

    def rows(self) -> list[dict]:
        out = []
        for p in self.plan.probes:
            row = {"probe": p.event, "spec": p.spec.text, "count": self.counts[p.index]}
            if p.pair is not None:
                row["latency_ns"] = self.latencies[p.index].summary()
            out.append(row)
        return out

    def table(self) -> str:
        rows = []
        for r in self.rows():
            lat = r.get("latency_ns")
            cells = [human_ns(lat[k]) for k in ("p50", "p90", "p99", "max")] if lat else \
                ["-"] * 4
            rows.append([r["probe"], r["count"], *cells])
        from tabulate import tabulate       # here: ~30 ms of imports a trace needs only at exit
        text = tabulate(rows, headers=["PROBE", "COUNT", "P50", "P90", "P99", "MAX"],
                        colalign=("left", "right", "right", "right", "right", "right"))
        return "\n".join(map(for_terminal, text.split("\n")))


def with_caller(addrs: list[int], caller: int, missing: bool = False) -> list[int]:
    """A stack taken at a function's first instruction, with its caller: a
    frame-pointer walk starts from the frame of the caller's caller there (the
    return address is still at the stack pointer), so the return address read at
    entry is put back second. `missing`: known to lack it (CallerRule, for user
    stacks); else (the kernel's own stacks, which ORC walks right) only where no
    frame near the top is that address."""
    if not caller or (not missing and caller in addrs[:3]):
        return addrs
    return [*addrs[:1], caller, *addrs[1:]]


class CallerRule:
    """Whether the user stacks of a probe at a function's entry lack the caller.
    Surely, where the kernel never puts it back (probeplan.CALLER_MISSING). After
    push %rbp or endbr64 on x86 a kernel may (CALLER_MAYBE), and no version says
    which: then a stack whose second frame is not the caller's return address
    proves the walk lacks it, for every stack of that probe. Recursion is why a
    look at one stack is not enough: r -> r -> r has the caller's address as the
    walk's next frame either way; the outermost call settles it."""

    def __init__(self) -> None:
        self.lacking: set[int] = set()          # probe indexes proven to lack it

    def observe(self, probe: Probe, addrs: list[int], caller: int) -> None:
        up = probe.uprobe
        if up is not None and up.caller == CALLER_MAYBE and caller and \
                (len(addrs) < 2 or addrs[1] != caller):
            self.lacking.add(probe.index)

    def apply(self, probe: Probe, addrs: list[int], caller: int) -> list[int]:
        """The stack with the caller put back where it lacks it (observing it first)."""
        up = probe.uprobe
        if up is None or not up.caller:
            return addrs
        self.observe(probe, addrs, caller)
        if up.caller == CALLER_MISSING or probe.index in self.lacking:
            return with_caller(addrs, caller, missing=True)
        return addrs


class Decoder:
    """Raw samples -> Events (None when the userspace part of --filter says no).

    `stack_walk(id)` lists a stack's addresses, `usym(addr, pid)` names a user
    address; both come from the loaded program's backend, so this module needs none.
    """

    def __init__(self, plan: Plan, kallsyms: Kallsyms,
                 stack_walk: Callable[[int], list[int]] | None = None,
                 usym: Callable[[int, int], str] | None = None,
                 ucaller: Callable[[int, int], str] | None = None,
                 context: tracectx.Decoder | None = None, entry_callers: bool = True) -> None:
        self.plan = plan
        # an entry probe's caller is in its JSON, not in its line: naming a user
        # address needs libbcc's symbolizer (~60 MB), so a line-only run asks none
        self.entry_callers = entry_callers
        self.context = context
        self.kallsyms = kallsyms
        self.stack_walk = stack_walk
        self.usym = usym or (lambda addr, pid: f"0x{addr:x}")
        self.callers = CallerRule()
        self.ucaller = ucaller or self.usym          # the same without [module]

    def values(self, probe: Probe, head: dict, payload: bytes) -> tuple[dict, set, dict]:
        """(shown values, truncated names, values as the filter compares them)"""
        values, truncated, numbers = {}, set(), {}
        for slot, raw in zip(probe.layout.slots, probe.layout.unpack(payload)):
            bit = 1 << slot.index
            if head["faults"] & bit:
                values[slot.name] = None
            elif slot.is_string:
                values[slot.name] = cstr(raw)              # type: ignore[arg-type]
                if head["truncated"] & bit:
                    truncated.add(slot.name)
            elif slot.type.kind == "symbol":
                values[slot.name] = self.kallsyms.format(raw)   # type: ignore[arg-type]
                numbers[slot.name] = raw                   # a filter compares the address
            else:
                values[slot.name] = typed(slot.type, raw)       # type: ignore[arg-type]
        return values, truncated, numbers

    def __call__(self, raw: bytes) -> Event | None:
        head = probe_event(raw)
        if head["probe"] >= len(self.plan.probes):
            return None
        probe = self.plan.probes[head["probe"]]
        values, truncated, numbers = self.values(probe, head, raw[HEADER:])
        ev = Event(probe, head, values, truncated)
        if probe.user_filter is not None:
            env = {**values, **numbers, "pid": head["pid"], "tid": head["tid"], "cpu": head["cpu"],
                   "comm": head["comm"], "latency_ns": ev.latency_ns}
            if not probefilter.evaluate(probe.user_filter, env):
                return None
        ev.caller = self._caller(probe, head) \
            if self.entry_callers or probe.spec.is_return else None
        self._stacks(ev)
        if self.context is not None:
            ev.context = self.context(head["ctx"])
        return ev

    def _caller(self, probe: Probe, head: dict) -> str | None:
        ip = head["ret_ip"]
        if not ip:
            return None
        if probe.spec.is_uprobe:
            return self.ucaller(ip, head["pid"])
        name = self.kallsyms.format(ip)
        return None if any(t in name for t in TRAMPOLINES) else name

    def _stacks(self, ev: Event) -> None:
        if self.stack_walk is None:
            return
        for key, kernel in (("kstack", True), ("ustack", False)):
            sid = ev.head[key]
            if sid == -1:
                continue                               # not asked for
            if sid < 0:
                ev.stack_errors[key] = errnos.name(sid) or str(sid)
                continue
            addrs = list(self.stack_walk(sid))
            if kernel and ev.probe.spec.is_kernel and not ev.probe.spec.is_return:
                addrs = with_caller(addrs, ev.head["ret_ip"])
            elif not kernel:
                addrs = self.callers.apply(ev.probe, addrs, ev.head["ret_ip"])
            if kernel:      # a kretprobe on the same function shows up as its trampoline
                frames = [self.kallsyms.format(a) for a in addrs]
                ev.kstack = [f for f in frames if not any(t in f for t in TRAMPOLINES)]
            else:
                ev.ustack = [self.usym(a, ev.head["pid"]) for a in addrs]


# ---------------------------------------------------------------- rendering

def quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")


def value_text(probe: Probe, slot: Slot, value, truncated: bool) -> str:
    if value is None:
        return "(fault)"
    if slot.is_string:
        return f'"{quote(value)}{"..." if truncated else ""}"'
    if slot.type.kind == "x":
        return f"0x{value:x}"
    if slot.type.kind == "symbol":
        return value
    name = errno_of(probe, slot, value)
    return f"{value} ({name})" if name else str(value)


def location(ev: Event) -> str | None:
    p = ev.probe
    if p.spec.kind == "tracepoint":
        return None
    if p.spec.is_return:
        return f"{ev.caller} <- {p.where}" if ev.caller else f"<- {p.where}"
    return p.where


def ftrace_text(ev: Event) -> str:
    """One ftrace-style line, then stack lines if any, escaped for a terminal."""
    h = ev.head
    where = location(ev)
    args = [f"{s.name}={value_text(ev.probe, s, ev.values[s.name], s.name in ev.truncated)}"
            for s in ev.probe.layout.slots]
    if ev.latency_ns is not None:
        args.append(f"latency_ns={ev.latency_ns}")
    body = " ".join(([f"({where})"] if where else []) + args)
    flags = f" {ev.context.flags}" if ev.context is not None else ""
    lines = [f"{h['comm']:>16}-{h['tid']:<7} [{h['cpu']:03d}]{flags} {h['ts_ns'] / 1e9:12.6f}: "
             f"{ev.probe.event}: {body}".rstrip()]
    for key, title in (("kstack", "<stack trace>"), ("ustack", "<user stack trace>")):
        frames = getattr(ev, key)
        if frames is not None:
            lines.append(f" {title}")
            lines += [f" => {f}" for f in frames]
        elif key in ev.stack_errors:
            lines.append(f" {title} unavailable: {ev.stack_errors[key]}")
    # comm, string values, symbols and frames come from the traced system
    return for_terminal(lines[0]) if len(lines) == 1 else "\n".join(map(for_terminal, lines))


FTRACE_HEADER = ("# tracer: bpfprobes\n#\n"
                 "#             TASK-TID     CPU     TIMESTAMP  FUNCTION\n"
                 "#                | |        |          |         |")


def json_event(ev: Event, wall: Callable[[int], float]) -> dict:
    h = ev.head
    out: dict = {"probe": ev.probe.event, "pid": h["pid"], "tid": h["tid"], "comm": h["comm"],
                 "cpu": h["cpu"], "ts": wall(h["ts_ns"]), "ts_ns": h["ts_ns"],
                 "args": dict(ev.values)}
    where = location(ev)
    if where:
        out["where"] = where
    if ev.caller:
        out["caller"] = ev.caller
    if ev.probe.pair is not None:
        out["latency_ns"] = ev.latency_ns
    if ev.context is not None:
        out["context"] = ev.context.as_dict()
    names = {s.name: errno_of(ev.probe, s, ev.values[s.name]) for s in ev.probe.layout.slots}
    names = {k: v for k, v in names.items() if v}
    if names:
        out["errno"] = names
    faults = [k for k, v in ev.values.items() if v is None]
    if faults:
        out["faults"] = faults
    if ev.truncated:
        out["truncated"] = sorted(ev.truncated)
    for key in ("kstack", "ustack"):
        if getattr(ev, key) is not None:
            out[key] = getattr(ev, key)
        elif key in ev.stack_errors:
            out[key + "_error"] = ev.stack_errors[key]
    return out
