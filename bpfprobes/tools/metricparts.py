"""Metric parts: a program that counts in the kernel (bpf_c/metrics.h) under a
part's labels, loaded and attached on its own, read into Prometheus families.

One part per [[count]] / [[probe]] / [[opensnoop]] of a session file (serve),
or the one part of `probe --prometheus`. Each part has its own program and
its own teardown: a reload adds and removes parts without touching the others,
whose counters therefore stay monotonic. A part that cannot load or attach on
this kernel is down (bpfprobes_part_up 0, the reason in the log); the rest run.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, replace
from typing import Callable

from bpfprobes.backends.bpf import tables
from bpfprobes.backends.bpf.backend import BpfBackend
from bpfprobes.base import signals
from bpfprobes.base.errors import BpfprobesError, KernelError, UsageError
from bpfprobes.gen import codegen, probegen
from bpfprobes.kernel import binaries
from bpfprobes.kernel.running import Kernel
from bpfprobes.plan import (countplan, metricplan, probeattach, probefilter, probeplan,
                            runconfig, spec)
from bpfprobes.plan.sessionfile import Part as Decl
from bpfprobes.present import metricrows
from bpfprobes.tools import count, opensnoop

PART_BUDGET = 128 << 20         # kernel bytes one part's table may take (all CPUs)
ENTRY_BYTES = 64 + 56           # a row's key and the hash's own per-row bookkeeping


def table_bytes(decl: Decl, cpus: int) -> int:
    """What a part's preallocated per-CPU table costs the kernel: every row's key
    once, its value on every possible CPU (16 bytes, 336 with latency buckets)."""
    # count, sum; with buckets, the negatives and the slots (metric_row.h)
    value = 16 + (8 + 8 * metricplan.SLOTS if decl.latency or decl.kind == "probe" else 0)
    return decl.max_series * (ENTRY_BYTES + value * cpus)


def check_budget(decl: Decl) -> int:
    """The part's table bytes, refused (UsageError) past PART_BUDGET on this machine."""
    cpus = len(tables.possible_cpus())
    need = table_bytes(decl, cpus)
    if need > PART_BUDGET:
        raise UsageError(f"max_series {decl.max_series} would take {need >> 20} MiB of kernel "
                         f"memory on {cpus} CPUs (at most {PART_BUDGET >> 20} MiB a part)",
                         "lower max_series: the rows past it are counted under other=\"true\"")
    return need


def _int_label(t: spec.ArgType) -> Callable[[int], str]:
    """A captured integer as a label: its type's width and sign, hex for x."""
    bits = t.bits or 64
    if t.kind == "x":
        return lambda v: hex(v & ((1 << bits) - 1))
    if t.kind == "s":
        return lambda v: str(v - (1 << 64) if v >> 63 else v)     # sign-extended in the kernel
    return lambda v: str(v & ((1 << bits) - 1))


@dataclass
class Part:
    """A declared part, planned: its backend, labels and how its families are
    named; or one this kernel cannot plan (no backend: down, `reason` says why)."""
    decl: Decl
    backend: BpfBackend | None
    labels: metricrows.Labels | None
    families: Callable[[dict], list] | None     # totals -> families
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    reader: count.CountTables | None = None
    up: bool = False
    reason: str = "not attached yet"
    last: dict = field(default_factory=dict)        # health figures, kept when down

    @property
    def name(self) -> str:
        return self.decl.name

    @classmethod
    def cannot(cls, decl: Decl, why: str) -> "Part":
        """A part this kernel cannot run (a function it lacks): down from the start."""
        return cls(decl, None, None, None, reason=why)

    def start(self, stop: signals.StopSignals) -> None:
        """Load and attach (BpfprobesError: down, with what was made torn down)."""
        if self.backend is None:
            return
        try:
            self.backend.load(self.stack, stop)
            self.reader = self.backend.transport()
            self.backend.attach(stop)
        except BpfprobesError as e:
            self.close()
            self.up, self.reason = False, e.what
            return
        except signals.Stopped:
            self.close()                # what was made is torn down here, then the stop
            self.reason = "stopped while starting"
            raise
        self.up, self.reason = True, f"{len(self.backend.loaded.attached)} attached"

    def snapshot(self) -> list:
        """Its families and health figures now (the kernel's tables read once)."""
        if not self.up:
            return []
        loaded = self.backend.loaded
        self.last = {"up": 1, "lost": self.reader.lost, "throttled": self.reader.throttled,
                     "series_dropped": loaded.per_cpu_sum("series_dropped")
                     if loaded.has_map("series_dropped") else 0}
        return self.families(self.reader.read())

    def health(self) -> dict:
        return {**self.last, "up": int(self.up)}

    def close(self) -> None:
        self.stack.close()
        if self.up:
            self.up, self.reason = False, "detached"


