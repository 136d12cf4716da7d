"""Histograms counted in the kernel (bpf_c/metrics.h slots), printed as bpftrace's
hist()/lhist() and BCC's funclatency print them, or as JSON bucket arrays.

log2 slots: slot 0 holds 0, slot 1 holds 1, slot i >= 2 holds [2^(i-1), 2^i); the
last slot takes all above. linear slots of width W: slot i holds [i*W, (i+1)*W);
the last takes all above. Negative values (of a signed argument) are counted
apart and printed first as `(..., 0)`, as bpftrace prints them.
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
    signed: bool = False            # the value can be negative (its own bucket, first)

    def bounds(self, slot: int) -> tuple[int, int | None]:
        """[low, high) of a slot; None: unbounded above."""
        last = slot == self.slots - 1
        if self.linear is not None:
            return slot * self.linear, None if last else (slot + 1) * self.linear
        if slot == 0:
            return 0, 1
        low = 1 << (slot - 1)
        return low, None if last else low << 1

    def label(self, slot: int) -> str:
        low, high = self.bounds(slot)
        if self.linear is None and slot <= 1 and high is not None:
            return f"[{low}]"                       # [0], [1], as bpftrace
        return f"[{short(low)}, {short(high) if high is not None else '...'})"


NEGATIVE = "(..., 0)"               # bpftrace's label of the values below 0


def short(n: int) -> str:
    """1024 -> 1K, as bpftrace labels powers of two; other numbers as they are."""
    for size, suffix in _SUFFIXES:
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def shown_slots(counts: list[int]) -> range:
    used = [i for i, n in enumerate(counts) if n]
    return range(used[0], used[-1] + 1) if used else range(0)


def text(counts: list[int], buckets: Buckets, negative: int = 0) -> str:
    """The histogram's lines: range, count, a bar of @ scaled to the largest; the
    negatives first, when there are any."""
    top = max([*counts, negative], default=0)
    rows = ([(NEGATIVE, negative)] if negative else []) + \
        [(buckets.label(i), counts[i]) for i in shown_slots(counts)]
    return "\n".join(f"{label:<20}{n:>8} |{'@' * (n * BAR // top) if top else '':<{BAR}}|"
                     for label, n in rows)


def json_buckets(counts: list[int], buckets: Buckets, negative: int = 0) -> list[dict]:
    """[{"min": low, "max": high, "count": n}] of the non-empty range (None: unbounded);
    the negatives first ({"min": None, "max": 0}), when there are any."""
    head = [{"min": None, "max": 0, "count": negative}] if negative else []
    return head + [{"min": buckets.bounds(i)[0], "max": buckets.bounds(i)[1],
                    "count": counts[i]} for i in shown_slots(counts)]
