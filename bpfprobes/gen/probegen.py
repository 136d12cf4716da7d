"""The generated part of `bpfprobes probe`'s program: one short C function per
spec, and the defines and config of the whole (codegen.py's rules for what may
reach C hold here: this module writes C only through them).

Apart from codegen.py so that a ready tool (opensnoop, execsnoop) does not
import the probe planner to start: a warm start is mostly imports.
"""
from __future__ import annotations

from bpfprobes.base.errors import UsageError
from bpfprobes.gen.codegen import (U64_MAX, Program, c_bytes_equal, c_dir, c_identifier, c_int,
                                   c_member, define_flags, expand_includes, text_bytes)
from bpfprobes.kernel.arch import Abi
from bpfprobes.plan import metricplan, runconfig
from bpfprobes.plan.probefilter import glob_prefix as _glob_prefix
from bpfprobes.plan.probeplan import FOLDED_STACK_ENTRIES, PAIR_ENTRIES, STACK_ENTRIES
from bpfprobes.plan.spec import TYPES as _TYPES


# ---------------------------------------------------------------- bpfprobes probe: one function per spec
#
# The fixed parts (event header, maps, read/submit helpers) are C in
# bpf_c/probe.h; what is generated here is one short function per spec that
# calls them, reading each fetcharg through the arch table (Abi.member), so
# the same spec compiles to the right pt_regs access on every architecture.


_FILTER_BUILTINS = {"pid": ("e->pid", _TYPES["u32"]), "tid": ("e->tid", _TYPES["u32"]),
                    "cpu": ("e->ctx.cpu", _TYPES["u32"]),
                    "latency_ns": ("e->latency_ns", _TYPES["u64"])}
# probe_event.h first: it names the config struct common.h declares the map with
_PROBE_INCLUDES = ("#include <uapi/linux/ptrace.h>", '#include "probe_event.h"',
                   '#include "common.h"', '#include "probe.h"')
# Read modes of probe_read/probe_str (bpf_c/probe.h): kernel memory, user memory,
# or "by address" through the legacy helpers, as the kernel's own kprobe fetchargs
# read. Those helpers exist only where the arch keeps user and kernel addresses
# apart (Abi.non_overlapping); elsewhere kernel memory it is.
MEM_KERNEL, MEM_USER, MEM_EITHER = 0, 1, 2


def _pc_register(abi: Abi) -> str:
    return abi.canonical("pc") or abi.canonical("ip") or "ip"


