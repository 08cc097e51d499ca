"""The local store: its file, its durability settings, and what survives a restart."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from memoryd.ops import Delete
from memoryd.records import Query
from memoryd.stores import LocalStore, StoreUnavailable
from memoryd.stores.local import FILENAME
from tests.test_stores import NOW, make_record, put

A = "craftsman_1"


async def test_the_database_file_is_created_under_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    store = LocalStore(data_dir)
    await store.open()
    try:
        await store.apply([put("1", A)], NOW)
        assert (data_dir / FILENAME).is_file()
        assert store.describe() == {
            "kind": "local",
            "address": str(data_dir / FILENAME),
            "server_version": sqlite3.sqlite_version,
        }
    finally:
        await store.close()

    with sqlite3.connect(data_dir / FILENAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"records_by_time", "records_by_type"} <= indexes


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_memories=5)
    await store.open()
    await store.apply(
        [put(str(n), A, expires_at=NOW + 50 if n == 7 else None) for n in range(1, 9)], NOW
    )
    await store.apply([Delete(A, "5")], NOW)
    before = (await store.query(A, Query(limit=100), NOW)).value
    stats = (await store.stats(A, NOW)).value
    await store.close()

    reopened = LocalStore(tmp_path, max_memories=5)
    await reopened.open()
    try:
        assert (await reopened.query(A, Query(limit=100), NOW)).value == before
        assert [record["id"] for record in before] == ["8", "7", "6", "4"]
        assert (await reopened.stats(A, NOW)).value == stats
        assert (await reopened.get(A, "8", NOW)).value == make_record("8", A)
        assert (await reopened.sweep(NOW + 50)).removed == 1
        assert await reopened.agents("", 10) == [A]
    finally:
        await reopened.close()


async def test_sqlite_runs_on_one_worker_thread(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.open()
    try:
        loop_thread = threading.get_ident()
        threads = {await store._run("probe", threading.get_ident) for _ in range(5)}
        assert len(threads) == 1
        assert loop_thread not in threads
    finally:
        await store.close()


async def test_prefix_underscore_and_percent_are_literal(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.open()
    try:
        names = ["a_b", "axb", "a%b", "a%c", "ab"]
        await store.apply([put(str(n), name) for n, name in enumerate(names, 1)], NOW)
        assert await store.agents("a_", 10) == ["a_b"]
        assert await store.agents("a%", 10) == ["a%b", "a%c"]
        assert await store.agents("a", 2) == ["a%b", "a%c"]
    finally:
        await store.close()


async def test_a_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(StoreUnavailable):
        await store.get(A, "1", NOW)
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.apply([put("1", A)], NOW)
