"""Latency percentiles in constant memory, for runs of a day.

A run of 24 hours makes tens of millions of calls: their latencies go into
geometric buckets (each 2% wider than the last, from 10 us to 1000 s), so a
percentile is read to within 2% whatever the run's length.  The calls of the
current sampling interval are also kept as they are, for the interval's exact
percentiles in the timeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

_SMALLEST_S = 1e-5
_RATIO = 1.02
_BUCKETS = math.ceil(math.log(1e3 / _SMALLEST_S) / math.log(_RATIO)) + 1


def nearest_rank(sorted_values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Histogram:
    """Counts of latencies in geometric buckets."""

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.total = 0
        self.max_s = 0.0

    def add(self, latency_s: float) -> None:
        if latency_s <= _SMALLEST_S:
            index = 0
        else:
            index = min(_BUCKETS - 1, math.ceil(math.log(latency_s / _SMALLEST_S, _RATIO)))
        self.counts[index] += 1
        self.total += 1
        self.max_s = max(self.max_s, latency_s)

    def percentile_s(self, pct: float) -> float:
        """The upper edge of the bucket holding the nearest-rank percentile."""
        if not self.total:
            return math.nan
        rank = max(1, math.ceil(pct / 100.0 * self.total))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(self.max_s, _SMALLEST_S * _RATIO**index)
        return self.max_s
