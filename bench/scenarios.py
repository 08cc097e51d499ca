"""The scenarios: what is measured, on which backends, with how many iterations.

``latency``: one agent, sequential: add, newest-5, by type (discussion, newest 10), meeting
context (newest 8 speeches not by the caller) and search (substring, 10), after a prefill of
``history`` personal records and ``speeches`` speeches of six agents; p50/p99/p99.9 per
operation per backend, warm-up iterations left out.

``ingest``: ``add_many`` batches of 100 and 1000 records through memoryd, against the ceiling:
one process writing the same records in memoryd's own Redis key layout with raw,
non-transactional pipelines.  memoryd's rate is counted twice: until the last batch is
acknowledged (in the WAL) and until a ``durability="store"`` write behind it returns (everything
applied to the store).

``sessions``: see ``bench.sessions``; ``scale`` and ``outage``: ``bench.scale``, ``bench.outage``.

Everything reaches Redis over TCP loopback (the direct baselines, the ceilings, memoryd's store);
clients reach memoryd over its Unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import hiredis
import msgpack
import redis

from bench import sessions, workload
from bench.backends.base import AsyncBackend, Backend, aexecute, execute
from bench.backends.direct import AsyncDirectRedis, DirectRedis
from bench.backends.files import FileStore
from bench.backends.memoryd import AsyncMemoryd, Memoryd
from bench.services import DaemonConfig, Services, cpu_seconds
from bench.stats import rate, summarize
from memoryd.stores.keys import KeySpace
from memoryd_client import Client, ids

SEED = 20261124
DEFAULT_TTL_S = 7 * 86400
CEILING_PIPELINE_COMMANDS = 1000
CEILING_COMMANDS_PER_RECORD = 5


_Items = list[tuple[str, workload.Rec]]
Address = tuple[str, int]  # a redis-server's TCP (host, port)


@dataclass(frozen=True, slots=True)
class Params:
    """How much each scenario does."""

    name: str
    latency_iterations: int
    latency_warmup: int
    history: int
    speeches: int
    ingest_records: int
    ingest_batches: tuple[int, ...] = (100, 1000)
    session_parallel: tuple[int, ...] = (1, 8, 32, 128)
    long_history: int = 1000
    long_parallel: int = 32
    # scale: stored records at each level (100 per agent), newest-5 reads per level
    scale_levels: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    scale_reads: int = 5000
    # outage: sequential adds with Redis up and down, records written as a backlog while down
    outage_adds: int = 2000
    outage_backlog: int = 50_000


SIZES: dict[str, Params] = {
    "full": Params("full", 2000, 200, 100, 48, 50_000),
    "quick": Params(
        "quick", 100, 10, 50, 24, 2_000, session_parallel=(1, 4), long_history=100,
        long_parallel=4, scale_levels=(1_000, 10_000), scale_reads=1000, outage_adds=200,
        outage_backlog=5_000,
    ),
    "tiny": Params(
        "tiny", 4, 1, 10, 12, 1_000, session_parallel=(1, 2), long_history=20, long_parallel=2,
        scale_levels=(200, 1_000), scale_reads=50, outage_adds=20, outage_backlog=500,
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class BackendSpec:
    name: str
    kind: Literal["files", "direct", "memoryd"]
    is_async: bool = False
    daemon: DaemonConfig | None = None


DAEMONS: tuple[DaemonConfig, ...] = (
    DaemonConfig("redis", "always"),
    DaemonConfig("redis", "everysec"),
    DaemonConfig("local", "always"),
    DaemonConfig("local", "everysec"),
)


def memoryd_specs() -> list[BackendSpec]:
    specs = []
    for config in DAEMONS:
        name = f"memoryd-{config.label}"
        specs.append(BackendSpec(name, "memoryd", False, config))
        specs.append(BackendSpec(f"{name}-async", "memoryd", True, config))
    return specs


LATENCY_BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec("legacy-files", "files"),
    BackendSpec("direct-redis", "direct"),
    BackendSpec("direct-redis-async", "direct", True),
    *memoryd_specs(),
)


@dataclass(slots=True)
class Context:
    """What a scenario gets: the services, a scratch directory, the sizes."""

    services: Services
    workdir: Path
    params: Params
    log: Callable[[str], None]


# Opening backends ----------------------------------------------------------------------------


@contextlib.contextmanager
def open_backend(spec: BackendSpec, ctx: Context) -> Iterator[Backend]:
    backend: Backend
    if spec.kind == "files":
        backend = FileStore(ctx.workdir / "files" / spec.name)
    elif spec.kind == "direct":
        backend = DirectRedis(ctx.services.redis("direct").tcp_url)
    else:
        assert spec.daemon is not None
        backend = Memoryd(spec.name, ctx.services.daemon(spec.daemon).socket_path)
    try:
        yield backend
    finally:
        backend.close()


@contextlib.asynccontextmanager
async def open_async_backend(spec: BackendSpec, ctx: Context) -> AsyncIterator[AsyncBackend]:
    backend: AsyncBackend
    if spec.kind == "direct":
        backend = AsyncDirectRedis(ctx.services.redis("direct").tcp_url)
    elif spec.kind == "memoryd":
        assert spec.daemon is not None
        backend = AsyncMemoryd(spec.name, ctx.services.daemon(spec.daemon).socket_path)
    else:
        raise ValueError(f"{spec.name} has no asyncio flavour")
    try:
        yield backend
    finally:
        await backend.close()


# Latency -------------------------------------------------------------------------------------


def _returned(result: object) -> int:
    return len(result) if isinstance(result, list) else 1


def _setup_batches(setup: list[workload.Op]) -> tuple[list[workload.Op], list[_Items]]:
    """The clears, and the prefill appends as ``add_many`` batches (one per stream)."""
    clears: list[workload.Op] = [op for op in setup if not isinstance(op, workload.Append)]
    batches: dict[str, _Items] = {}
    for op in setup:
        if isinstance(op, workload.Append):
            batches.setdefault(op.stream, []).append((op.stream, op.record))
    return clears, list(batches.values())


def _latency_sync(backend: Backend, plan: workload.LatencyPlan, warmup: int) -> dict[str, Any]:
    clears, batches = _setup_batches(plan.setup)
    for op in clears:
        execute(backend, op)
    for batch in batches:
        backend.add_many(batch)
    samples: dict[str, list[int]] = {name: [] for name in workload.LATENCY_OPS}
    returned: dict[str, int] = {}
    clock = time.perf_counter_ns
    for i, ops in enumerate(plan.iterations):
        for op in ops:
            start = clock()
            result = execute(backend, op)
            elapsed = clock() - start
            if i >= warmup:
                samples[op.name].append(elapsed)
                returned[op.name] = _returned(result)
    return {"ops": {n: summarize(s) for n, s in samples.items()}, "returned": returned}


async def _latency_async(
    backend: AsyncBackend, plan: workload.LatencyPlan, warmup: int
) -> dict[str, Any]:
    clears, batches = _setup_batches(plan.setup)
    for op in clears:
        await aexecute(backend, op)
    for batch in batches:
        await backend.add_many(batch)
    samples: dict[str, list[int]] = {name: [] for name in workload.LATENCY_OPS}
    returned: dict[str, int] = {}
    clock = time.perf_counter_ns
    for i, ops in enumerate(plan.iterations):
        for op in ops:
            start = clock()
            result = await aexecute(backend, op)
            elapsed = clock() - start
            if i >= warmup:
                samples[op.name].append(elapsed)
                returned[op.name] = _returned(result)
    return {"ops": {n: summarize(s) for n, s in samples.items()}, "returned": returned}


async def _latency_async_run(
    spec: BackendSpec, ctx: Context, plan: workload.LatencyPlan
) -> dict[str, Any]:
    async with open_async_backend(spec, ctx) as backend:
        return await _latency_async(backend, plan, ctx.params.latency_warmup)


def run_latency(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    results: dict[str, Any] = {}
    for spec in LATENCY_BACKENDS:
        ctx.log(f"latency: {spec.name}")
        plan = workload.latency_plan(
            SEED,
            f"lat-{spec.name}",
            p.latency_iterations + p.latency_warmup,
            p.history,
            p.speeches,
        )
        started = time.perf_counter()
        if spec.is_async:
            result = asyncio.run(_latency_async_run(spec, ctx, plan))
        else:
            with open_backend(spec, ctx) as backend:
                result = _latency_sync(backend, plan, p.latency_warmup)
        result["seconds"] = round(time.perf_counter() - started, 2)
        result["daemon"] = spec.daemon.label if spec.daemon else None
        result["async"] = spec.is_async
        results[spec.name] = result
    records = [op.record for op in _first_ops(plan) if isinstance(op, workload.Append)]
    return {
        "params": {
            "iterations": p.latency_iterations,
            "warmup": p.latency_warmup,
            "history": p.history,
            "speeches": p.speeches,
            "ops": {
                "add": "personal record, type/size mix of tableround.md section 6",
                "newest": "newest 5 personal records",
                "by_type": "newest 10 'discussion' records",
                "context": "newest 8 meeting speeches not by the caller",
                "search": f"substring {workload.SEARCH_QUERY!r}, limit 10",
            },
            "added_records": workload.size_summary(records),
        },
        "backends": results,
    }


def _first_ops(plan: workload.LatencyPlan) -> list[workload.Op]:
    return [ops[0] for ops in plan.iterations]


# Ingest --------------------------------------------------------------------------------------


def _memoryd_record(agent: str, record: workload.Rec, now_s: float) -> dict[str, Any]:
    """A record as memoryd stores it (memoryd.records.Record), with its id."""
    return {
        "id": ids.new_id(now_s),
        "agent_id": agent,
        "type": record.type,
        "content": record.content,
        "author": record.author,
        "importance": 0.5,
        "tags": [],
        "metadata": {},
        "created_at": now_s,
        "expires_at": now_s + DEFAULT_TTL_S,
    }


def _ceiling_commands(
    keys: KeySpace, agent: str, record: workload.Rec, packb: Callable[[Any], bytes]
) -> list[tuple[str | bytes, ...]]:
    """One record as memoryd lays it out: HASH, list ZSET, type ZSET, types and stats HASHes."""
    now_s = time.time()
    stored = _memoryd_record(agent, record, now_s)
    record_id, score = stored["id"], repr(now_s)
    k = keys.agent(agent)
    return [
        ("HSET", k.memory(record_id), "type", record.type, "data", packb(stored)),
        ("ZADD", k.list, score, record_id),
        ("ZADD", k.type(record.type), score, record_id),
        ("HINCRBY", k.types, record.type, "1"),
        ("HSET", k.stats, "newest", score, "last_write", score),
    ]


def _raw_ceiling(address: Address, items: Sequence[tuple[str, workload.Rec]]) -> None:
    """hiredis packs the commands, one sendall per pipeline, hiredis parses the replies."""
    keys = KeySpace()
    packb = msgpack.Packer(use_bin_type=True).pack
    pack: Callable[[Any], bytes] = hiredis.pack_command
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as redis-py does
    reader = hiredis.Reader()
    try:
        per_pipeline = CEILING_PIPELINE_COMMANDS // CEILING_COMMANDS_PER_RECORD
        for first in range(0, len(items), per_pipeline):
            commands: list[bytes] = []
            for agent, record in items[first : first + per_pipeline]:
                commands += map(pack, _ceiling_commands(keys, agent, record, packb))
            sock.sendall(b"".join(commands))
            pending = len(commands)
            while pending:
                reply = reader.gets()
                if reply is False:
                    reader.feed(sock.recv(1 << 20))
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    raise RuntimeError(f"ceiling: {reply}")
                pending -= 1
    finally:
        sock.close()


def _redispy_ceiling(address: Address, items: Sequence[tuple[str, workload.Rec]]) -> None:
    """The same commands through redis-py's non-transactional pipeline."""
    keys = KeySpace()
    packb = msgpack.Packer(use_bin_type=True).pack
    per_pipeline = CEILING_PIPELINE_COMMANDS // CEILING_COMMANDS_PER_RECORD
    host, port = address
    with redis.Redis(host=host, port=port) as conn:
        for first in range(0, len(items), per_pipeline):
            pipe = conn.pipeline(transaction=False)
            for agent, record in items[first : first + per_pipeline]:
                for command in _ceiling_commands(keys, agent, record, packb):
                    pipe.execute_command(*command)
            pipe.execute()


