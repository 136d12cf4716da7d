"""What a metrics part counts under which labels, checked before any C is written.

A probe part (serve's [[probe]] and [[opensnoop]], probe --prometheus) counts
each probe's calls in the kernel (bpf_c/metrics.h) under the probe's name and
the labels in `by`: comm, pid, errno (from the probe's return value: $retval,
or a tracepoint's `ret` field), or a captured integer argument by its name.
Strings are no labels: a path per series is how a table explodes; comm is
bounded by the kernel (16 bytes) and by max_series.
"""
from __future__ import annotations

from dataclasses import dataclass

from bpfprobes.base.errors import UsageError
from bpfprobes.plan.spec import ArgType, Field, Retval

TASK_LABELS = ("comm", "pid")
MAX_ARG_LABELS = 4                  # metric_row.h METRIC_ARGS
DEFAULT_MAX_SERIES = 1000
SLOTS = 40                          # log2 latency buckets: up to 2^40 ns (18 min)
VALUE_SLOTS = 65                    # log2 buckets of any 64-bit value (probe --hist-of)
MAX_SERIES_LIMIT = 100_000          # a table the kernel allocates for every CPU at load
ERRNO = "errno"


@dataclass(frozen=True)
class Options:
    by: tuple[str, ...] = ()                # labels besides the probe's name
    max_series: int = DEFAULT_MAX_SERIES    # label sets kept; past it: other="true"
    timed: bool = False                     # latency histograms of return probes
    value: str | None = None                # probe --hist-of: bucket this argument instead
    linear: int | None = None               # buckets this wide; None: log2
    divide: int = 1                         # the latency's unit: 1 ns, 1000 us, 10^6 ms
    stacks: bool = False                    # --folded: keyed by the stacks (STACK_ARGS)
    slots: int = SLOTS                      # buckets kept when bucketed

    @property
    def bucketed(self) -> bool:
        return self.timed or self.value is not None


# --folded: where a row's key holds its stacks (metric_key.args): the kernel and user
# stack ids (-errno where none was taken, -1 not asked), the return address read at a
# function's first instruction (its caller, which a frame-pointer walk skips), the mm
STACK_ARGS = {"kstack": 0, "ustack": 1, "caller": 2, "mm": 3}


@dataclass(frozen=True)
class Source:
    """Where a label's value sits in a probe's event: a payload slot and its type."""
    offset: int
    type: ArgType

    def c_value(self, slot_expr: str) -> str:
        """The slot's value as C, cut to the type's width (sign-extended where signed):
        the same value then makes the same row whatever the register's upper bits."""
        bits = self.type.bits
        if not bits or bits >= 64:
            return slot_expr
        if self.type.kind == "s":
            return f"(u64)(s64)(s{bits}){slot_expr}"
        return f"({slot_expr} & {hex((1 << bits) - 1)}ULL)"


@dataclass(frozen=True)
class ProbeLabels:
    """One probe's sources: errno's (None: it has no return value), each arg label's,
    and the value --hist-of buckets (None: the probe lacks it, or a latency is)."""
    errno: Source | None
    args: tuple[Source | None, ...]
    value: Source | None = None


def _errno_source(probe) -> Source | None:
    for a, slot in zip(probe.spec.args, probe.layout.slots):
        is_ret = isinstance(a.fetch, Retval) or (isinstance(a.fetch, Field)
                                                 and a.fetch.name == "ret")
        if is_ret and not slot.is_string:
            return Source(slot.offset, a.type)
    return None


def _arg_source(probe, name: str) -> Source | None:
    for slot in probe.layout.slots:
        if slot.name == name and not slot.is_string and slot.type.kind != "symbol":
            return Source(slot.offset, slot.type)
    return None


def arg_labels(by: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n in by if n not in (*TASK_LABELS, ERRNO, "probe"))


def bind(probes, o: Options) -> tuple[ProbeLabels, ...]:
    """Each probe's label sources for `o.by` (UsageError: a label no probe has,
    a string, too many, a filter that would need userspace)."""
    if len(set(o.by)) != len(o.by):
        raise UsageError(f"by names a label twice: {', '.join(o.by)}")
    args = arg_labels(o.by)
    if len(args) > MAX_ARG_LABELS:
        raise UsageError(f"by names {len(args)} arguments; {MAX_ARG_LABELS} at most")
    if not 1 <= o.max_series <= MAX_SERIES_LIMIT:
        raise UsageError(f"max_series is {o.max_series}; 1 to {MAX_SERIES_LIMIT}")
    out = []
    for p in probes:
        if p.user_filter is not None:
            raise UsageError(f"the filter cannot be checked in the kernel for {p.event}, and a "
                             "metric is counted there", "compare integer fields and comm only")
        out.append(ProbeLabels(_errno_source(p), tuple(_arg_source(p, n) for n in args),
                               _arg_source(p, o.value) if o.value else None))
    if o.value and not any(pl.value for pl in out):
        strings = any(s.name == o.value for p in probes for s in p.layout.slots)
        raise UsageError(f"--hist-of {o.value}: " + ("a string has no histogram" if strings
                                                     else "no probe captures it"),
                         "name a captured integer argument, e.g. 'r:FUNC ret=$retval' "
                         "--hist-of ret")
    if ERRNO in o.by and not any(pl.errno for pl in out):
        raise UsageError("by names errno, and no probe captures a return value",
                         "capture one: r:FUNC ret=$retval, or a sys_exit tracepoint's ret")
    unsigned = [p.event for p, pl in zip(probes, out)
                if ERRNO in o.by and pl.errno and pl.errno.type.kind != "s"]
    if unsigned:
        raise UsageError(f"by names errno, and {unsigned[0]}'s return value is unsigned: "
                         "no errno is negative there", "type it signed: ret=$retval:s32 "
                         "for an int, :s64 for a long")
    for i, name in enumerate(args):
        if not any(pl.args[i] for pl in out):
            strings = any(s.name == name for p in probes for s in p.layout.slots)
            raise UsageError(f"by names {name!r}, which " +
                             ("is a string: strings are no labels" if strings else
                              "no probe captures as an integer"),
                             "labels: comm, pid, errno, or a captured integer argument")
    return tuple(out)
