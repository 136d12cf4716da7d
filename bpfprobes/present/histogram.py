"""Histograms counted in the kernel (bpf_c/metrics.h slots), printed as bpftrace's
hist()/lhist() and BCC's funclatency print them, or as JSON bucket arrays.

log2 slots: slot 0 holds 0 (and, for a signed value, every negative one), slot 1
holds 1, slot i >= 2 holds [2^(i-1), 2^i); the last slot takes all above.
linear slots of width W: slot i holds [i*W, (i+1)*W) (slot 0, for a signed value,
the negatives too); the last takes all above. bpftrace keeps negatives apart:
for values that are never negative the buckets are the same.
Only the slots from the first to the last non-empty one are printed.
"""
from __future__ import annotations

from dataclasses import dataclass

BAR = 52                        # bpftrace's bar width
_SUFFIXES = ((1 << 60, "E"), (1 << 50, "P"), (1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"),
             (1 << 10, "K"))


@dataclass(frozen=True)
class Buckets:
    """How slots map to values."""
    slots: int
    linear: int | None = None       # a slot's width; None: log2
    signed: bool = False

    def bounds(self, slot: int) -> tuple[int | None, int | None]:
        """[low, high) of a slot; None: unbounded on that side."""
        last = slot == self.slots - 1
        if self.linear is not None:
            low = None if slot == 0 and self.signed else slot * self.linear
            return low, None if last else (slot + 1) * self.linear
        if slot == 0:
            return (None if self.signed else 0), 1
        low = 1 << (slot - 1)
        return low, None if last else low << 1

    def label(self, slot: int) -> str:
        low, high = self.bounds(slot)
        if self.linear is None and slot <= 1 and high is not None and \
                (slot == 1 or not self.signed):
            return f"[{low}]"                       # [0], [1], as bpftrace
        if low is None:                             # a signed value's negatives are here too
            return "(..., 0]" if self.linear is None else f"(..., {short(high)})"
        return f"[{short(low)}, {short(high) if high is not None else '...'})"


def short(n: int) -> str:
    """1024 -> 1K, as bpftrace labels powers of two; other numbers as they are."""
    for size, suffix in _SUFFIXES:
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def shown_slots(counts: list[int]) -> range:
    used = [i for i, n in enumerate(counts) if n]
    return range(used[0], used[-1] + 1) if used else range(0)


def text(counts: list[int], buckets: Buckets) -> str:
    """The histogram's lines: range, count, a bar of @ scaled to the largest."""
    top = max(counts, default=0)
    lines = []
    for i in shown_slots(counts):
        bar = "@" * (counts[i] * BAR // top) if top else ""
        lines.append(f"{buckets.label(i):<20}{counts[i]:>8} |{bar:<{BAR}}|")
    return "\n".join(lines)


def json_buckets(counts: list[int], buckets: Buckets) -> list[dict]:
    """[{"min": low, "max": high, "count": n}] of the non-empty range (None: unbounded)."""
    return [{"min": buckets.bounds(i)[0], "max": buckets.bounds(i)[1], "count": counts[i]}
            for i in shown_slots(counts)]
