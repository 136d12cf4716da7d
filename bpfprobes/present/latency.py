"""Latency percentiles over a session of any length, in bounded memory.

Every value counts toward count and max; at most `keep` of them are kept for
percentiles, by reservoir sampling (each value seen has the same chance of
being kept), so p50/p99 stay honest for a run of a billion events.
"""
from __future__ import annotations

import random

KEEP = 100_000
QUANTILES = (50, 90, 99)


class Reservoir:
    def __init__(self, keep: int = KEEP, seed: int = 0) -> None:
        self.keep = keep
        self.count = 0
        self.max = 0
        self.kept: list[int] = []
        self._rng = random.Random(seed)

    def add(self, value: int) -> None:
        self.count += 1
        if value > self.max:
            self.max = value
        if len(self.kept) < self.keep:
            self.kept.append(value)
        else:
            j = self._rng.randrange(self.count)
            if j < self.keep:
                self.kept[j] = value

    def summary(self, quantiles: tuple[int, ...] = QUANTILES) -> dict | None:
        """{"count", "p50", ..., "max"}, or None when nothing was added."""
        if not self.kept:
            return None
        lats = sorted(self.kept)
        return {"count": self.count,
                **{f"p{q}": lats[min(len(lats) - 1, (len(lats) * q) // 100)] for q in quantiles},
                "max": self.max}


def human_ns(ns: int) -> str:
    """1234567 -> '1.235 ms'."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3f} {unit}"
    return f"{ns} ns"
