"""The local store: one SQLite file under ``data_dir``, same semantics as Redis.

It is the embedded default and the rollback path (``ENABLE_REDIS=false``).
SQLite calls block, so every one of them runs on a single dedicated worker
thread: the event loop never waits on the disk, and the connection is only
ever touched by the thread that opened it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from memoryd.ops import Clear, Delete, Op, Put, Replace
from memoryd.permissions import make_private_dir, open_private
from memoryd.records import Query, Record, decode_record, is_expired, matches
from memoryd.stores.base import (
    APPLIED_KEPT_S,
    AgentStats,
    ChangeListener,
    Durability,
    Eviction,
    Found,
    Sequenced,
    StoreError,
    StoreUnavailable,
    Swept,
    WriterLease,
    Writers,
    numbered,
)

logger = logging.getLogger(__name__)

FILENAME = "store.sqlite3"
# The database and the files SQLite keeps beside it in WAL mode.
FILES = (FILENAME, f"{FILENAME}-wal", f"{FILENAME}-shm")
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    agent_id   TEXT NOT NULL,
    id         TEXT NOT NULL,
    type       TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    data       BLOB NOT NULL,
    PRIMARY KEY (agent_id, id)
);
CREATE INDEX IF NOT EXISTS records_by_time ON records (agent_id, created_at, id);
CREATE INDEX IF NOT EXISTS records_by_type ON records (agent_id, type, created_at, id);
CREATE INDEX IF NOT EXISTS records_by_expiry ON records (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Per agent and source (a WAL's id), the highest sequence number applied:
-- memoryd.stores.base.Sequenced.  Kept when the agent's records go, until the
-- sweep finds it older than APPLIED_KEPT_S.
CREATE TABLE IF NOT EXISTS applied (
    agent_id   TEXT NOT NULL,
    source     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (agent_id, source)
) WITHOUT ROWID;
"""

_LIVE = "(expires_at IS NULL OR expires_at > ?)"


