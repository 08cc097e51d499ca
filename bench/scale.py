"""The scale scenario: one memoryd daemon filled level by level, 1k to 1M stored records.

One daemon (Redis store, fsync everysec) on a redis-server of its own.  Records come from the
ingest workload (``workload.ingest_records``) through the real ``Client.add_many`` in batches of
1000 (waiting while more than 10k are not applied yet), 100 records per agent: every level adds
new agents only (only the difference to the level below is ingested), so the full run ends with
10k agents × 100 records, and nothing is trimmed (``max_memories`` is 1000).

At each level, once a ``durability="store"`` write behind the ingest has returned (everything is
in Redis): newest-5 (``recent(agent, limit=5)``) latency over agents drawn at random (seeded),
Redis ``used_memory`` and ``used_memory_dataset`` (INFO memory), memory per record
((used_memory now − used_memory of the empty server at the start) / records), the mean encoded
payload (HSTRLEN of the ``data`` field of the records of sampled agents: what memoryd stores per
record, ``encode_record``), and the daemon's RSS.  At the top level the daemon then reads
newest-5 once from every agent, so that its per-agent read cache is as full as it gets, and its
RSS is taken again; then once more on the daemon restarted over the same store (the daemon that
ingested keeps in its heap what its backlog took).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import redis

from bench import workload
from bench.backends.memoryd import Memoryd
from bench.scenarios import SEED, Context, barrier
from bench.services import DaemonConfig, private_redis_daemon, process_pid, rss_bytes
from bench.stats import rate, summarize
from memoryd.stores.keys import KeySpace
from memoryd_client import Client
from tests.harness import Daemon

CONFIG = DaemonConfig("redis", "everysec")
PREFIX = "scale"
RECORDS_PER_AGENT = 100
BATCH = 1000
NEWEST_N = 5
PAYLOAD_SAMPLE_AGENTS = 20
WARMUP_READS = 20
MAX_BACKLOG = 10 * BATCH
BACKLOG_POLL_S = 0.01
# A fast ingest must never meet wal_full: the scenario measures sizes, not back-pressure.
WAL_MAX_BYTES = 8 * 2**30
# newest-5 is measured on the store's path (what grows with the data): without the read
# cache, which would answer the small levels from memory and the large ones mostly not.
STORE_PATH_ONLY = {"MEMORYD_READ_CACHE_PER_AGENT": "0"}

_Items = Iterable[tuple[str, workload.Rec]]


def _batches(items: _Items, size: int) -> Iterator[list[tuple[str, workload.Rec]]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _level_items(level: int, first_agent: int, agents: int) -> _Items:
    """The records of agents ``first_agent``.. of this level, round-robin, generated lazily."""
    return workload.ingest_records(
        SEED + level, PREFIX, agents * RECORDS_PER_AGENT, agents, first_agent=first_agent
    )


def _backlog(watcher: Client) -> int:
    return int(watcher.status()["wal"]["backlog_records"])


def _ingest(socket_path: Path, items: _Items, watcher: Client) -> dict[str, int]:
    """``add_many`` in batches of ``BATCH``, then a barrier; the records sent, and the largest
    backlog (acknowledged, not yet in Redis) the daemon's status showed after a batch.

    The ingest waits while more than ``MAX_BACKLOG`` records are not applied yet: unpaced, the
    backlog of a 1M-record level grows to hundreds of thousands of records, and the heap that
    takes stays in the daemon's RSS.
    """
    sent = peak_backlog = 0
    with contextlib.closing(Memoryd("memoryd-scale", socket_path)) as backend:
        for batch in _batches(items, BATCH):
            sent += backend.add_many(batch)
            backlog = _backlog(watcher)
            peak_backlog = max(peak_backlog, backlog)
            while backlog > MAX_BACKLOG:
                time.sleep(BACKLOG_POLL_S)
                backlog = _backlog(watcher)
    barrier(socket_path, f"{PREFIX}.barrier")
    return {"ingested": sent, "ingest_peak_backlog_records": peak_backlog}


def _redis_memory(conn: redis.Redis) -> dict[str, int]:
    info = conn.info("memory")
    return {
        "used_memory": int(info["used_memory"]),
        "used_memory_dataset": int(info["used_memory_dataset"]),
        "used_memory_rss": int(info["used_memory_rss"]),
        "keys": int(conn.dbsize()),
    }


def _payload_bytes(conn: redis.Redis, agents: list[str]) -> dict[str, Any]:
    """The ``data`` field of every record of ``agents``, as Redis holds it."""
    keys = KeySpace()
    pipe = conn.pipeline(transaction=False)
    for agent in agents:
        pipe.zrange(keys.agent(agent).list, 0, -1)
    lengths = conn.pipeline(transaction=False)
    for agent, ids in zip(agents, pipe.execute(), strict=True):
        for record_id in ids:
            lengths.hstrlen(keys.agent(agent).memory(record_id.decode()), "data")
    sizes = [int(n) for n in lengths.execute()]
    return {
        "sampled_records": len(sizes),
        "mean_bytes": round(sum(sizes) / len(sizes), 1) if sizes else None,
    }


def _newest_latency(
    client: Client, agents: list[str], reads: int, rng: random.Random
) -> dict[str, Any]:
    """``reads`` newest-5 reads of random agents, after ``WARMUP_READS`` left out."""
    samples: list[int] = []
    short = 0
    clock = time.perf_counter_ns
    for i in range(WARMUP_READS + reads):
        agent = rng.choice(agents)
        start = clock()
        records = client.recent(agent, limit=NEWEST_N)
        elapsed = clock() - start
        if i >= WARMUP_READS:
            samples.append(elapsed)
            short += len(records) != NEWEST_N
    return {**summarize(samples), "short_answers": short}


def _read_every_agent(client: Client, agents: list[str]) -> float:
    """newest-5 once from every agent; the seconds it took."""
    start = time.perf_counter()
    for agent in agents:
        client.recent(agent, limit=NEWEST_N)
    return round(time.perf_counter() - start, 3)


@dataclass(slots=True)
class _Filled:
    """The scenario's daemon, its Redis and what is stored so far."""

    daemon: Daemon
    client: Client
    conn: redis.Redis
    empty_used_memory: int
    agents: list[str] = field(default_factory=list)

    @property
    def daemon_rss_bytes(self) -> int | None:
        return rss_bytes(process_pid(self.daemon))


