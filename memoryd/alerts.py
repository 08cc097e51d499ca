"""Alerts: damage an operator must see, kept until the operator clears them.

A damaged WAL is repaired at start and a Redis that lost its data is used
again as it is, so the daemon keeps working; but neither may pass silently.
Each such event is written to ``<data_dir>/alerts.json``, shown by
``memoryd status`` (which then exits 1) until ``memoryd alerts clear``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from memoryd.atomicfile import write_atomically

logger = logging.getLogger(__name__)

ALERTS_NAME = "alerts.json"
# Enough history for an incident; older alerts are summarised by the count.
MAX_ALERTS = 100


class Alerts:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / ALERTS_NAME
        # Raised but not yet written (the disk was full): shown, and written
        # with the next alert that can be.
        self._unwritten: list[dict[str, Any]] = []

    def raise_alert(self, kind: str, message: str, *, once: bool = False) -> None:
        """Keep an alert; ``once``: not if the same alert is kept already."""
        alerts = self.entries()
        if once and any(a.get("kind") == kind and a.get("message") == message for a in alerts):
            return
        logger.warning(
            "ALERT %s: %s (kept in %s until `memoryd alerts clear`)", kind, message, self.path
        )
        alerts.append({"at": time.time(), "kind": kind, "message": message})
        self._write(alerts[-MAX_ALERTS:])

    def entries(self) -> list[dict[str, Any]]:
        try:
            alerts = json.loads(self.path.read_text())
        except FileNotFoundError:
            alerts = []
        except (OSError, ValueError) as exc:
            alerts = [{"at": 0.0, "kind": "alerts_unreadable", "message": f"{self.path}: {exc}"}]
        kept = alerts if isinstance(alerts, list) else []
        return kept + [a for a in self._unwritten if a not in kept]

    def clear(self) -> int:
        count = len(self.entries())
        self._unwritten.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return count

    def _write(self, alerts: list[dict[str, Any]]) -> None:
        try:
            write_atomically(self.path, json.dumps(alerts, indent=1).encode())
        except OSError as exc:
            # The alert must not be lost to a full disk, nor stop the daemon.
            logger.warning(
                "could not write %s (%s); the alert is kept in memory and written later",
                self.path,
                exc.strerror or exc,
            )
            self._unwritten = alerts
            return
        self._unwritten = []
