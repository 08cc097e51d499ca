"""The oracle of the fault tests: who wrote what, and whether Redis holds exactly that.

Writers (``Writers``) add records with ids they choose and content derived
from the id, and note in a ``Ledger`` every id they sent and every id whose
write was acknowledged.  ``check_redis`` then reads Redis directly, by the
key layout of the contract (docs/operations.md, "Keys in Redis"), spelled
out here rather than imported from memoryd so that the oracle does not share
the daemon's mistakes, and lists every way the store differs from the
ledger: an acknowledged record missing or damaged, a record nobody wrote,
an index or a count that disagrees with the records.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack
import redis

from memoryd_client import Client, errors
from tests import redis_view

TYPES = ("note", "speech", "keywords")


def content_for(record_id: str) -> dict[str, str]:
    """The content every write of ``record_id`` carries: derived from the id alone."""
    return {"id": record_id, "sha256": hashlib.sha256(record_id.encode()).hexdigest()}


def type_for(record_id: str) -> str:
    return TYPES[hashlib.sha256(record_id.encode()).digest()[0] % len(TYPES)]


def poll(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    """Whether ``predicate`` became true within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


@dataclass
class Ledger:
    """Every id the writers sent, and what became of it.  Thread-safe."""

    issued: dict[str, str] = field(default_factory=dict)  # id -> agent id
    acked: dict[str, tuple[float, float]] = field(default_factory=dict)  # id -> (sent, acked)
    in_doubt: set[str] = field(default_factory=set)  # sent; the answer never came
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    max_latency_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def issue(self, agent_id: str, ids: Sequence[str]) -> None:
        with self._lock:
            for record_id in ids:
                self.issued[record_id] = agent_id

    def ack(self, ids: Sequence[str], sent: float, acked: float) -> None:
        with self._lock:
            for record_id in ids:
                self.acked[record_id] = (sent, acked)
            self.max_latency_s = max(self.max_latency_s, acked - sent)

    def fail(self, ids: Sequence[str], exc: BaseException, *, in_doubt: bool) -> None:
        with self._lock:
            self.errors[type(exc).__name__] += 1
            if in_doubt:
                self.in_doubt.update(ids)

    def unexpected_error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors[type(exc).__name__] += 1
            self.unexpected.append(f"{type(exc).__name__}: {exc}")

    def ack_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def error_count(self, name: str) -> int:
        with self._lock:
            return self.errors[name]

    def wait_more_acks(self, more: int, timeout_s: float) -> bool:
        """Whether ``more`` writes are acknowledged from now within ``timeout_s``."""
        target = self.ack_count() + more
        return poll(lambda: self.ack_count() >= target, timeout_s)

    def wait_errors_above(self, name: str, count: int, timeout_s: float) -> bool:
        """Whether there are more than ``count`` errors ``name`` within ``timeout_s``."""
        return poll(lambda: self.error_count(name) > count, timeout_s)

    def acked_between(self, start: float, end: float) -> int:
        """Writes sent at or after ``start`` and acknowledged at or before ``end``."""
        with self._lock:
            return sum(1 for sent, acked in self.acked.values() if sent >= start and acked <= end)

    def agents(self) -> set[str]:
        with self._lock:
            return set(self.issued.values())

    def summary(self) -> str:
        with self._lock:
            return (
                f"issued {len(self.issued)}, acked {len(self.acked)}, in doubt "
                f"{len(self.in_doubt)}, errors {dict(self.errors)}, "
                f"max ack latency {self.max_latency_s:.3f}s"
            )


