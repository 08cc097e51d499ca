"""The composition root: every part of one memoryd process, built from settings, in order.

Each part gets what it needs when it is made; nothing is plugged in
afterwards.  ``Server`` (memoryd.server) then runs the parts' lifecycle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memoryd.alerts import Alerts
from memoryd.backlog import Backlog
from memoryd.cache import CacheSettings, ReadCache
from memoryd.config import Settings
from memoryd.connections import ConnectionRegistry
from memoryd.durability import DurabilityWatch, Restorer, RetainSettings, Unconfirmed
from memoryd.eviction import EvictionWatch
from memoryd.fdlimit import connections_that_fit
from memoryd.flusher import Flusher, FlushSettings
from memoryd.handlers import Handlers, RequestSettings
from memoryd.health import Health
from memoryd.maintenance import DataLossCheck, ExpirySweep
from memoryd.marker import StoreMarker
from memoryd.metrics import Metrics
from memoryd.reads import Reader, ReadSettings
from memoryd.status import StateNews, StatusReport
from memoryd.stores import create_store
from memoryd.stores.base import Store
from memoryd.stores.monitored import MonitoredStore
from memoryd.systemd import Notifier
from memoryd.wal import Wal, WalSettings
from memoryd.writers import SoleWriter
from memoryd.writes import Writer, WriteSettings

logger = logging.getLogger(__name__)

WAL_DIR_NAME = "wal"


@dataclass(slots=True)
class Components:
    """The long-lived parts of the daemon, wired together."""

    settings: Settings
    notifier: Notifier
    metrics: Metrics
    alerts: Alerts
    registry: ConnectionRegistry
    backlog: Backlog
    store: Store
    wal: Wal
    cache: ReadCache
    data_loss_check: DataLossCheck
    health: Health
    sweep: ExpirySweep
    sole_writer: SoleWriter
    flusher: Flusher
    unconfirmed: Unconfirmed
    durability_watch: DurabilityWatch
    max_connections: int
    status: StatusReport
    reader: Reader
    writer: Writer
    handlers: Handlers

    def reconfigure(self, settings: Settings) -> None:
        """Hand each part its share of reloaded settings (SIGHUP)."""
        self.settings = settings
        self.max_connections = fit_connections(settings, self.store.kind)
        self.status.reconfigure(limits=limits(settings, self.max_connections))
        self.handlers.reconfigure(RequestSettings.of(settings))
        self.reader.reconfigure(ReadSettings.of(settings))
        self.writer.reconfigure(WriteSettings.of(settings))
        self.wal.reconfigure(WalSettings.of(settings))
        self.flusher.reconfigure(FlushSettings.of(settings))
        self.cache.reconfigure(CacheSettings.of(settings))
        self.unconfirmed.reconfigure(RetainSettings.of(settings))
        self.sweep.reconfigure(interval_s=settings.sweep_interval_s)


def build(settings: Settings, *, store: Store | None = None) -> Components:
    """Make every part, each after the parts it needs; ``store``, for tests:
    another store than the settings name (memoryd.stores.memory)."""
    # Long on purpose: one statement per part, in the order they depend on
    # each other, is the thing to read here; helpers would hide the order.
    notifier = Notifier()
    metrics = Metrics()
    alerts = Alerts(settings.data_dir)
    registry = ConnectionRegistry()
    backlog = Backlog()
    store = create_store(settings) if store is None else store
    wal = Wal(wal_dir(settings.data_dir), WalSettings.of(settings), on_durable=backlog.extend)
    cache = ReadCache(CacheSettings.of(settings))
    unconfirmed = Unconfirmed(RetainSettings.of(settings))
    restorer = Restorer(unconfirmed, backlog, wal)
    data_loss_check = DataLossCheck(
        store,
        StoreMarker(settings.data_dir),
        EvictionWatch(store, alerts, cache),
        cache,
        alerts,
        restorer,
    )
    health = Health(
        store,
        backlog,
        on_change=StateNews(notifier, backlog, registry, store, alerts),
        check_store=data_loss_check.run,
        wal_has_room=wal.has_room,
    )
    sole_writer = SoleWriter(store, cache, on_link_lost=health.check_soon)
    # The request paths' store: each failure reaches Health once, from here.
    reported = MonitoredStore(store, health)
    flusher = Flusher(
        FlushSettings.of(settings),
        store=reported,
        backlog=backlog,
        wal=wal,
        health=health,
        cache=cache,
        unconfirmed=unconfirmed,
        lease=sole_writer.lease,
    )
    durability_watch = DurabilityWatch(store, unconfirmed, restorer, health)
    max_connections = fit_connections(settings, store.kind)
    status = StatusReport(
        socket_path=settings.socket_path,
        data_dir=settings.data_dir,
        health=health,
        store=store,
        wal=wal,
        backlog=backlog,
        flusher=flusher,
        unconfirmed=unconfirmed,
        cache=cache,
        sole_writer=sole_writer,
        registry=registry,
        metrics=metrics,
        alerts=alerts,
        limits=limits(settings, max_connections),
    )
    reader = Reader(
        ReadSettings.of(settings),
        store=reported,
        backlog=backlog,
        flusher=flusher,
        health=health,
        cache=cache,
    )
    writer = Writer(WriteSettings.of(settings), wal=wal, flusher=flusher, health=health)
    handlers = Handlers(
        RequestSettings.of(settings), reader=reader, writer=writer, status=status.snapshot
    )
    return Components(
        settings=settings,
        notifier=notifier,
        metrics=metrics,
        alerts=alerts,
        registry=registry,
        backlog=backlog,
        store=store,
        wal=wal,
        cache=cache,
        data_loss_check=data_loss_check,
        health=health,
        sweep=ExpirySweep(
            reported,
            health,
            cache,
            interval_s=settings.sweep_interval_s,
            lease=sole_writer.lease,
        ),
        sole_writer=sole_writer,
        flusher=flusher,
        unconfirmed=unconfirmed,
        durability_watch=durability_watch,
        max_connections=max_connections,
        status=status,
        reader=reader,
        writer=writer,
        handlers=handlers,
    )


def wal_dir(data_dir: Path) -> Path:
    return data_dir / WAL_DIR_NAME


def fit_connections(settings: Settings, store_kind: str) -> int:
    """``max_connections``, held to what the open-file limit leaves room for."""
    store_fds = settings.redis_pool_size + 2 if store_kind == "redis" else 4
    fitting, limit = connections_that_fit(settings.max_connections, store_fds)
    if fitting < settings.max_connections:
        logger.warning(
            "max_connections %d does not fit the open-file limit of %d (RLIMIT_NOFILE) "
            "with room for the store and the WAL: at most %d connections are accepted; "
            "raise the limit (LimitNOFILE= in the unit) or lower max_connections",
            settings.max_connections,
            limit,
            fitting,
        )
    return fitting


def limits(settings: Settings, max_connections: int) -> dict[str, Any]:
    """The limits ``status`` reports."""
    return {
        "max_connections": max_connections,
        "max_memories": settings.max_memories,
        "default_ttl_s": settings.default_ttl_s,
        "max_record_bytes": settings.max_record_bytes,
    }