def _probe_part(k: Kernel, decl: Decl, texts: list[str], index_label: str,
                names: Callable[[probeplan.Plan], tuple[str, ...]], metric: str,
                doc: str) -> Part:
    specs = spec.parse_all(texts, k.abi, binaries.Resolver())      # bash:readline too
    expr = probefilter.parse(decl.filter) if decl.filter else None
    if decl.latency and not any(s.is_return for s in specs):
        raise UsageError(f"part {decl.name}: latency times return probes, and no spec is one",
                             "add an r: spec, e.g. 'r:do_sys_openat2 ret=$retval'")
    facts = probeplan.resolve(specs, k)
    options = probeplan.Options(latency=decl.latency, skip_pid=os.getpid(), filter=expr,
                                rate_limit=decl.rate_limit,
                                metrics=metricplan.Options(decl.by, decl.max_series))
    plan = probeplan.assemble(facts, options, k.abi)
    # timed where a latency is measured: asked for, or a p: and r: pair of one function
    timed = decl.latency or plan.pairs > 0
    plan = probeplan.with_metrics(plan, replace(options.metrics, timed=timed))
    args = metricplan.arg_labels(decl.by)
    formats = []
    for i, name in enumerate(args):
        types = [pl.args[i].type for pl in plan.metric_labels if pl.args[i] is not None]
        formats.append((name, _int_label(types[0])))
    labels = metricrows.Labels(index_label, names(plan), pid="pid" in decl.by,
                               comm="comm" in decl.by, errno="errno" in decl.by,
                               args=tuple(formats))
    backend = BpfBackend(k, probegen.probe_program(plan, k.abi), probeattach.attachments(k, plan),
                         cacheable=False,
                         reader=lambda loaded: count.CountTables(loaded, labels))

    def families(totals: dict) -> list:
        out = [metricrows.counter(f"{decl.name}_{metric}", doc, labels, totals)]
        if timed:
            out.append(metricrows.histogram(f"{decl.name}_latency_seconds",
                                            "Time from a call's entry to its return", labels,
                                            totals))
        return out
    return Part(decl, backend, labels, families)


def _count_part(k: Kernel, decl: Decl) -> Part:
    targets = countplan.expand(k, list(decl.targets))
    per_task = [d for b in decl.by for d in count.BY.get(b, ())]     # pid, comm
    config = runconfig.pack(runconfig.COUNT, runconfig.task(skip_pid=os.getpid(),
                                                            rate=decl.rate_limit))
    defs = {"METRIC_SERIES": decl.max_series if per_task else None,
            **{d: True for d in per_task}}
    plan = countplan.attaching(k, targets)
    program = codegen.count_program(len(targets), defs, config, plan.counters)
    labels = metricrows.Labels("target" if "target" in decl.by else None,
                               tuple(t.name for t in targets), pid="pid" in decl.by,
                               comm="comm" in decl.by)
    backend = BpfBackend(k, program, plan.attaches, cacheable=False,
                         reader=lambda loaded: count.CountTables(loaded, labels))
    return Part(decl, backend, labels, lambda totals: [
        metricrows.counter(decl.name, "Calls counted in the kernel", labels, totals)])


def _opensnoop_specs(k: Kernel) -> list[str]:
    return [f"t:syscalls:sys_exit_{sc} ret" for sc in opensnoop.SYSCALLS
            if k.tracepoint_exists("syscalls", f"sys_exit_{sc}")]


def plan_part(k: Kernel, decl: Decl, strict: bool = False) -> Part:
    """A part planned on this kernel (UsageError: the file asks for the impossible).
    What this kernel cannot do (a function it lacks, no kprobes) makes a part that
    is down, not an error: one file serves a fleet of kernels (`strict`: an error)."""
    try:
        return _plan(k, decl)
    except KernelError as e:
        if strict:
            raise
        return Part.cannot(decl, e.what)


def _plan(k: Kernel, decl: Decl) -> Part:
    if decl.kind == "count":
        return _count_part(k, decl)
    if decl.kind == "opensnoop":
        by = tuple("probe" if b == "syscall" else b for b in decl.by)
        decl_ = Decl(decl.kind, decl.name, decl.line, by=by, filter=decl.filter,
                     max_series=decl.max_series, rate_limit=decl.rate_limit)
        part = _probe_part(k, decl_, _opensnoop_specs(k), "syscall" if "syscall" in decl.by
                           else None, lambda plan: tuple(p.spec.event.removeprefix("sys_exit_")
                                                         for p in plan.probes),
                           "opens", "Opens (open, openat, openat2), counted in the kernel")
        part.decl = decl
        return part
    return _probe_part(k, decl, list(decl.specs), "probe",
                       lambda plan: tuple(p.event for p in plan.probes), "events",
                       "Probe hits, counted in the kernel")
