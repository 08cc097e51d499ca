"""Request counts and latencies per method, for ``memoryd status``."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

# Enough recent samples for a stable p99 without keeping every request.
_SAMPLES = 2048
_RATE_WINDOW_S = 10.0


@dataclass(slots=True)
class _MethodStats:
    count: int = 0
    errors: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    recent: deque[float] = field(default_factory=deque)  # completion times, for the rate


class Metrics:
    def __init__(self) -> None:
        self._methods: dict[str, _MethodStats] = {}

    def observe(self, method: str, latency_s: float, error: dict[str, Any] | None) -> None:
        # Unknown method names come from clients: don't let them grow the table.
        key = method if len(self._methods) < 64 or method in self._methods else "(other)"
        stats = self._methods.setdefault(key, _MethodStats())
        stats.count += 1
        if error is not None:
            stats.errors += 1
        stats.latencies_s.append(latency_s)
        now = time.monotonic()
        stats.recent.append(now)
        while stats.recent and now - stats.recent[0] > _RATE_WINDOW_S:
            stats.recent.popleft()

    def snapshot(self) -> dict[str, dict[str, float]]:
        now = time.monotonic()
        result = {}
        for method, stats in sorted(self._methods.items()):
            while stats.recent and now - stats.recent[0] > _RATE_WINDOW_S:
                stats.recent.popleft()
            ordered = sorted(stats.latencies_s)
            result[method] = {
                "count": stats.count,
                "errors": stats.errors,
                "rate_per_s": round(len(stats.recent) / _RATE_WINDOW_S, 2),
                "p50_ms": _percentile_ms(ordered, 0.50),
                "p99_ms": _percentile_ms(ordered, 0.99),
            }
        return result


def _percentile_ms(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 3)
