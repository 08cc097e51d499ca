"""What the agents saw: every call's latency, every error that reached them, every wrong answer.

All traffic of the soak goes through ``Observer.call`` (blocking) or
``Observer.acall`` (awaitable).  An error is what ``memoryd_client`` raised to
its caller after its own retries; each is classified at once against the
fault windows (``Timeline.covering``): inside a window it is counted, outside
one it fails the run and is kept with its times.  Answers that break a
guarantee (an id twice, out of order, an expired record, a record of another
agent, an acknowledged write not read back) are ``problem``s: every one fails
the run.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from memoryd_client import errors
from tests.soak.latency import Histogram, nearest_rank
from tests.soak.timeline import Timeline

T = TypeVar("T")

# What memoryd_client raises to a caller: its own errors, and (a client defect
# if it happens) a bare OSError that escaped the translation.
CLIENT_ERRORS = (errors.MemorydError, OSError)
KEPT_DETAILS = 100


class Failed:
    """The outcome of a call that raised to the agent."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Failed({type(self.error).__name__}: {self.error})"


class Observer:
    """Latencies, errors and wrong answers of every client of the run; thread-safe."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self._lock = threading.Lock()
        self._histograms: dict[str, Histogram] = {}
        self._interval: dict[str, list[float]] = {}
        self._interval_errors = Counter[str]()
        self.errors_in_windows = Counter[str]()  # "method: ErrorClass" -> count
        self.errors_in_windows_by_fault = Counter[str]()
        self.errors_outside = Counter[str]()
        self.outside_details: list[dict[str, Any]] = []
        self.problems = Counter[str]()
        self.problem_details: list[str] = []
        self.crashes: list[str] = []

    # Calls ------------------------------------------------------------------

    def call(
        self,
        method: str,
        fn: Callable[[], T],
        *,
        expected: tuple[type[BaseException], ...] = (),
    ) -> T | Failed:
        """``fn()``, timed; an error it raises is recorded and returned as ``Failed``.

        ``expected`` errors are answers, not failures (``NotFound`` for a record that
        was trimmed or expired): returned as ``Failed`` but not counted as errors.
        """
        started = time.monotonic()
        try:
            result = fn()
        except expected as exc:
            self._succeeded(method, started, time.monotonic())
            return Failed(exc)
        except CLIENT_ERRORS as exc:
            self._failed(method, started, time.monotonic(), exc)
            return Failed(exc)
        self._succeeded(method, started, time.monotonic())
        return result

    async def acall(
        self,
        method: str,
        awaitable: Awaitable[T],
        *,
        expected: tuple[type[BaseException], ...] = (),
    ) -> T | Failed:
        """The awaitable version of ``call``."""
        started = time.monotonic()
        try:
            result = await awaitable
        except expected as exc:
            self._succeeded(method, started, time.monotonic())
            return Failed(exc)
        except CLIENT_ERRORS as exc:
            self._failed(method, started, time.monotonic(), exc)
            return Failed(exc)
        self._succeeded(method, started, time.monotonic())
        return result

    def _succeeded(self, method: str, started: float, ended: float) -> None:
        latency_s = ended - started
        with self._lock:
            histogram = self._histograms.get(method)
            if histogram is None:
                histogram = self._histograms[method] = Histogram()
            histogram.add(latency_s)
            self._interval.setdefault(method, []).append(latency_s)

    def _failed(self, method: str, started: float, ended: float, exc: BaseException) -> None:
        key = f"{method}: {type(exc).__name__}"
        window = self.timeline.covering(started, ended)
        with self._lock:
            if window is not None:
                self.errors_in_windows[key] += 1
                self.errors_in_windows_by_fault[window.kind] += 1
                self._interval_errors["in_window"] += 1
                return
            self.errors_outside[key] += 1
            self._interval_errors["outside"] += 1
            if len(self.outside_details) < KEPT_DETAILS:
                self.outside_details.append(
                    {
                        "method": method,
                        "error": type(exc).__name__,
                        "message": str(exc)[:300],
                        "started_s": self.timeline.offset_s(started),
                        "ended_s": self.timeline.offset_s(ended),
                    }
                )

    # Wrong answers and broken threads ------------------------------------------

    def problem(self, kind: str, detail: str) -> None:
        with self._lock:
            self.problems[kind] += 1
            if len(self.problem_details) < KEPT_DETAILS:
                offset = self.timeline.offset_s(time.monotonic())
                self.problem_details.append(f"[{offset}s] {kind}: {detail}")

    def crashed(self, thread_name: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc))
        with self._lock:
            self.crashes.append(f"{thread_name}: {text}")

    def guarded(self, name: str, body: Callable[[], None]) -> Callable[[], None]:
        """``body`` for a thread: an exception it raises is kept as a crash of ``name``."""

        def run() -> None:
            try:
                body()
            except BaseException as exc:
                self.crashed(name, exc)

        return run

    # Reading it out ------------------------------------------------------------

    def take_interval(self) -> dict[str, Any]:
        """The latencies and errors since the last call (one sampling interval)."""
        with self._lock:
            interval, self._interval = self._interval, {}
            interval_errors, self._interval_errors = self._interval_errors, Counter()
        methods = {}
        for method, latencies in sorted(interval.items()):
            latencies.sort()
            methods[method] = {
                "count": len(latencies),
                "p50_ms": _ms(nearest_rank(latencies, 50)),
                "p99_ms": _ms(nearest_rank(latencies, 99)),
            }
        return {
            "latency": methods,
            "errors_in_windows": interval_errors["in_window"],
            "errors_outside": interval_errors["outside"],
        }

    def latency_summary(self) -> dict[str, dict[str, float | None]]:
        with self._lock:
            histograms = dict(self._histograms)
        summary = {}
        for method, histogram in sorted(histograms.items()):
            summary[method] = {
                "count": histogram.total,
                "p50_ms": _ms(histogram.percentile_s(50)),
                "p99_ms": _ms(histogram.percentile_s(99)),
                "p99_9_ms": _ms(histogram.percentile_s(99.9)),
                "max_ms": _ms(histogram.max_s),
            }
        return summary

    def calls_total(self) -> int:
        with self._lock:
            return sum(h.total for h in self._histograms.values())


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1e3, 3)
