"""The soak's oracle: writes whose fate is known exactly, checked in Redis itself.

With caps and TTLs small, "lost" needs care: a record may vanish by design
(trimmed past ``max_memories``, expired).  So the oracle writes to agents of its
own: each gets fewer writes than ``max_memories`` (nothing is trimmed), each
write carries a ``ttl_s`` far beyond the verification delay (nothing expires
before it is checked), and nobody else writes or deletes there.  Once a writer
has finished an agent it moves on to a fresh one, and the verifier, with the
daemon healthy:

1. asks the daemon for the agent's ``stats`` (which waits until the agent's
   writes are applied), then reads Redis directly, by the key names of
   ``memoryd.stores.keys``;
2. requires every acknowledged id to be there exactly once, intact (type and
   content derived from the id), no id nobody wrote, the stats, type counts and
   expiry index agreeing with the records, and the daemon's own ``stats`` and
   ``recent`` answering the same;
3. clears the agent (so the keyspace stays bounded over a day) and, later,
   confirms that ``stats`` says 0 and none of the agent's keys is left.

A write that raised to the writer is *in doubt*: present once or absent, both
are right.  An id acknowledged and missing is lost; any surplus in a count is a
duplicate.  Writers also read their agent back as they go (read-your-writes):
an answer that is not degraded must hold every id acknowledged so far.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgpack
import redis

from memoryd.stores.keys import KeySpace
from memoryd_client import AsyncClient, Client, errors
from memoryd_client.types import NewRecord, RecordList
from tests.soak.answers import check_records
from tests.soak.observed import Failed, Observer
from tests.soak.plan import Plan
from tests.soak.timeline import Timeline

KEYSPACE = KeySpace()
TYPES = ("note", "speech", "keywords")
READ_BACK_EVERY = 8  # writes between two read-your-writes checks
CONFIRM_DELAY_S = 0.5
RETRY_DELAY_S = 1.0
MAX_RECLEARS = 3


def content_for(record_id: str) -> dict[str, str]:
    """The content of the oracle's record ``record_id``: derived from the id alone."""
    return {"id": record_id, "sha256": hashlib.sha256(record_id.encode()).hexdigest()}


def type_for(record_id: str) -> str:
    return TYPES[hashlib.sha256(record_id.encode()).digest()[0] % len(TYPES)]


@dataclass
class OracleAgent:
    agent_id: str
    issued: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    in_doubt: set[str] = field(default_factory=set)
    finished_at: float = 0.0
    verified: bool = False
    cleared: bool = False  # the clear was acknowledged
    reclears: int = 0
    due: float = 0.0


class Ledger:
    """The agents finished and waiting for the verifier, and the totals so far."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[OracleAgent] = deque()
        self.totals = Counter[str]()

    def finished(self, agent: OracleAgent) -> None:
        agent.finished_at = agent.due = time.monotonic()
        with self._lock:
            self._queue.append(agent)
            self.totals["agents"] += 1
            self.totals["acknowledged"] += len(agent.acked)
            self.totals["in_doubt"] += len(agent.in_doubt - agent.acked)

    def next_due(self) -> OracleAgent | None:
        now = time.monotonic()
        with self._lock:
            for _ in range(len(self._queue)):
                agent = self._queue.popleft()
                if agent.due <= now:
                    return agent
                self._queue.append(agent)
        return None

    def again(self, agent: OracleAgent, delay_s: float) -> None:
        agent.due = time.monotonic() + delay_s
        with self._lock:
            self._queue.append(agent)

    def waiting(self) -> list[OracleAgent]:
        with self._lock:
            return list(self._queue)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.totals[name] += n


# ----------------------------------------------------------------- writers


def _batches(rng: random.Random, agent_id: str, per_agent: int) -> list[list[str]]:
    """The ids of an agent's writes: single adds, and about one add_many of 2-4 in four."""
    batches, n = [], 0
    while n < per_agent:
        size = min(per_agent - n, rng.randint(2, 4) if rng.random() < 0.25 else 1)
        batches.append([f"{agent_id}.{n + k}" for k in range(size)])
        n += size
    return batches


def _new_records(agent_id: str, ids: list[str], ttl_s: float) -> list[NewRecord]:
    return [
        {
            "agent_id": agent_id,
            "type": type_for(i),
            "content": content_for(i),
            "id": i,
            "ttl_s": ttl_s,
        }
        for i in ids
    ]