def _grow(filled: _Filled, level: int) -> dict[str, int | float]:
    """Ingest the agents that take the store to ``level`` records."""
    first = len(filled.agents)
    count = level // RECORDS_PER_AGENT - first
    started = time.perf_counter_ns()
    items = _level_items(level, first, count)
    ingest = _ingest(filled.daemon.socket_path, items, filled.client)
    elapsed = time.perf_counter_ns() - started
    filled.agents += [workload.agent_name(PREFIX, i) for i in range(first, first + count)]
    return {**ingest, "ingest_stored_per_s": rate(ingest["ingested"], elapsed)}


def _measure_level(filled: _Filled, reads: int) -> dict[str, Any]:
    agents = filled.agents
    records = len(agents) * RECORDS_PER_AGENT
    rng = random.Random(SEED + records)
    memory = _redis_memory(filled.conn)
    sample = rng.sample(agents, min(PAYLOAD_SAMPLE_AGENTS, len(agents)))
    payload = _payload_bytes(filled.conn, sample)
    per_record = (memory["used_memory"] - filled.empty_used_memory) / records
    overhead = None if payload["mean_bytes"] is None else per_record - payload["mean_bytes"]
    cache_before = _read_cache(filled.client)
    newest = _newest_latency(filled.client, agents, reads, rng)
    cache_after = _read_cache(filled.client)
    return {
        "records": records,
        "agents": len(agents),
        "newest": newest,
        "read_cache_after_reads": cache_after,
        "read_cache_hit_share": _hit_share(cache_before, cache_after),
        "redis": memory,
        "memory_per_record_bytes": round(per_record, 1),
        "payload": payload,
        "overhead_per_record_bytes": None if overhead is None else round(overhead, 1),
        "daemon_rss_bytes": filled.daemon_rss_bytes,
    }