class _ProbeFn:
    """C statements of one probe function; the value being fetched lives in `v`."""

    def __init__(self, probe, abi: Abi, symbols) -> None:
        self.p = probe
        self.abi = abi
        self.symbols = symbols
        self.lines: list[str] = []
        self.ptr = abi.pointer_size

    def reg(self, name: str) -> str:
        return f"(u64)ctx->{c_member(self.abi.member(name))}"

    def mem_mode(self, user: bool) -> int:
        if user or self.p.spec.is_uprobe:
            return MEM_USER
        return self.either

    @property
    def either(self) -> int:
        return MEM_EITHER if self.abi.non_overlapping else MEM_KERNEL

    def read(self, addr: str, size: int, mode: int, bit: int) -> str:
        self.lines.append(f"v = probe_read({addr}, {size}, {mode}, &e->faults, BIT({bit}));")
        return "v"

    def value(self, node, bit: int) -> str:
        """C expression of a fetcharg's value (a register, or memory read into v)."""
        kind = type(node).__name__
        if kind == "Reg":
            return self.reg(node.name)
        if kind == "Imm":                   # a USDT argument the compiler knew
            return c_int(node.value & U64_MAX)
        if kind == "Arg":
            return self.reg(self.abi.arg_register(node.index))
        if kind == "Retval":
            return self.reg(self.abi.retval)
        if kind == "StackPtr":
            return self.reg(self.abi.stack_pointer)
        if kind == "Stack":
            sp = self.reg(self.abi.stack_pointer)
            return self.read(f"{sp} + {node.index * self.ptr}", self.ptr,
                             self.mem_mode(False), bit)
        if kind in ("Sym", "Deref"):
            return self.read(self.address(node, bit), self.ptr, self.memory(node), bit)
        raise ValueError(f"cannot fetch {node!r} as a value")

    def address(self, node, bit: int) -> str:
        """Address a Deref or @SYM reads from."""
        if type(node).__name__ == "Sym":
            return c_int((self.symbols[node.name] + node.offset) & U64_MAX)
        inner = self.value(node.inner, bit)
        if not node.offset:
            return inner
        return f"{inner} + {node.offset}" if node.offset > 0 else f"{inner} - {-node.offset}"

    def memory(self, node) -> int:
        if type(node).__name__ == "Sym":
            return MEM_KERNEL
        return self.mem_mode(node.user)

    def scalar(self, a, slot) -> None:
        node = a.fetch
        kind = type(node).__name__
        size = self.ptr if a.type.kind == "symbol" else a.type.bits // 8
        if kind in ("Sym", "Deref"):
            val = self.read(self.address(node, slot.index), size, self.memory(node), slot.index)
        elif kind == "Field":      # the whole field: the type's width applies when decoding
            f = self.p.fields[a.name]
            width = f.size if f.size in (1, 2, 4, 8) else size
            val = self.read(f"(u64)ctx + {f.offset}", width, MEM_KERNEL, slot.index)
        else:
            val = self.value(node, slot.index)
        self.lines.append(f"SLOT(e, {slot.offset}) = {val};")

    def string(self, a, slot) -> str:
        """Fill a string slot; returns the C expression of the bytes used."""
        node = a.fetch
        kind = type(node).__name__
        used = f"n{slot.index}"
        if kind == "Comm":
            self.lines.append(f"bpf_get_current_comm(e->payload + {slot.offset}, {slot.size});")
            self.lines.append(f"u32 {used} = {slot.size};")
            return used
        user = a.type.kind == "ustring"
        if kind in ("Sym", "Deref"):
            addr, mode = self.address(node, slot.index), self.memory(node)
            mode = MEM_USER if user else mode
        elif kind == "Field":
            addr, mode = self.field_string(a, slot)
            mode = MEM_USER if user else mode
        else:
            addr = self.value(node, slot.index)
            mode = MEM_USER if user or self.p.spec.is_uprobe else self.either
        self.lines.append(f"u32 {used} = probe_str(e, {slot.offset}, {slot.size}, {addr}, "
                          f"{mode}, BIT({slot.index}));")
        return used

    def field_string(self, a, slot) -> tuple[str, int]:
        f = self.p.fields[a.name]
        if f.dynamic:        # u32: offset (low 16 bits) and length of bytes later in the record
            loc = self.read(f"(u64)ctx + {f.offset}", 4, MEM_KERNEL, slot.index)
            base = f"(u64)ctx + {f.offset + 4} + " if f.dynamic == "__rel_loc" else "(u64)ctx + "
            return f"{base}({loc} & 0xffff)", MEM_KERNEL
        if f.is_char_array:
            return f"(u64)ctx + {f.offset}", MEM_KERNEL
        ptr = self.read(f"(u64)ctx + {f.offset}", min(f.size, 8), MEM_KERNEL, slot.index)
        return ptr, self.either


def _c_compare(expr: str, t, op: str, lit: int) -> str:
    """Compare a typed value with a literal as integers do in math (not as C would).
    probefilter bounds literals to [-2^63, 2^64); the value is s64 or u64."""
    bits = t.bits or 64
    if op == "&":               # in 64-bit two's complement, as Python's & on these ranges
        cast = f"(s64)(s{bits})" if t.kind == "s" else f"(u64)(u{bits})"
        return f"((u64){cast}{expr} & {c_int(lit & U64_MAX)}) != 0"
    if t.kind == "s":
        if lit >= 2**63:                           # above every s64: constant
            return "1" if op in ("!=", "<", "<=") else "0"
        return f"(s64)(s{bits}){expr} {op} {c_int(lit, signed=True)}"
    if lit < 0:                                   # unsigned against negative: constant
        return "1" if op in ("!=", ">", ">=") else "0"
    return f"(u64)(u{bits}){expr} {op} {c_int(lit)}"


def _filter_c(e, probe) -> str:
    """C for the kernel part of a filter (probefilter.split made it exact for C)."""
    kind = type(e).__name__
    if kind == "Not":
        return f"!({_filter_c(e.inner, probe)})"
    if kind in ("And", "Or"):
        joiner = " && " if kind == "And" else " || "
        return "(" + joiner.join(_filter_c(i, probe) for i in e.items) + ")"
    if e.name in _FILTER_BUILTINS:
        expr, t = _FILTER_BUILTINS[e.name]
        return _c_compare(expr, t, e.op, e.value)
    if e.name == "comm":
        return _c_string_test("e->comm", e, COMM_LEN, "comm")
    slot = next(s for s in probe.layout.slots if s.name == e.name)
    guard = f"!(e->faults & BIT({slot.index}))"
    if slot.is_string:
        test = _c_string_test(f"(e->payload + {slot.offset})", e, slot.size, slot.name)
    else:
        test = _c_compare(f"SLOT(e, {slot.offset})", slot.type, e.op, e.value)
    return f"({guard} && {test})"


COMM_LEN = 16          # bpf_c/probe_event.h PROBE_COMM_LEN: the kernel's TASK_COMM_LEN


