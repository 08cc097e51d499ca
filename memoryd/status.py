"""The snapshot ``memoryd status --json`` prints, assembled from what each part says of itself.

Every component describes its own state (``describe()``); this module only
puts the pieces where the protocol documents them, adds the process figures,
and writes the one-line summary systemd shows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

from memoryd import __version__
from memoryd.alerts import Alerts
from memoryd.backlog import Backlog
from memoryd.cache import ReadCache
from memoryd.connections import ConnectionRegistry
from memoryd.durability import Unconfirmed
from memoryd.flusher import Flusher
from memoryd.health import Health, State
from memoryd.metrics import Metrics
from memoryd.stores.base import Store
from memoryd.systemd import Notifier
from memoryd.wal import Wal
from memoryd.writers import SoleWriter


class StatusReport:
    def __init__(
        self,
        *,
        socket_path: Path,
        data_dir: Path,
        health: Health,
        store: Store,
        wal: Wal,
        backlog: Backlog,
        flusher: Flusher,
        unconfirmed: Unconfirmed,
        cache: ReadCache,
        sole_writer: SoleWriter,
        registry: ConnectionRegistry,
        metrics: Metrics,
        alerts: Alerts,
        limits: dict[str, Any],
    ) -> None:
        self._socket_path = socket_path
        self._data_dir = data_dir
        self._health = health
        self._store = store
        self._wal = wal
        self._backlog = backlog
        self._flusher = flusher
        self._unconfirmed = unconfirmed
        self._cache = cache
        self._sole_writer = sole_writer
        self._registry = registry
        self._metrics = metrics
        self._alerts = alerts
        self._limits = limits
        self._process = psutil.Process()
        self._started_at = time.time()

    def reconfigure(self, *, limits: dict[str, Any]) -> None:
        self._limits = limits

    def snapshot(self) -> dict[str, Any]:
        health = self._health.describe()
        return {
            "state": health["state"],
            "since": health["since"],
            "reason": health["reason"],
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self._started_at, 3),
            "socket": str(self._socket_path),
            "store": self._store.describe() | health["store"],
            "wal": self._wal.describe()
            | self._backlog.describe()
            | self._flusher.describe()
            | self._unconfirmed.describe(),
            "limits": dict(self._limits),
            "read_cache": self._cache.describe() | {"writers": self._sole_writer.writers},
            "clients": len(self._registry.connections),
            "requests": self._metrics.snapshot(),
            "process": self._process_stats(),
            "event_loop_lag_ms": health["event_loop_lag_ms"],
            "alerts": self._alerts.entries(),
        }

    def line(self) -> str:
        """The one-line summary for systemd's STATUS=."""
        return status_line(self._health.state, self._backlog, self._registry)

    def _process_stats(self) -> dict[str, Any]:
        with self._process.oneshot():
            rss = self._process.memory_info().rss
            cpu = self._process.cpu_times()
        disk = psutil.disk_usage(str(self._data_dir))
        return {
            "rss_bytes": rss,
            "cpu_user_s": round(cpu.user, 3),
            "cpu_system_s": round(cpu.system, 3),
            "data_dir": str(self._data_dir),
            "disk_free_bytes": disk.free,
        }


def status_line(state: State, backlog: Backlog, registry: ConnectionRegistry) -> str:
    return f"{state.value}; backlog {len(backlog)} writes; {len(registry.connections)} clients"


class StateNews:
    """What a change of the health state tells the world: systemd's STATUS=,
    and an alert kept until cleared when the store refuses writes or memoryd."""

    def __init__(
        self,
        notifier: Notifier,
        backlog: Backlog,
        registry: ConnectionRegistry,
        store: Store,
        alerts: Alerts,
    ) -> None:
        self._notifier = notifier
        self._backlog = backlog
        self._registry = registry
        self._store = store
        self._alerts = alerts

    def __call__(self, state: State, reason: str, problem: str | None) -> None:
        self._notifier.status(status_line(state, self._backlog, self._registry))
        if problem is not None and state is State.DEGRADED:
            # Unlike an outage, these need somebody: keep them until cleared.
            kind = "store_misconfigured" if problem == "misconfigured" else "store_refusing_writes"
            address = self._store.describe().get("address")
            self._alerts.raise_alert(kind, f"the store at {address}: {reason}", once=True)