def _read_cache(client: Client) -> dict[str, Any]:
    """The daemon's read cache as its status shows it: records held, hits, misses."""
    return dict(client.status()["read_cache"])


def _hit_share(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """Share of the reads in between that the read cache answered (None: no reads)."""
    hits = int(after["hits"]) - int(before["hits"])
    misses = int(after["misses"]) - int(before["misses"])
    return round(hits / (hits + misses), 3) if hits + misses else None


def _every_agent(filled: _Filled) -> dict[str, Any]:
    """newest-5 once from every agent, then the daemon's RSS and cache size."""
    seconds = _read_every_agent(filled.client, filled.agents)
    return {
        "read_every_agent_s": seconds,
        "daemon_rss_after_every_agent_bytes": filled.daemon_rss_bytes,
        "daemon_read_cache": _read_cache(filled.client),
    }


def _every_agent_restarted(filled: _Filled) -> dict[str, Any]:
    """The same on the daemon restarted over the same store with its default settings (the
    read cache on): its RSS without the heap that the ingest's backlog grew (CPython keeps it)."""
    filled.daemon.stop()
    filled.daemon.env_overrides = {
        name: value
        for name, value in filled.daemon.env_overrides.items()
        if name not in STORE_PATH_ONLY
    }
    filled.daemon.start()
    started = filled.daemon_rss_bytes
    _read_every_agent(filled.client, filled.agents)  # the client reconnects
    return {
        "restarted_daemon_rss_bytes": started,
        "restarted_daemon_rss_after_every_agent_bytes": filled.daemon_rss_bytes,
        "restarted_daemon_read_cache": _read_cache(filled.client),
    }


def run_scale(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    levels: list[dict[str, Any]] = []
    env = {"MEMORYD_WAL_MAX_BYTES": str(WAL_MAX_BYTES), **STORE_PATH_ONLY}
    with private_redis_daemon(CONFIG, **env) as (daemon, server):
        host, port = server.tcp_address
        with (
            redis.Redis(host=host, port=port) as conn,
            Client(daemon.socket_path, timeout_s=60) as client,
        ):
            empty = _redis_memory(conn)
            filled = _Filled(daemon, client, conn, empty["used_memory"])
            for level in p.scale_levels:
                ctx.log(f"scale: {level} records")
                grown = _grow(filled, level)
                levels.append({**_measure_level(filled, p.scale_reads), **grown})
            ctx.log(f"scale: newest-5 from each of {len(filled.agents)} agents, then RSS")
            levels[-1].update(_every_agent(filled))
            ctx.log("scale: the same on the daemon restarted over the same store")
            levels[-1].update(_every_agent_restarted(filled))
    return {"params": _params(p.scale_levels, p.scale_reads), "empty": empty, "levels": levels}


def _params(levels: tuple[int, ...], reads: int) -> dict[str, Any]:
    return {
        "levels": list(levels),
        "records_per_agent": RECORDS_PER_AGENT,
        "batch": BATCH,
        "max_backlog_records": MAX_BACKLOG,
        "reads_per_level": reads,
        "warmup_reads": WARMUP_READS,
        "payload_sample_agents": PAYLOAD_SAMPLE_AGENTS,
        "daemon": CONFIG.label,
        "transport": "client to memoryd: Unix socket; memoryd to Redis: TCP 127.0.0.1",
        "method": (
            "one daemon (Redis store, fsync everysec) and its own redis-server; each level adds"
            f" new agents of {RECORDS_PER_AGENT} records (ingest workload, add_many batches of"
            f" {BATCH}, waiting while more than {MAX_BACKLOG} records are not applied yet), then"
            " a durability=store write; newest-5 = recent(agent, limit=5) of"
            " seeded random agents, read cache off (the store's path at every level); memory per"
            " record = (used_memory − used_memory of the empty"
            " server) / records (the barrier agent's few records are in used_memory, not in the"
            " count); payload = mean HSTRLEN of the records' data field of sampled agents; daemon"
            " RSS by psutil, at the top level also after newest-5 from every agent, then again"
            " on the daemon restarted (SIGTERM, start) over the same store with its default"
            " settings (read cache on): without the heap the ingest's backlog grew"
        ),
    }