def _c_string_test(base: str, e, capacity: int, what: str) -> str:
    """Compare at most `capacity` bytes: the buffer holds no more (a longer
    literal would read past it and could never match what the kernel kept)."""
    text = str(e.value)
    prefix = _glob_prefix(text) if e.op in ("~", "!~") else None
    data = text_bytes(prefix) if prefix is not None else text_bytes(text) + b"\0"
    if len(data) > capacity:
        raise UsageError(f"the filter's string for {what} is {len(data) - (prefix is None)} "
                         f"bytes; {what} holds at most {capacity - 1}",
                         "compare a shorter string, or a prefix with ~ 'PREFIX*'")
    test = c_bytes_equal(base, data)
    return f"({test})" if e.op in ("==", "~") else f"!({test})"


def _probe_function(probe, plan, abi: Abi) -> str:
    g = _ProbeFn(probe, abi, plan.symbols)
    spec = probe.spec
    ctx_type = "void" if spec.kind == "tracepoint" else "struct pt_regs"
    out = [f"/* spec {probe.index} */", f"int {c_identifier(probe.fn)}({ctx_type} *ctx)", "{",
           "    u64 id = bpf_get_current_pid_tgid();",
           f"    struct probe_event *e = probe_begin(id, {probe.index}, "
           f"{'CTX_TASK' if spec.is_uprobe else 'CTX_UNKNOWN'});",
           "    u64 v = 0;", "    if (!e)", "        return 0;"]
    if probe.stash is not None:
        out.append(f"    pair_enter(id, {probe.stash});")
    if probe.pair is not None:
        out.append(f"    e->latency_ns = pair_leave(id, {probe.pair}, e->ts_ns);")
    if spec.is_return:
        out.append(f"    e->ret_ip = {g.reg(_pc_register(abi))};")
    elif spec.kind != "tracepoint" and (probe.uprobe.at_entry if probe.uprobe is not None
                                        else spec.offset == 0 and spec.symbol):
        link = abi.link_register
        if link:
            g.lines.append(f"e->ret_ip = {g.reg(link)};")
        else:       # read it from the stack; a failure is no argument's fault: clear the bit
            ret = g.read(g.reg(abi.stack_pointer), abi.pointer_size, g.mem_mode(False), 63)
            g.lines += [f"e->ret_ip = {ret};", "e->faults = 0;"]
    used = {}
    for n, (a, slot) in enumerate(zip(spec.args, probe.layout.slots)):
        g.lines.append(f"/* argument {n} */")
        if slot.is_string:
            used[slot.index] = g.string(a, slot)
        else:
            g.scalar(a, slot)
    out += [f"    {line}" for line in g.lines]
    if probe.kernel_filter is not None:
        out += [f"    if (!{_filter_c(probe.kernel_filter, probe)})", "        return 0;"]
    if plan.options.metrics is not None:
        return "\n".join(out + [f"    {line}" for line in _metric_lines(probe, plan)]
                         + ["    return 0;", "}"])
    # a uprobe fires in user mode: there is no kernel stack to take
    k, u = int(plan.options.kstack and not spec.is_uprobe), int(plan.options.ustack)
    if k or u:
        out.append(f"    probe_stacks(ctx, e, {k}, {u});")
    last = probe.layout.trimmed
    size = (f"{last.offset} + {used[last.index]}" if last is not None and last.offset else
            used[last.index] if last is not None else str(probe.layout.size))
    out += [f"    probe_submit(ctx, e, offsetof(struct probe_event, payload) + {size});",
            "    return 0;", "}"]
    return "\n".join(out)


def _metric_lines(probe, plan) -> list[str]:
    """Metrics mode: the call counted under its labels (metrics.h), nothing sent.
    Only slot offsets and fixed names reach the C: labels are data, never code."""
    m, sources = plan.options.metrics, plan.metric_labels[probe.index]
    lines = [f"struct metric_key mk = {{.probe = {probe.index}, .err = METRIC_NO_ERRNO}};"]
    if "pid" in m.by:
        lines.append("mk.pid = e->pid;")
    if "comm" in m.by:
        lines.append("__builtin_memcpy(mk.comm, e->comm, sizeof(mk.comm));")
    if metricplan.ERRNO in m.by and sources.errno is not None:
        ret = sources.errno.c_value(f"SLOT(e, {sources.errno.offset})")
        lines.append(f"mk.err = metric_errno({ret});")
    for i, src in enumerate(sources.args):
        if src is not None:
            lines.append(f"mk.args[{i}] = {src.c_value(f'SLOT(e, {src.offset})')};")
    if m.stacks:
        return lines + _stack_key_lines(probe, plan)
    if m.value is not None:                 # --hist-of: the argument's value, where it is
        src = sources.value
        value = src.c_value(f"SLOT(e, {src.offset})") if src is not None else "0"
        signed = int(src is not None and src.type.kind == "s")
        return lines + [f"metric_add(&mk, {value}, {int(src is not None)}, {signed});"]
    timed = "e->latency_ns != 0" if m.timed and probe.pair is not None else "0"
    return lines + [f"metric_add(&mk, e->latency_ns, {timed}, 0);"]


