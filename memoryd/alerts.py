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
import os
import time
from pathlib import Path
from typing import Any

from memoryd.permissions import write_private

logger = logging.getLogger(__name__)

ALERTS_NAME = "alerts.json"
# Enough history for an incident; older alerts are summarised by the count.
MAX_ALERTS = 100


class Alerts:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / ALERTS_NAME

    def raise_alert(self, kind: str, message: str) -> None:
        logger.warning(
            "ALERT %s: %s (kept in %s until `memoryd alerts clear`)", kind, message, self.path
        )
        alerts = self.entries()
        alerts.append({"at": time.time(), "kind": kind, "message": message})
        self._write(alerts[-MAX_ALERTS:])

    def entries(self) -> list[dict[str, Any]]:
        try:
            alerts = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            return [{"at": 0.0, "kind": "alerts_unreadable", "message": f"{self.path}: {exc}"}]
        return alerts if isinstance(alerts, list) else []

    def clear(self) -> int:
        count = len(self.entries())
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return count

    def _write(self, alerts: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        write_private(tmp, json.dumps(alerts, indent=1))
        os.replace(tmp, self.path)