def run_ceiling(
    how: Literal["raw", "redis-py"],
    address: Address,
    items: Sequence[tuple[str, workload.Rec]],
    redis_pid: int | None,
) -> dict[str, Any]:
    """One process writing ``items`` in memoryd's key layout with pipelines of 1000 commands,
    over TCP to ``address`` (host, port)."""
    write = _raw_ceiling if how == "raw" else _redispy_ceiling
    redis_cpu = cpu_seconds(redis_pid)
    client_cpu = time.process_time()
    start = time.perf_counter_ns()
    write(address, items)
    elapsed = time.perf_counter_ns() - start
    return {
        "how": how,
        "records": len(items),
        "seconds": round(elapsed / 1e9, 4),
        "records_per_s": rate(len(items), elapsed),
        "client_cpu_s": round(time.process_time() - client_cpu, 3),
        "redis_cpu_s": round(cpu_seconds(redis_pid) - redis_cpu, 3),
    }


def barrier(socket_path: Path, agent: str) -> None:
    """Returns once every write before it is in the store (the flusher applies in order)."""
    with Client(socket_path) as client:
        client.add(agent, "barrier", {"barrier": True}, durability="store", timeout_s=120)


def _ingest_sync(
    backend: Memoryd, items: Sequence[tuple[str, workload.Rec]], batch: int
) -> tuple[int, int]:
    start = time.perf_counter_ns()
    for first in range(0, len(items), batch):
        backend.add_many(items[first : first + batch])
    return start, time.perf_counter_ns()