def _stack_key_lines(probe, plan) -> list[str]:
    """--folded: the call counted under its stacks (metricplan.STACK_ARGS); with user
    stacks, the process's first sight is sent (probe_seen) so its maps are kept."""
    o, spec, at = plan.options, probe.spec, metricplan.STACK_ARGS
    kernel, user = o.kstack and not spec.is_uprobe, o.ustack
    lines = [f"mk.args[{at['kstack']}] = (u64)" +
             ("folded_stack(ctx, 0, 0);" if kernel else "-1LL;"),
             f"mk.args[{at['ustack']}] = (u64)" +
             ("folded_stack(ctx, BPF_F_USER_STACK, 0);" if user else "-1LL;")]
    if not spec.is_return:                  # entry probes: the caller read at entry, if any
        lines.append(f"mk.args[{at['caller']}] = e->ret_ip;")
    if user:
        lines += ["struct probe_space sp = {};", "probe_space_of(&sp);",
                  "u64 space = probe_space_id(&sp);", f"mk.args[{at['mm']}] = space;"]
    lines.append("metric_add(&mk, 0, 0, 0);")
    return lines + (["probe_seen(ctx, e, space, &sp);"] if user else [])


def _stash_function(stash) -> str:
    # filtered as the return probe is (--comm too): no entry it would never collect
    return "\n".join([f"/* entry of pair {stash.pair}: its time, for the latency */",
                      f"int {c_identifier(stash.fn)}(struct pt_regs *ctx)", "{",
                      "    u64 id = bpf_get_current_pid_tgid();",
                      "    if (!probe_task_wanted(id))", "        return 0;",
                      f"    pair_enter(id, {stash.pair});", "    return 0;", "}"])


def metric_defines(m: metricplan.Options, probes: int) -> dict[str, object]:
    """bpf_c/metrics.h's defines for a program counting `probes` probes (or kinds)."""
    return {"METRIC_SERIES": m.max_series, "METRIC_PROBES": max(1, probes),
            "METRIC_SLOTS": m.slots if m.bucketed else 0,
            "METRIC_LINEAR": m.linear, "METRIC_DIV": m.divide if m.divide != 1 else None}


def probe_defines(plan) -> dict[str, object]:
    o = plan.options
    payload = max((p.layout.size for p in plan.probes), default=0)
    metrics = {} if o.metrics is None else {"PROBE_METRICS": True,
                                            **metric_defines(o.metrics, len(plan.probes))}
    folded = o.metrics is not None and o.metrics.stacks
    if folded:      # stacks kept by content (folded.h), not in a stack trace map
        metrics.update(PROBE_FOLDED=True, FOLDED_STACKS=FOLDED_STACK_ENTRIES,
                       FOLDED_SEED=o.folded_seed, **dict(o.task_offsets or {}))
    return {"PROBE_PAYLOAD_MAX": max(payload, 32 if folded else 8),
            "PROBE_STACKS": STACK_ENTRIES if (o.kstack or o.ustack) and not folded else None,
            "PROBE_PAIRS": PAIR_ENTRIES if plan.pairs else None, **(o.context or {}),
            **metrics}


def probe_config(plan) -> bytes:
    """The run's settings of a probe program (struct probe_config)."""
    o = plan.options
    values = runconfig.task(skip_pid=o.skip_pid, pid=o.pid, tid=o.tid, rate=o.rate_limit)
    if o.comm is not None:
        name = text_bytes(o.comm)
        values.update(comm=name, comm_len=len(name), comm_set=1)
    return runconfig.pack(runconfig.PROBE, values)


def probe_source(plan, abi: Abi) -> str:
    """The generated C (before bpf_c/ includes are inlined): what --dry-run shows."""
    parts = ["\n".join(_PROBE_INCLUDES)]
    parts += [_probe_function(p, plan, abi) for p in plan.probes]
    parts += [_stash_function(s) for s in plan.stashes]
    return "\n\n".join(parts) + "\n"


def probe_program(plan, abi: Abi) -> Program:
    """The program for a probeplan.Plan on architecture `abi`."""
    return Program("probe.bpf.c", expand_includes(probe_source(plan, abi), c_dir()),
                   tuple(["-w", *define_flags(probe_defines(plan))]), probe_config(plan))
