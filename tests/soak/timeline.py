"""The fault windows of a run, and whether a call fell into one.

A window opens when a fault starts (Redis killed, SIGSTOP sent, ...) and closes
``grace_s`` after the later of two moments: the fault's action undone (Redis
listening again, SIGCONT sent, the new daemon READY, the burst's sockets
closed) and the daemon reporting ``healthy`` again after it.  While a daemon is
degraded some answers are errors by design (``stats`` without its store, a
paged read that cannot be complete), so a window lasts until the daemon says it
has recovered.  A call is inside a window when its time overlaps the window at
all: a call that started before a fault and failed during it counts as the
fault's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FaultWindow:
    kind: str
    started: float  # time.monotonic()
    ended: float | None = None  # the fault's action undone
    healthy: float | None = None  # the daemon healthy again after it
    notes: dict[str, Any] = field(default_factory=dict)

    def closes(self, grace_s: float) -> float | None:
        """When the window closes (monotonic); None while it is open."""
        if self.ended is None or self.healthy is None:
            return None
        return max(self.ended, self.healthy) + grace_s


class Timeline:
    """Every fault window of a run, shared by the threads that classify calls."""

    def __init__(self, grace_s: float, started: float | None = None) -> None:
        self.grace_s = grace_s
        self.started = time.monotonic() if started is None else started
        self._windows: list[FaultWindow] = []
        self._lock = threading.Lock()

    def open(self, kind: str) -> FaultWindow:
        window = FaultWindow(kind, time.monotonic())
        with self._lock:
            self._windows.append(window)
        return window

    def windows(self) -> list[FaultWindow]:
        with self._lock:
            return list(self._windows)

    def covering(self, call_started: float, call_ended: float) -> FaultWindow | None:
        """The window the call overlaps, if any.

        Windows that open later than ``call_ended`` cannot matter: callers ask when the
        call has ended, and a window is registered when its fault starts.
        """
        with self._lock:
            for window in reversed(self._windows):
                closes = window.closes(self.grace_s)
                if window.started <= call_ended and (closes is None or closes >= call_started):
                    return window
        return None

    def quiet(self, since: float, until: float) -> bool:
        """Whether no window overlaps ``[since, until]``."""
        return self.covering(since, until) is None

    def offset_s(self, moment: float | None) -> float | None:
        return None if moment is None else round(moment - self.started, 3)

    def describe(self) -> list[dict[str, Any]]:
        """The windows as offsets from the run's start, for summary.json."""
        described = []
        for window in self.windows():
            closes = window.closes(self.grace_s)
            described.append(
                {
                    "kind": window.kind,
                    "started_s": self.offset_s(window.started),
                    "ended_s": self.offset_s(window.ended),
                    "healthy_s": self.offset_s(window.healthy),
                    "closes_s": self.offset_s(closes),
                    **window.notes,
                }
            )
        return described