class _Writes:
    """What one writer does with an answer, blocking or async alike."""

    def __init__(self, observer: Observer, agent: OracleAgent) -> None:
        self.observer = observer
        self.agent = agent
        self.since_read_back = 0

    def sent(self, ids: list[str]) -> None:
        self.agent.issued.update(ids)

    def answered(self, ids: list[str], result: object) -> None:
        if isinstance(result, Failed):
            self.agent.in_doubt.update(ids)
            return
        if isinstance(result, list) and result != ids:
            self.observer.problem(
                "add_many ids", f"{self.agent.agent_id}: sent {ids}, got {result}"
            )
        self.agent.acked.update(ids)
        self.since_read_back += len(ids)

    def read_back_due(self) -> bool:
        if self.since_read_back < READ_BACK_EVERY:
            return False
        self.since_read_back = 0
        return True

    def read_back(self, answer: RecordList | Failed, asked_at: float) -> None:
        if isinstance(answer, Failed) or answer.degraded:
            return  # a degraded answer may miss what only the store holds
        agent_id = self.agent.agent_id
        check_records(self.observer, "oracle read-back", agent_id, answer, asked_at=asked_at)
        got = {r["id"] for r in answer}
        if missing := self.agent.acked - got:
            self.observer.problem(
                "acknowledged write not read back", f"{agent_id}: {sorted(missing)[:5]}"
            )
        if phantoms := got - self.agent.issued:
            self.observer.problem("id nobody wrote", f"{agent_id}: {sorted(phantoms)[:5]}")


def sync_writer(
    index: int,
    socket_path: str,
    plan: Plan,
    stop: threading.Event,
    observer: Observer,
    ledger: Ledger,
) -> None:
    """A blocking ``Client`` writing oracle agents one after another until ``stop``."""
    load = plan.load
    rng = random.Random(f"soak-oracle-sync-{index}")
    with Client(socket_path) as client:
        serial = 0
        while not stop.is_set():
            agent = OracleAgent(f"soak-oracle-s{index}-{serial}")
            serial += 1
            writes = _Writes(observer, agent)
            for ids in _batches(rng, agent.agent_id, load.oracle_records_per_agent):
                if stop.is_set():
                    break
                writes.sent(ids)
                records = _new_records(agent.agent_id, ids, load.oracle_ttl_s)
                if len(ids) == 1:
                    r = records[0]
                    add = partial(
                        client.add,
                        agent.agent_id,
                        r["type"],
                        r["content"],
                        id=ids[0],
                        ttl_s=load.oracle_ttl_s,
                    )
                    result: object = observer.call("add", add)
                else:
                    result = observer.call("add_many", partial(client.add_many, records))
                writes.answered(ids, result)
                if writes.read_back_due():
                    asked_at = time.time()
                    recent = partial(
                        client.recent, agent.agent_id, limit=load.oracle_records_per_agent
                    )
                    writes.read_back(observer.call("recent", recent), asked_at)
                stop.wait(load.oracle_pause_s)
            ledger.finished(agent)


def async_writer(
    socket_path: str, plan: Plan, stop: threading.Event, observer: Observer, ledger: Ledger
) -> None:
    """Several tasks on one ``AsyncClient`` (its requests pipelined), writing oracle agents."""

    async def task(client: AsyncClient, index: int) -> None:
        load = plan.load
        rng = random.Random(f"soak-oracle-async-{index}")
        serial = 0
        while not stop.is_set():
            agent = OracleAgent(f"soak-oracle-a{index}-{serial}")
            serial += 1
            writes = _Writes(observer, agent)
            for ids in _batches(rng, agent.agent_id, load.oracle_records_per_agent):
                if stop.is_set():
                    break
                writes.sent(ids)
                records = _new_records(agent.agent_id, ids, load.oracle_ttl_s)
                if len(ids) == 1:
                    r = records[0]
                    add = client.add(
                        agent.agent_id, r["type"], r["content"], id=ids[0], ttl_s=load.oracle_ttl_s
                    )
                    result: object = await observer.acall("async add", add)
                else:
                    result = await observer.acall("async add_many", client.add_many(records))
                writes.answered(ids, result)
                if writes.read_back_due():
                    asked_at = time.time()
                    answer = await observer.acall(
                        "async recent",
                        client.recent(agent.agent_id, limit=load.oracle_records_per_agent),
                    )
                    writes.read_back(answer, asked_at)
                await asyncio.sleep(load.oracle_pause_s)
            ledger.finished(agent)

    async def main() -> None:
        async with AsyncClient(socket_path) as client:
            await asyncio.gather(*(task(client, i) for i in range(plan.load.oracle_async_tasks)))

    asyncio.run(main())


# ----------------------------------------------------------------- verifier


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _some(ids: set[str]) -> str:
    listed = sorted(ids)
    return f"{listed[:5]}{f' (+{len(listed) - 5} more)' if len(listed) > 5 else ''}"


@dataclass
class _Stored:
    """One agent as Redis holds it."""

    listed: set[str]
    stats: dict[str, str]
    types: dict[str, int]
    expiry: set[str]
    records: dict[str, dict[bytes, bytes]]