async def _ingest_async(
    socket_path: Path, name: str, items: Sequence[tuple[str, workload.Rec]], batch: int
) -> tuple[int, int]:
    backend = AsyncMemoryd(name, socket_path)
    try:
        await backend.client.connect()
        start = time.perf_counter_ns()
        for first in range(0, len(items), batch):
            await backend.add_many(items[first : first + batch])
        return start, time.perf_counter_ns()
    finally:
        await backend.close()


def _ingest_memoryd(
    spec: BackendSpec, ctx: Context, items: Sequence[tuple[str, workload.Rec]], batch: int
) -> dict[str, Any]:
    assert spec.daemon is not None
    daemon = ctx.services.daemon(spec.daemon)
    daemon_pid = ctx.services.pid(daemon)
    redis_pid = None
    if spec.daemon.store == "redis":
        redis_pid = ctx.services.pid(ctx.services.redis(f"memoryd-{spec.daemon.label}"))
    daemon_cpu, redis_cpu = cpu_seconds(daemon_pid), cpu_seconds(redis_pid)
    client_cpu = time.process_time()
    if spec.is_async:
        start, acked = asyncio.run(_ingest_async(daemon.socket_path, spec.name, items, batch))
    else:
        with contextlib.closing(Memoryd(spec.name, daemon.socket_path)) as backend:
            backend.client.connect()
            start, acked = _ingest_sync(backend, items, batch)
    client_cpu = time.process_time() - client_cpu
    barrier(daemon.socket_path, f"{items[0][0]}.barrier")
    stored = time.perf_counter_ns()
    return {
        "records": len(items),
        "batch": batch,
        "daemon": spec.daemon.label,
        "async": spec.is_async,
        "acked_per_s": rate(len(items), acked - start),
        "stored_per_s": rate(len(items), stored - start),
        "seconds_to_store": round((stored - start) / 1e9, 4),
        "client_cpu_s": round(client_cpu, 3),
        "daemon_cpu_s": round(cpu_seconds(daemon_pid) - daemon_cpu, 3),
        "redis_cpu_s": round(cpu_seconds(redis_pid) - redis_cpu, 3),
    }


