"""The composition root: what ``memoryd.daemon.build`` makes and how SIGHUP reaches each part."""

from __future__ import annotations

from pathlib import Path

from memoryd import daemon
from memoryd.config import load_settings
from memoryd.flusher import FlushSettings
from memoryd.handlers import RequestSettings


def test_build_wires_the_parts_together(tmp_path: Path) -> None:
    settings = load_settings(
        None, socket_path=tmp_path / "s.sock", data_dir=tmp_path / "data", backend="local"
    )
    parts = daemon.build(settings)
    assert parts.wal.wal_dir == daemon.wal_dir(settings.data_dir)
    assert parts.store.kind == "local"
    assert parts.max_connections <= settings.max_connections
    assert parts.handlers.settings == RequestSettings.of(settings)
    assert parts.sweep.interval_s == settings.sweep_interval_s


def test_reconfigure_hands_each_part_its_share_of_the_reloaded_settings(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    settings = load_settings(
        None, socket_path=tmp_path / "s.sock", data_dir=tmp_path / "data", backend="local"
    )
    parts = daemon.build(settings)
    reloaded = settings.model_copy(
        update={
            "wal_max_bytes": settings.wal_max_bytes // 2,
            "min_free_disk_bytes": settings.min_free_disk_bytes + 1,
            "flush_batch_max": 7,
            "flush_batch_max_bytes": 70_000,
            "checkpoint_interval_s": 0.25,
            "read_cache_per_agent": 3,
            "read_cache_records": 33,
            "sweep_interval_s": 9.0,
            "default_ttl_s": 123,
            "max_connections": 17,
        }
    )
    parts.reconfigure(reloaded)
    assert parts.settings is reloaded
    assert parts.handlers.settings == RequestSettings.of(reloaded)
    assert (parts.wal.settings.max_bytes, parts.wal.settings.min_free_disk_bytes) == (
        reloaded.wal_max_bytes,
        reloaded.min_free_disk_bytes,
    )
    assert parts.flusher.settings == FlushSettings(
        batch_max=7, batch_max_bytes=70_000, checkpoint_interval_s=0.25
    )
    assert (parts.cache.settings.per_agent, parts.cache.settings.max_records) == (3, 33)
    assert parts.sweep.interval_s == 9.0
    assert parts.max_connections == 17
    limits = parts.status.snapshot()["limits"]
    assert (limits["default_ttl_s"], limits["max_connections"]) == (123, 17)
