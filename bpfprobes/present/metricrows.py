"""The in-kernel metrics table (bpf_c/metrics.h) as Prometheus families.

A row's key holds only the labels a part asked for (the probe's index always);
rows are summed over CPUs, then over what no label tells apart (a count part
without `target`). Latencies are log2 buckets in the kernel: slot 0 holds 0 ns,
slot i [2^(i-1), 2^i) ns, so the cumulative bucket `le = 2^i ns` is exact. The
rows past the table's size are each probe's `other` row (other="true").
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from bpfprobes.kernel import errnos
from bpfprobes.present import exporter
from bpfprobes.present.decode import METRIC_ARGS, METRIC_KEY, METRIC_VALUE, cstr

FIRST_BUCKET = 10           # buckets from le = 2^10 ns (~1 us): finer says nothing a scrape needs
NO_ERRNO = -1               # metric_row.h METRIC_NO_ERRNO
_ARGS = struct.Struct(f"<{METRIC_ARGS}Q")


def errno_label(err: int) -> str:
    """ENOENT for 2, "0" for success, "" (no label) where there is no return value."""
    if err == NO_ERRNO:
        return ""
    return "0" if err == 0 else (errnos.name(-err) or str(err))


@dataclass(frozen=True)
class Labels:
    """How a part's rows become label sets: which key fields it asked for."""
    index_label: str | None                 # the probe/target index's label; None: summed over
    names: tuple[str, ...]                  # index -> that label's value
    pid: bool = False
    comm: bool = False
    errno: bool = False
    args: tuple[tuple[str, Callable[[int], str]], ...] = ()   # (label, format) per arg slot

    @property
    def label_names(self) -> list[str]:
        return [*([self.index_label] if self.index_label else []),
                *(["pid"] if self.pid else []), *(["comm"] if self.comm else []),
                *(["errno"] if self.errno else []), *(name for name, _ in self.args)]

    def values(self, key: dict) -> tuple[str, ...]:
        args = _ARGS.unpack(key["args"])
        return (*([self.names[key["probe"]]] if self.index_label else []),
                *([str(key["pid"])] if self.pid else []),
                *([cstr(key["comm"])] if self.comm else []),
                *([errno_label(key["err"])] if self.errno else []),
                *(fmt(args[i]) for i, (_, fmt) in enumerate(self.args)))

    def other_values(self, index: int) -> tuple[str, ...]:
        """The `other` row of a probe: its index label, the rest empty."""
        rest = len(self.label_names) - (1 if self.index_label else 0)
        return (*([self.names[index]] if self.index_label else []), *([""] * rest))


@dataclass
class Totals:
    count: int = 0
    sum_ns: int = 0
    slots: list[int] = field(default_factory=list)
    negative: int = 0                       # signed values below 0 (not in slots)

    def add(self, count: int, sum_ns: int, slots: Iterable[int], negative: int = 0) -> None:
        self.count += count
        self.sum_ns += sum_ns
        self.negative += negative
        slots = list(slots)
        if len(self.slots) < len(slots):
            self.slots += [0] * (len(slots) - len(self.slots))
        for i, n in enumerate(slots):
            self.slots[i] += n


def _value(raw: bytes) -> tuple[int, int, tuple[int, ...], int]:
    """(count, sum, slots, negatives) of one CPU's row (metric_row.h): with buckets,
    the negatives' count, then the slots, follow the head."""
    head = METRIC_VALUE.unpack(raw)
    n = (len(raw) - METRIC_VALUE.head.size) // 8
    rest = struct.unpack_from(f"<{n}Q", raw, METRIC_VALUE.head.size)
    return head["count"], head["sum_ns"], rest[1:], rest[0] if rest else 0


def fold(rows: Iterable[tuple[bytes, list[bytes]]],
         others: Iterable[tuple[bytes, list[bytes]]], labels: Labels
         ) -> dict[tuple[tuple[str, ...], bool], Totals]:
    """{(label values, other?): totals} from the table's rows and the other rows
    (both: key bytes, each CPU's value bytes)."""
    out: dict[tuple[tuple[str, ...], bool], Totals] = {}
    for key, per_cpu in rows:
        t = out.setdefault((labels.values(METRIC_KEY.unpack(key)), False), Totals())
        for raw in per_cpu:
            t.add(*_value(raw))
    for key, per_cpu in others:
        index = int.from_bytes(key[:4], "little")
        values = [_value(raw) for raw in per_cpu]
        if index < len(labels.names) and any(v[0] for v in values):
            t = out.setdefault((labels.other_values(index), True), Totals())
            for v in values:
                t.add(*v)
    return out


def _labelled(labels: Labels, totals: dict) -> tuple[list[str], list]:
    other = any(is_other for _, is_other in totals)
    names = labels.label_names + (["other"] if other else [])
    rows = [([exporter.label(v) for v in values] + (["true" if is_other else ""] if other else []),
             t) for (values, is_other), t in sorted(totals.items())]
    return names, rows


def counter(name: str, doc: str, labels: Labels, totals: dict) -> CounterMetricFamily:
    """`bpfprobes_NAME_total` with one sample per label set: the calls."""
    names, rows = _labelled(labels, totals)
    family = CounterMetricFamily(exporter.PREFIX + name, doc, labels=names)
    for values, t in rows:
        family.add_metric(values, t.count)
    return family


def bucket_bound(slot: int) -> float:
    """The upper bound, in seconds, of log2 slot `slot` (values < 2^slot ns)."""
    return (1 << slot) / 1e9


def histogram(name: str, doc: str, labels: Labels, totals: dict) -> HistogramMetricFamily:
    """`bpfprobes_NAME_seconds` from the rows with timed calls: cumulative
    buckets from ~1 us to ~4.6 min, +Inf, the count and the sum."""
    names, rows = _labelled(labels, {k: t for k, t in totals.items() if sum(t.slots)})
    family = HistogramMetricFamily(exporter.PREFIX + name, doc, labels=names)
    for values, t in rows:
        buckets, running = [], 0
        for i, n in enumerate(t.slots[:-1]):
            running += n
            if i >= FIRST_BUCKET:
                buckets.append((repr(bucket_bound(i)), running))
        buckets.append(("+Inf", sum(t.slots)))
        family.add_metric(values, buckets, t.sum_ns / 1e9)
    return family


def health(parts: Iterable[tuple[str, dict]]) -> list[Metric]:
    """Each part's own figures: up, lost, throttled, series dropped ({part})."""
    parts = list(parts)
    specs = [("part_up", "1: the part is attached; 0: it is not (the log says why)", "up",
              "gauge"),
             ("lost_events", "Calls not counted (a run the kernel skipped, a failed update)",
              "lost", "counter"),
             ("throttled_events", "Calls over the part's rate_limit, not counted", "throttled",
              "counter"),
             ("series_dropped", "Calls whose label set found no room (max_series): counted "
              "under other=\"true\"", "series_dropped", "counter")]
    out: list[Metric] = []
    for name, doc, key, kind in specs:
        samples = [([part], figures.get(key, 0)) for part, figures in parts]
        out.append(exporter.gauge(name, doc, ["part"], samples) if kind == "gauge"
                   else exporter.counter(name, doc, ["part"], samples))
    return out