def _select_sql(agent_id: str, query: Query, now_s: float) -> tuple[str, list[Any]]:
    """The rows a query may match, in its order; the rest of the filter is in Python."""
    clauses = ["agent_id = ?", _LIVE]
    params: list[Any] = [agent_id, now_s]
    if query.types is not None:
        types = sorted(query.types)
        clauses.append(f"type IN ({', '.join('?' * len(types))})")
        params += types
    if query.since is not None:
        clauses.append("created_at >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("created_at < ?")
        params.append(query.until)
    direction = "DESC" if query.order == "newest" else "ASC"
    sql = (
        f"SELECT id, data FROM records WHERE {' AND '.join(clauses)}"
        f" ORDER BY created_at {direction}, id {direction}"
    )
    return sql, params


class _Writer:
    """One apply() transaction: the operations in order, with per-agent counts for trimming."""

    def __init__(self, conn: sqlite3.Connection, max_memories: int, now_s: float) -> None:
        self._conn = conn
        self._max_memories = max_memories
        self._now_s = now_s
        self._counts: dict[str, int] = {}

    def expire(self, agent_id: str) -> None:
        # As the Redis script does first: expired records neither count
        # towards max_memories nor block a Put of their id.
        self._conn.execute(
            "DELETE FROM records WHERE agent_id = ? AND expires_at <= ?", (agent_id, self._now_s)
        )

    def apply(self, op: Op) -> None:
        match op:
            case Put(record=record, data=data):
                if not is_expired(record, self._now_s):
                    self._put(record, data)
            case Replace(record=record, data=data):
                if is_expired(record, self._now_s):
                    self._delete(record["agent_id"], record["id"])
                else:
                    self._replace(record, data)
            case Delete(agent_id=agent_id, record_id=record_id):
                self._delete(agent_id, record_id)
            case Clear(agent_id=agent_id):
                self._conn.execute("DELETE FROM records WHERE agent_id = ?", (agent_id,))
                self._counts[agent_id] = 0

    def _put(self, record: Record, data: bytes) -> None:
        cursor = self._conn.execute(
            "INSERT INTO records (agent_id, id, type, created_at, expires_at, data)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, id) DO NOTHING",
            (
                record["agent_id"],
                record["id"],
                record["type"],
                record["created_at"],
                record["expires_at"],
                data,
            ),
        )
        if cursor.rowcount == 1:
            self._trim(record["agent_id"], added=1)

    def _replace(self, record: Record, data: bytes) -> None:
        self._conn.execute(
            "UPDATE records SET type = ?, created_at = ?, expires_at = ?, data = ?"
            " WHERE agent_id = ? AND id = ?",
            (
                record["type"],
                record["created_at"],
                record["expires_at"],
                data,
                record["agent_id"],
                record["id"],
            ),
        )

    def _delete(self, agent_id: str, record_id: str) -> None:
        cursor = self._conn.execute(
            "DELETE FROM records WHERE agent_id = ? AND id = ?", (agent_id, record_id)
        )
        if agent_id in self._counts:
            self._counts[agent_id] -= cursor.rowcount

    def _trim(self, agent_id: str, added: int) -> None:
        count = self._counts.get(agent_id)
        if count is None:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM records WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            count = int(row[0])
        else:
            count += added
        excess = count - self._max_memories
        if excess > 0:
            self._conn.execute(
                "DELETE FROM records WHERE agent_id = ? AND id IN ("
                " SELECT id FROM records WHERE agent_id = ? ORDER BY created_at, id LIMIT ?)",
                (agent_id, agent_id, excess),
            )
            count = self._max_memories
        self._counts[agent_id] = count


class LocalStore:
    """A Store in one SQLite database file."""

    kind = "local"

    def __init__(self, data_dir: Path, *, max_memories: int = 1000) -> None:
        self._path = Path(data_dir) / FILENAME
        self._max_memories = max_memories
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # only used on the worker thread

    @property
    def path(self) -> Path:
        return self._path

    @property
    def identity(self) -> str:
        return f"local {self._path}"

    # -- plumbing -----------------------------------------------------------

    async def _run(self, action: str, work: Callable[[], _T]) -> _T:
        if self._executor is None:
            raise StoreUnavailable("local store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, work)
        except (sqlite3.OperationalError, OSError) as exc:
            # Locked, out of disk, I/O errors: a later attempt may succeed.
            raise StoreUnavailable(f"sqlite {action}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite {action}: {exc}") from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("local store is not open")
        return self._conn

    # -- life cycle ---------------------------------------------------------

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memoryd-sqlite")
        if self._conn is None:
            await self._run("open", self._open_sync)
            logger.info("local store at %s (sqlite %s)", self._path, sqlite3.sqlite_version)

    def _open_sync(self) -> None:
        make_private_dir(self._path.parent)
        # SQLite gives its -wal and -shm files the database file's mode.
        os.close(open_private(self._path, os.O_RDWR))
        # Autocommit mode: transactions are begun and ended explicitly below.
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("sqlite journal_mode is %s, not wal, at %s", mode, self._path)
            # The daemon deletes its own WAL segments once apply() returns, so
            # a commit must be on disk by then: FULL syncs the journal at commit.
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def durability(self) -> Durability:
        # synchronous = FULL: a commit is on disk when apply() returns.
        return Durability(server_run=self.identity, until_s=math.inf)

    async def server_run(self) -> str:
        return self.identity

    async def eviction(self) -> Eviction | None:
        return None  # SQLite never drops rows on its own

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "address": str(self._path),
            "server_version": sqlite3.sqlite_version,
        }

    async def ping(self) -> float:
        if self._conn is None:
            await self.open()  # a start on a full disk could not open the file yet
        started = time.perf_counter()
        await self._run("ping", lambda: self._db().execute("SELECT 1").fetchone())
        return time.perf_counter() - started

    async def marker(self, candidate: str) -> str:
        return await self._run("marker", lambda: self._marker_sync(candidate))

    def _marker_sync(self, candidate: str) -> str:
        db = self._db()
        db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('marker', ?)", (candidate,))
        row = db.execute("SELECT value FROM meta WHERE name = 'marker'").fetchone()
        return str(row[0])

    # -- writes -------------------------------------------------------------

    async def apply(
        self,
        ops: Sequence[Op],
        now_s: float,
        lease: WriterLease | None = None,
        sequenced: Sequenced | None = None,
    ) -> None:
        # No lease to renew: the data_dir lock is the lease (renew_writer_lease).
        if ops:
            numbers = list(numbered(ops, sequenced))  # checked before the transaction
            source = None if sequenced is None else sequenced.source
            await self._run("apply", lambda: self._apply_sync(numbers, source, now_s))

    def _apply_sync(
        self, numbers: Sequence[tuple[Op, int | None]], source: str | None, now_s: float
    ) -> None:
        conn = self._db()
        writer = _Writer(conn, self._max_memories, now_s)
        conn.execute("BEGIN IMMEDIATE")
        try:
            agent_ids = list(dict.fromkeys(op.agent_id for op, _ in numbers))
            for agent_id in agent_ids:
                writer.expire(agent_id)
            applied = {} if source is None else self._applied_seqs(agent_ids, source)
            for op, seq in numbers:
                if seq is not None:
                    if seq <= applied.get(op.agent_id, 0):
                        continue
                    applied[op.agent_id] = seq
                writer.apply(op)
            conn.executemany(
                "INSERT INTO applied (agent_id, source, seq, applied_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (agent_id, source)"
                " DO UPDATE SET seq = max(seq, excluded.seq), applied_at = excluded.applied_at",
                [(agent_id, source, seq, now_s) for agent_id, seq in applied.items()],
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _applied_seqs(self, agent_ids: Sequence[str], source: str) -> dict[str, int]:
        """The highest number applied from ``source``, of those agents that have one."""
        found: dict[str, int] = {}
        for agent_id in agent_ids:
            row = (
                self._db()
                .execute(
                    "SELECT seq FROM applied WHERE agent_id = ? AND source = ?",
                    (agent_id, source),
                )
                .fetchone()
            )
            if row is not None:
                found[agent_id] = int(row[0])
        return found

    async def renew_writer_lease(self, daemon_id: str, lease_s: float) -> Writers:
        # The database lives in data_dir, which one daemon at a time holds
        # (memoryd.lock): nobody else writes it.
        return Writers(1, True)

    async def watch(self, daemon_id: str, listener: ChangeListener) -> None:
        listener.following()  # the data_dir lock: no other writer
        await asyncio.Event().wait()  # nothing between this process and its file

    async def sweep(self, now_s: float, lease: WriterLease | None = None) -> Swept:
        removed = await self._run("sweep", lambda: self._sweep_sync(now_s))
        if removed:
            logger.info("sweep removed %d expired records", removed)
        return Swept(removed)  # no index to leave stale, nothing evicts

    def _sweep_sync(self, now_s: float) -> int:
        conn = self._db()
        conn.execute("DELETE FROM applied WHERE applied_at <= ?", (now_s - APPLIED_KEPT_S,))
        cursor = conn.execute(
            "DELETE FROM records WHERE expires_at IS NOT NULL AND expires_at <= ?", (now_s,)
        )
        return cursor.rowcount

    # -- reads --------------------------------------------------------------

    # Reads are one SQL statement each: they never repair.

    async def get(self, agent_id: str, record_id: str, now_s: float) -> Found[Record | None]:
        return Found(await self._run("get", lambda: self._get_sync(agent_id, record_id, now_s)))

    def _get_sync(self, agent_id: str, record_id: str, now_s: float) -> Record | None:
        row = (
            self._db()
            .execute(
                f"SELECT data FROM records WHERE agent_id = ? AND id = ? AND {_LIVE}",
                (agent_id, record_id, now_s),
            )
            .fetchone()
        )
        if row is None:
            return None
        record = self._decode(agent_id, record_id, row[0])
        if record is None or is_expired(record, now_s):
            return None
        return record

    async def query(self, agent_id: str, query: Query, now_s: float) -> Found[list[Record]]:
        if query.limit <= 0 or (query.types is not None and not query.types):
            return Found([])
        return Found(await self._run("query", lambda: self._query_sync(agent_id, query, now_s)))

    def _query_sync(self, agent_id: str, query: Query, now_s: float) -> list[Record]:
        sql, params = _select_sql(agent_id, query, now_s)
        found: list[Record] = []
        # The cursor streams rows in index order; stop as soon as there are enough.
        for record_id, data in self._db().execute(sql, params):
            record = self._decode(agent_id, record_id, data)
            if record is not None and matches(record, query, now_s):
                found.append(record)
                if len(found) == query.limit:
                    break
        return found

    async def stats(self, agent_id: str, now_s: float) -> Found[AgentStats]:
        return Found(await self._run("stats", lambda: self._stats_sync(agent_id, now_s)))

    def _stats_sync(self, agent_id: str, now_s: float) -> AgentStats:
        rows = self._db().execute(
            "SELECT type, COUNT(*), SUM(length(data)), MIN(created_at), MAX(created_at)"
            f" FROM records WHERE agent_id = ? AND {_LIVE} GROUP BY type",
            (agent_id, now_s),
        )
        stats = AgentStats()
        for record_type, count, size, oldest, newest in rows:
            stats.by_type[record_type] = int(count)
            stats.count += int(count)
            stats.bytes += int(size)
            stats.oldest = oldest if stats.oldest is None else min(stats.oldest, oldest)
            stats.newest = newest if stats.newest is None else max(stats.newest, newest)
        return stats

    async def agents(self, prefix: str, limit: int) -> list[str]:
        if limit <= 0:
            return []
        return await self._run("agents", lambda: self._agents_sync(prefix, limit))

    def _agents_sync(self, prefix: str, limit: int) -> list[str]:
        # A range scan from the prefix on, checked with startswith in Python:
        # no LIKE, so "_" or "%" in the prefix match only themselves.
        found: list[str] = []
        rows = self._db().execute(
            "SELECT DISTINCT agent_id FROM records WHERE agent_id >= ? ORDER BY agent_id",
            (prefix,),
        )
        for (agent_id,) in rows:
            if not agent_id.startswith(prefix) or len(found) >= limit:
                break
            found.append(agent_id)
        return found

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _decode(agent_id: str, record_id: str, data: bytes) -> Record | None:
        try:
            return decode_record(data)
        except (ValueError, TypeError, msgpack.UnpackException):
            # Never log the content itself; the ids are enough to look at it.
            logger.warning("undecodable record %s of agent %s skipped", record_id, agent_id)
            return None