class Writers:
    """Threads that add records with client-chosen ids until stopped.

    Each thread has its own client without retries, so a write fails fast
    when the daemon or its socket goes away; the thread notes that and goes
    on (the next call reconnects).  About one call in four is an ``add_many``
    of a few records.
    """

    def __init__(
        self,
        socket_path: Path,
        ledger: Ledger,
        agents: Sequence[str],
        *,
        seed: int,
        threads: int = 4,
        timeout_s: float = 5.0,
        id_prefix: str = "r",
        pause_s: float = 0.0,
    ) -> None:
        self.socket_path = socket_path
        self.ledger = ledger
        self.agents = list(agents)
        self.seed = seed
        self.timeout_s = timeout_s
        self.id_prefix = id_prefix
        self.pause_s = pause_s
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"writer-{n}", daemon=True)
            for n in range(threads)
        ]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        assert not alive, f"writer threads did not stop: {alive}"

    def _run(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-{index}")
        client = Client(self.socket_path, retry=False, timeout_s=self.timeout_s)
        sequence = 0
        try:
            while not self._stop.is_set():
                agent_id = rng.choice(self.agents)
                size = rng.randint(2, 6) if rng.random() < 0.25 else 1
                ids = [f"{self.id_prefix}w{index}n{sequence + k}" for k in range(size)]
                sequence += size
                if not self._write(client, agent_id, ids):
                    # The daemon is gone or restarting: do not spin (and do
                    # not steal the CPU its start needs).
                    self._stop.wait(0.05)
                elif self.pause_s:
                    self._stop.wait(self.pause_s)
        finally:
            client.close()

    def _write(self, client: Client, agent_id: str, ids: list[str]) -> bool:
        self.ledger.issue(agent_id, ids)
        sent = time.monotonic()
        try:
            if len(ids) == 1:
                client.add(agent_id, type_for(ids[0]), content_for(ids[0]), id=ids[0])
            else:
                returned = client.add_many(
                    [
                        {
                            "agent_id": agent_id,
                            "type": type_for(i),
                            "content": content_for(i),
                            "id": i,
                        }
                        for i in ids
                    ]
                )
                if returned != ids:
                    raise AssertionError(f"add_many returned {returned}, sent {ids}")
        except (errors.ConnectionLost, errors.MemorydTimeoutError) as exc:
            # The request may have reached the daemon: stored or not, both are fine.
            self.ledger.fail(ids, exc, in_doubt=True)
            return False
        except errors.ConnectError as exc:
            # Never connected: nothing was sent.
            self.ledger.fail(ids, exc, in_doubt=False)
            return False
        except Exception as exc:
            self.ledger.unexpected_error(exc)
            return False
        self.ledger.ack(ids, sent, time.monotonic())
        return True


# --------------------------------------------------------------------- the store


def _keys(agent_id: str) -> dict[str, str]:
    base = f"agent:{{{agent_id}}}:"
    return {
        "memory": base + "memory:",
        "list": base + "memories:list",
        "types": base + "memories:types",
        "type": base + "memories:type:",
        "stats": base + "stats",
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _some(ids: set[str] | list[str], n: int = 5) -> str:
    listed = sorted(ids)
    more = f" (+{len(listed) - n} more)" if len(listed) > n else ""
    return f"{listed[:n]}{more}"


def stored_agents(conn: redis.Redis) -> set[str]:
    """The agents with a time index in Redis."""
    found = set()
    for key in conn.scan_iter(match="agent:{*}:memories:list", count=1000):
        text = _text(key)
        found.add(text[len("agent:{") : -len("}:memories:list")])
    return found


def check_redis(conn: redis.Redis, ledger: Ledger) -> list[str]:
    """Every way Redis differs from what the ledger allows; empty when it holds exactly that."""
    problems: list[str] = []
    expected_agents = ledger.agents()
    phantom_agents = stored_agents(conn) - expected_agents
    if phantom_agents:
        problems.append(f"agents nobody wrote to: {_some(phantom_agents)}")
    for agent_id in sorted(expected_agents | phantom_agents):
        problems += check_agent(conn, ledger, agent_id)
    return problems


def check_agent(conn: redis.Redis, ledger: Ledger, agent_id: str) -> list[str]:
    keys = _keys(agent_id)
    where = f"agent {agent_id}:"
    scored = redis_view.scored(conn, keys["list"])
    listed = {record_id for record_id, _ in scored}
    problems = _check_ids(conn, ledger, agent_id, keys, listed)
    if len(listed) != len(scored):
        problems.append(f"{where} ids listed more than once")
    total_bytes, damaged = _check_records(conn, keys, agent_id, scored)
    if damaged:
        problems.append(f"{where} {len(damaged)} damaged records: {damaged[:5]}")
    return problems + _check_counts(conn, keys, where, listed, total_bytes)


def _check_ids(
    conn: redis.Redis, ledger: Ledger, agent_id: str, keys: dict[str, str], listed: set[str]
) -> list[str]:
    """Acknowledged ids present, no id nobody wrote, records and index agree."""
    where = f"agent {agent_id}:"
    problems: list[str] = []
    hashed = {
        _text(key)[len(keys["memory"]) :]
        for key in conn.scan_iter(match=keys["memory"] + "*", count=1000)
    }
    issued = {i for i, a in ledger.issued.items() if a == agent_id}
    acked = {i for i in ledger.acked if ledger.issued[i] == agent_id}
    if missing := acked - listed:
        problems.append(f"{where} {len(missing)} acknowledged ids not listed: {_some(missing)}")
    if missing_hash := acked - hashed:
        problems.append(
            f"{where} {len(missing_hash)} acknowledged ids without a HASH: {_some(missing_hash)}"
        )
    if phantoms := (listed | hashed) - issued:
        problems.append(f"{where} {len(phantoms)} ids nobody wrote: {_some(phantoms)}")
    if orphans := hashed - listed:
        problems.append(f"{where} HASHes without an index entry: {_some(orphans)}")
    if dangling := listed - hashed:
        problems.append(f"{where} index entries without a HASH: {_some(dangling)}")
    return problems


def _check_counts(
    conn: redis.Redis, keys: dict[str, str], where: str, listed: set[str], total_bytes: int
) -> list[str]:
    """The stats HASH, the types HASH and the type indexes against the records."""
    problems: list[str] = []
    stats = {_text(k): _text(v) for k, v in conn.hgetall(keys["stats"]).items()}
    if listed:
        if int(stats.get("count", -1)) != len(listed):
            problems.append(f"{where} stats count {stats.get('count')} != ZCARD {len(listed)}")
        if int(stats.get("bytes", -1)) != total_bytes:
            problems.append(f"{where} stats bytes {stats.get('bytes')} != stored {total_bytes}")
    elif stats:
        problems.append(f"{where} stats {stats} left for an agent without records")
    expected_types = Counter(type_for(i) for i in listed)
    types = {_text(k): int(v) for k, v in conn.hgetall(keys["types"]).items()}
    if types != dict(expected_types):
        problems.append(f"{where} types HASH {types} != {dict(expected_types)}")
    for record_type in TYPES:
        indexed = set(redis_view.members(conn, keys["type"] + record_type))
        wanted = {i for i in listed if type_for(i) == record_type}
        if indexed != wanted:
            problems.append(
                f"{where} type index {record_type}: extra {_some(indexed - wanted)}, "
                f"missing {_some(wanted - indexed)}"
            )
    return problems


def _check_records(
    conn: redis.Redis, keys: dict[str, str], agent_id: str, scored: list[tuple[str, float]]
) -> tuple[int, list[str]]:
    """The total size of the records' data, and what is wrong with them."""
    total = 0
    damaged: list[str] = []
    for first in range(0, len(scored), 1000):
        chunk = scored[first : first + 1000]
        with conn.pipeline(transaction=False) as pipe:
            for record_id, _ in chunk:
                pipe.hgetall(keys["memory"] + record_id)
            hashes: list[dict[bytes, bytes]] = pipe.execute()
        for (record_id, score), fields in zip(chunk, hashes, strict=True):
            if not fields:
                continue  # reported as an index entry without a HASH
            data = fields.get(b"data", b"")
            total += len(data)
            problem = _record_problem(record_id, agent_id, score, fields, data)
            if problem:
                damaged.append(f"{record_id}: {problem}")
    return total, damaged


def _record_problem(
    record_id: str, agent_id: str, score: float, fields: dict[bytes, bytes], data: bytes
) -> str | None:
    if _text(fields.get(b"type", b"")) != type_for(record_id):
        return f"HASH type {fields.get(b'type')!r}"
    try:
        record: dict[str, Any] = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        return f"undecodable data ({exc})"
    wanted = {
        "id": record_id,
        "agent_id": agent_id,
        "type": type_for(record_id),
        "content": content_for(record_id),
    }
    got = {name: record.get(name) for name in wanted}
    if got != wanted:
        return f"record {got} != {wanted}"
    if record.get("created_at") != score:
        return f"score {score} != created_at {record.get('created_at')}"
    return None


# --------------------------------------------------------------------- the daemon


def wait_drained(client: Client, timeout_s: float = 30.0) -> dict[str, Any]:
    """Poll status until the backlog is empty and the state healthy; the last status."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(errors.MemorydError):
            status = client.status(timeout_s=5)
            if status["wal"]["backlog_records"] == 0 and status["state"] == "healthy":
                return status
        time.sleep(0.05)
    raise AssertionError(
        f"not drained and healthy after {timeout_s}s: state {status.get('state')}, "
        f"wal {status.get('wal')}, reason {status.get('reason')}"
    )
