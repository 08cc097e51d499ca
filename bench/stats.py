"""Latency percentiles and rates from recorded ``time.perf_counter_ns`` durations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9))


class Summary(TypedDict):
    count: int
    mean_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p99_ms: float
    p99_9_ms: float
    ops_per_s: float


def percentile(sorted_ns: Sequence[int], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (same unit as the values)."""
    if not sorted_ns:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_ns)))
    return float(sorted_ns[min(rank, len(sorted_ns)) - 1])


def summarize(durations_ns: Sequence[int]) -> Summary:
    """Percentiles in milliseconds; ``ops_per_s`` is the rate of back-to-back calls."""
    values = sorted(durations_ns)
    total_ns = sum(values)
    count = len(values)

    def ms(ns: float) -> float:
        return round(ns / 1e6, 4)

    return Summary(
        count=count,
        mean_ms=ms(total_ns / count) if count else math.nan,
        min_ms=ms(values[0]) if count else math.nan,
        max_ms=ms(values[-1]) if count else math.nan,
        p50_ms=ms(percentile(values, 50.0)),
        p99_ms=ms(percentile(values, 99.0)),
        p99_9_ms=ms(percentile(values, 99.9)),
        ops_per_s=round(count / (total_ns / 1e9), 1) if total_ns else math.nan,
    )


def rate(count: int, elapsed_ns: int) -> float:
    """Items per second."""
    return round(count / (elapsed_ns / 1e9), 1) if elapsed_ns > 0 else math.nan