def read_stored(conn: redis.Redis, agent_id: str) -> _Stored:
    keys = KEYSPACE.agent(agent_id)
    with conn.pipeline(transaction=False) as pipe:
        pipe.zrange(keys.list, 0, -1)
        pipe.hgetall(keys.stats)
        pipe.hgetall(keys.types)
        pipe.zrange(keys.expiry, 0, -1)
        listed_raw, stats_raw, types_raw, expiry_raw = pipe.execute()
    listed = {_text(i) for i in listed_raw}
    with conn.pipeline(transaction=False) as pipe:
        ordered = sorted(listed)
        for record_id in ordered:
            pipe.hgetall(keys.memory(record_id))
        hashes = pipe.execute() if ordered else []
    return _Stored(
        listed=listed,
        stats={_text(k): _text(v) for k, v in stats_raw.items()},
        types={_text(k): int(v) for k, v in types_raw.items()},
        expiry={_text(i) for i in expiry_raw},
        records=dict(zip(ordered, hashes, strict=True)),
    )


def record_problem(agent_id: str, record_id: str, fields: dict[bytes, bytes]) -> str | None:
    """What is wrong with one stored record HASH, if anything."""
    if not fields:
        return "index entry without a HASH"
    if _text(fields.get(b"type", b"")) != type_for(record_id):
        return f"HASH type {fields.get(b'type')!r}"
    try:
        record: dict[str, Any] = msgpack.unpackb(fields.get(b"data", b""), raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        return f"undecodable data ({exc})"
    wanted = {
        "id": record_id,
        "agent_id": agent_id,
        "type": type_for(record_id),
        "content": content_for(record_id),
    }
    got = {name: record.get(name) for name in wanted}
    return None if got == wanted else f"record {got} != {wanted}"


def compare(
    agent: OracleAgent, stored: _Stored, daemon_count: int, answer_ids: list[str]
) -> dict[str, list[str]]:
    """Every way the store and the daemon's answers differ from the agent's ledger."""
    problems: dict[str, list[str]] = {}
    for kind, detail in _id_problems(agent, stored) + _count_problems(stored, daemon_count):
        problems.setdefault(kind, []).append(f"{agent.agent_id}: {detail}")
    listed = stored.listed
    if len(answer_ids) != len(set(answer_ids)):
        problems.setdefault("duplicated write", []).append(
            f"{agent.agent_id}: an id twice in the daemon's recent answer"
        )
    if set(answer_ids) != listed:
        problems.setdefault("answer differs from the store", []).append(
            f"{agent.agent_id}: {_some(set(answer_ids) ^ listed)}"
        )
    return problems


def _id_problems(agent: OracleAgent, stored: _Stored) -> list[tuple[str, str]]:
    found = []
    if lost := agent.acked - stored.listed:
        found.append(("acknowledged write lost", f"{len(lost)} ids {_some(lost)}"))
    if phantoms := stored.listed - agent.issued:
        found.append(("id nobody wrote", f"{len(phantoms)} ids {_some(phantoms)}"))
    for record_id, fields in sorted(stored.records.items()):
        if damage := record_problem(agent.agent_id, record_id, fields):
            found.append(("damaged record", f"{record_id}: {damage}"))
    if stored.expiry != stored.listed:
        diff = _some(stored.expiry ^ stored.listed)
        found.append(("expiry index", f"{diff} in one of index and expiry only"))
    return found


def _count_problems(stored: _Stored, daemon_count: int) -> list[tuple[str, str]]:
    found = []
    distinct = len(stored.listed)
    counts = {"stats HASH": int(stored.stats.get("count", 0)), "daemon stats": daemon_count}
    for where, count in counts.items():
        if count > distinct:
            found.append(("duplicated write", f"{where} count {count} > {distinct} ids stored"))
        elif count < distinct:
            found.append(("count short", f"{where} count {count} < {distinct} ids stored"))
    wanted_types = dict(Counter(type_for(i) for i in stored.listed))
    if stored.types != wanted_types:
        found.append(("type counts", f"types HASH {stored.types} != {wanted_types}"))
    return found


def keys_left(conn: redis.Redis, agent: OracleAgent) -> list[str]:
    """The agent's keys still in Redis after its clear."""
    keys = KEYSPACE.agent(agent.agent_id)
    names = [keys.list, keys.types, keys.stats, keys.expiry]
    names += [keys.type(t) for t in TYPES]
    names += [keys.memory(i) for i in sorted(agent.issued)]
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(name)
        present = pipe.execute()
    return [name for name, there in zip(names, present, strict=True) if there]


class Verifier:
    """Checks finished oracle agents, then clears them; one thread."""

    def __init__(
        self,
        socket_path: str,
        redis_socket_path: str,
        plan: Plan,
        ledger: Ledger,
        observer: Observer,
        timeline: Timeline,
    ) -> None:
        self.socket_path = socket_path
        self.redis_socket_path = redis_socket_path
        self.plan = plan
        self.ledger = ledger
        self.observer = observer
        self.timeline = timeline
        self.finish = threading.Event()  # writers stopped: end once the ledger is empty
        self.abandon = threading.Event()
        self.late: list[str] = []

    def run(self) -> None:
        with (
            Client(self.socket_path) as client,
            redis.Redis(unix_socket_path=self.redis_socket_path, socket_timeout=2) as conn,
        ):
            while not self.abandon.is_set():
                agent = self.ledger.next_due()
                if agent is None:
                    if self.finish.is_set() and not self.ledger.waiting():
                        return
                    self.abandon.wait(0.1)
                    continue
                step: Callable[[Client, redis.Redis, OracleAgent], bool | None]
                step = self._confirm if agent.verified else self._verify
                try:
                    outcome = step(client, conn, agent)
                except redis.RedisError:
                    outcome = False  # Redis restarting or frozen: later
                if outcome is False:
                    self.ledger.again(agent, RETRY_DELAY_S)
                elif outcome is None:
                    self.ledger.again(agent, CONFIRM_DELAY_S)

    def _healthy(self, client: Client) -> bool:
        try:
            return bool(client.status(timeout_s=5)["state"] == "healthy")
        except errors.MemorydError:
            return False

    def _verify(self, client: Client, conn: redis.Redis, agent: OracleAgent) -> bool | None:
        """False: try again later; None: verified and cleared, confirm later."""
        if not self._healthy(client):
            return False
        started = time.monotonic()
        agent_id = agent.agent_id
        stats = self.observer.call("oracle stats", lambda: client.stats(agent_id))
        if isinstance(stats, Failed):
            return False
        stored = read_stored(conn, agent_id)
        asked_at = time.time()
        answer = self.observer.call("oracle recent", lambda: client.recent(agent_id, limit=1000))
        if isinstance(answer, Failed) or answer.degraded:
            return False
        check_records(self.observer, "oracle verify", agent_id, answer, asked_at=asked_at)
        delay_s = started - agent.finished_at
        if delay_s > self.plan.oracle_max_delay_s:
            self.late.append(f"{agent_id} verified {delay_s:.0f}s after its last write")
        problems = compare(agent, stored, stats["count"], [r["id"] for r in answer])
        for kind, details in problems.items():
            for detail in details:
                self.observer.problem(kind, detail)
        self.ledger.count("verified")
        self.ledger.count("stored", len(stored.listed))
        self.ledger.count("lost", len(agent.acked - stored.listed))
        self.ledger.count("in_doubt_stored", len((agent.in_doubt - agent.acked) & stored.listed))
        self.ledger.count(
            "duplicated", max(0, int(stored.stats.get("count", 0)) - len(stored.listed))
        )
        agent.verified = True
        self._clear(client, agent, expected=len(stored.listed), started=started)
        return None

    def _clear(self, client: Client, agent: OracleAgent, *, expected: int, started: float) -> None:
        cleared = self.observer.call("oracle clear", lambda: client.clear(agent.agent_id))
        agent.cleared = not isinstance(cleared, Failed)
        # A clear answered while the store was down counts the backlog, not the store.
        if agent.cleared and self.timeline.quiet(started, time.monotonic()) and cleared != expected:
            self.observer.problem(
                "clear count", f"{agent.agent_id}: clear said {cleared}, {expected} were stored"
            )

    def _confirm(self, client: Client, conn: redis.Redis, agent: OracleAgent) -> bool | None:
        """True: done; False: try again later."""
        if not self._healthy(client):
            return False
        stats = self.observer.call("oracle stats", lambda: client.stats(agent.agent_id))
        if isinstance(stats, Failed):
            return False
        if stats["count"] == 0:
            if left := keys_left(conn, agent):
                self.observer.problem("keys left after clear", f"{agent.agent_id}: {left[:5]}")
            self.ledger.count("cleared")
            return True
        remaining = read_stored(conn, agent.agent_id).listed
        # Only a write still in doubt (it raised, yet reached the daemon late) or a
        # clear that itself raised may leave records: clear again.
        may_remain = agent.in_doubt if agent.cleared else agent.issued
        if not remaining <= may_remain or agent.reclears >= MAX_RECLEARS:
            self.observer.problem(
                "records left after clear", f"{agent.agent_id}: {_some(remaining)}"
            )
            return True
        agent.reclears += 1
        self._clear(client, agent, expected=len(remaining), started=time.monotonic())
        return False