@functools.cache
def _ingest_base(count: int) -> list[tuple[str, workload.Rec]]:
    # At most 500 records per agent: below max_memories, so nothing is trimmed.
    agents = max(1, math.ceil(count / 500))
    return list(workload.ingest_records(SEED, "", count, agents))


def _ingest_items(prefix: str, count: int) -> list[tuple[str, workload.Rec]]:
    """The same records for every run, under agent ids of the run's own."""
    return [(prefix + agent, record) for agent, record in _ingest_base(count)]


def run_ingest(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    server = ctx.services.redis("direct")
    redis_pid = ctx.services.pid(server)
    ceilings = {}
    for how in ("raw", "redis-py"):
        ctx.log(f"ingest: ceiling ({how})")
        items = _ingest_items(f"ceil-{how}", p.ingest_records)
        ceilings[how] = run_ceiling(how, server.tcp_address, items, redis_pid)
    ceiling = ceilings["raw"]
    runs: dict[str, Any] = {}
    for spec in memoryd_specs():
        for batch in p.ingest_batches:
            ctx.log(f"ingest: {spec.name} batch {batch}")
            items = _ingest_items(f"ing-{spec.name}-b{batch}", p.ingest_records)
            result = _ingest_memoryd(spec, ctx, items, batch)
            ceiling_rate = ceiling["records_per_s"]
            result["stored_vs_ceiling"] = round(result["stored_per_s"] / ceiling_rate, 3)
            runs[f"{spec.name} b{batch}"] = {"backend": spec.name, **result}
    return {
        "params": {
            "records": p.ingest_records,
            "batches": list(p.ingest_batches),
            "ceiling": (
                "one process, memoryd's key layout: HSET record (type, data) + ZADD list + ZADD"
                " type + HINCRBY types + HSET stats per record, non-transactional pipelines of"
                f" {CEILING_PIPELINE_COMMANDS} commands, packed and parsed by hiredis on a raw"
                " TCP socket to 127.0.0.1 (the same through redis-py's pipeline:"
                " ceiling_redis_py)"
            ),
        },
        "ceiling": ceiling,
        "ceiling_redis_py": ceilings["redis-py"],
        "runs": runs,
    }


# Sessions ------------------------------------------------------------------------------------


def run_sessions(ctx: Context) -> dict[str, Any]:
    """Whole meetings in parallel processes, per backend: short and long histories."""
    targets: list[sessions.Target] = [
        ("files", "legacy-files", str(ctx.workdir / "sessions-files")),
        # A Redis of its own: the original's clears SCAN the whole keyspace, and the
        # other scenarios' keys are not the meetings' to pay for.
        ("direct", "direct-redis", ctx.services.redis("direct-sessions").tcp_url),
    ]
    for config in sessions.SESSION_DAEMONS:
        name = f"memoryd-{config.label}"
        targets.append(("memoryd", name, str(ctx.services.daemon(config).socket_path)))
    params = ctx.params
    backends: dict[str, list[dict[str, Any]]] = {}
    for target in targets:
        name = target[1]
        runs = backends.setdefault(name, [])
        for parallel in params.session_parallel:
            ctx.log(f"sessions: {name}, {parallel} in parallel")
            runs.append(sessions.run_parallel(target, parallel, 0, SEED, name))
        if params.long_history:
            ctx.log(f"sessions: {name}, {params.long_parallel} with {params.long_history} records")
            runs.append(
                sessions.run_parallel(
                    target, params.long_parallel, params.long_history, SEED, f"{name}-long"
                )
            )
    return {"params": dataclasses.asdict(params), "backends": backends}
