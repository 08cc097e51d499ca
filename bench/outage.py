"""The outage scenario: writes while Redis is down, and the drain once it is back.

For fsync ``always`` and ``everysec``, each on a daemon (Redis store) and redis-server of its own,
one after the other:

1. up: ``outage_adds`` sequential ``add`` calls, Redis up; p50/p99/p99.9.
2. down: the redis-server is killed (SIGKILL); once the daemon's status says ``degraded``, the
   same number of sequential adds (acknowledged from the WAL), then a backlog of
   ``outage_backlog`` records through ``add_many`` batches of 1000.
3. back: the redis-server is started again on the same port, EMPTY (no persistence).  The
   daemon's status is polled every ``POLL_S``: when its state leaves ``degraded`` (its probe
   backs off, with jitter, up to 5 s), when the first backlog record is applied, when the backlog
   is empty and when it is ``healthy`` again.  Drain rate = backlog at the restart / (empty −
   first apply), and the status field ``drain_rate_per_s`` (records applied in its last 10 s / 10).

The restarted Redis has lost the records applied before the kill, so the daemon raises its
``store_data_lost`` alert (its marker check): expected here.  Correctness, counted and reported,
never asserted: the records written while Redis was down are read back with ``recent``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import workload
from bench.backends.memoryd import new_record
from bench.scenarios import SEED, Context, barrier
from bench.services import DaemonConfig, private_redis_daemon, process_pid, rss_bytes
from bench.stats import rate, summarize
from memoryd_client import Client
from tests.harness import Daemon, RedisServer

CONFIGS: tuple[DaemonConfig, ...] = (
    DaemonConfig("redis", "always"),
    DaemonConfig("redis", "everysec"),
)
WARMUP_ADDS = 10
RECORDS_PER_AGENT = 500  # below max_memories: nothing written is trimmed
BATCH = 1000
POLL_S = 0.02
DEGRADED_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 600.0
CHECK_BACKLOG_AGENTS = 10


@dataclass(slots=True)
class _Written:
    """Record ids by agent, for the read-back."""

    ids: dict[str, list[str]] = field(default_factory=dict)

    def add(self, agent: str, record_id: str) -> None:
        self.ids.setdefault(agent, []).append(record_id)


def _agents(prefix: str, count: int) -> list[str]:
    count = max(1, math.ceil(count / RECORDS_PER_AGENT))
    return [workload.agent_name(prefix, i) for i in range(count)]


def _sequential_adds(
    client: Client, prefix: str, count: int, rng: random.Random, written: _Written
) -> dict[str, Any]:
    """``WARMUP_ADDS`` + ``count`` adds in turn over a few agents; the last ``count`` timed."""
    agents = _agents(prefix, WARMUP_ADDS + count)
    samples: list[int] = []
    clock = time.perf_counter_ns
    for i in range(WARMUP_ADDS + count):
        agent = agents[i % len(agents)]
        record = workload.personal_record(rng, agent)
        start = clock()
        result = client.add(agent, record.type, record.content, author=record.author)
        elapsed = clock() - start
        if i >= WARMUP_ADDS:
            samples.append(elapsed)
        written.add(agent, result["id"])
    return dict(summarize(samples))


def _write_backlog(client: Client, prefix: str, count: int, written: _Written) -> dict[str, Any]:
    """``count`` records through ``add_many`` batches while Redis is down."""
    agents = math.ceil(count / RECORDS_PER_AGENT)
    items = list(workload.ingest_records(SEED + 1, prefix, count, agents))
    started = time.perf_counter_ns()
    for first in range(0, len(items), BATCH):
        batch = items[first : first + BATCH]
        ids = client.add_many([new_record(agent, record) for agent, record in batch])
        for (agent, _), record_id in zip(batch, ids, strict=True):
            written.add(agent, record_id)
    elapsed = time.perf_counter_ns() - started
    return {"records": count, "batch": BATCH, "acked_per_s": rate(count, elapsed)}


def _is_degraded(status: dict[str, Any]) -> bool:
    return bool(status["state"] == "degraded")


def _wait_for(
    watcher: Client, predicate: Callable[[dict[str, Any]], bool], timeout_s: float
) -> float | None:
    """Seconds until the daemon's status satisfies ``predicate`` (None: not within the time)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate(watcher.status()):
            return round(time.monotonic() - start, 3)
        time.sleep(POLL_S)
    return None


@dataclass(slots=True)
class _Drain:
    """What the status polls saw after the restart (seconds since Redis listened again)."""

    backlog_at_restart: int
    applied_before: int
    noticed_s: float | None = None
    last_idle_s: float = 0.0
    first_apply_s: float | None = None
    drained_s: float | None = None
    healthy_s: float | None = None
    max_status_rate: float = 0.0
    status_rate_at_drained: float | None = None
    states: list[str] = field(default_factory=list)

    def see(self, at_s: float, status: dict[str, Any]) -> None:
        wal, state = status["wal"], status["state"]
        if not self.states or self.states[-1] != state:
            self.states.append(state)
        if self.noticed_s is None and state != "degraded":
            self.noticed_s = at_s
        if wal["applied_records"] <= self.applied_before:
            self.last_idle_s = at_s
        elif self.first_apply_s is None:
            self.first_apply_s = at_s
        self.max_status_rate = max(self.max_status_rate, float(wal["drain_rate_per_s"]))
        if self.drained_s is None and wal["backlog_records"] == 0:
            self.drained_s = at_s
            self.status_rate_at_drained = float(wal["drain_rate_per_s"])
        if self.healthy_s is None and state == "healthy":
            self.healthy_s = at_s

    @property
    def done(self) -> bool:
        return self.drained_s is not None and self.healthy_s is not None

    def result(self) -> dict[str, Any]:
        # The first apply happened after the last poll that saw none: a window that can be
        # one poll too long, never too short.
        window_s = None if self.drained_s is None else self.drained_s - self.last_idle_s
        return {
            "backlog_at_restart": self.backlog_at_restart,
            "noticed_s": self.noticed_s,
            "first_apply_s": self.first_apply_s,
            "drained_s": self.drained_s,
            "healthy_s": self.healthy_s,
            "drain_window_s": None if window_s is None else round(window_s, 3),
            "drain_records_per_s": rate(self.backlog_at_restart, int((window_s or 0) * 1e9)),
            "status_drain_rate_per_s_max": self.max_status_rate,
            "status_drain_rate_per_s_at_drained": self.status_rate_at_drained,
            "states": self.states,
        }


def _watch_drain(watcher: Client, status: dict[str, Any], up_at: float) -> _Drain:
    drain = _Drain(status["wal"]["backlog_records"], status["wal"]["applied_records"])
    while not drain.done and time.monotonic() - up_at < DRAIN_TIMEOUT_S:
        polled = watcher.status()
        drain.see(round(time.monotonic() - up_at, 3), polled)
        time.sleep(POLL_S)
    return drain


def _read_back(client: Client, written: _Written, agents: list[str]) -> dict[str, int]:
    """How many of the ids written to ``agents`` while Redis was down ``recent`` returns."""
    checked = found = degraded = 0
    for agent in agents:
        ids = written.ids[agent]
        answer = client.recent(agent, limit=1000)
        stored = {record["id"] for record in answer}
        checked += len(ids)
        found += sum(record_id in stored for record_id in ids)
        degraded += answer.degraded
    return {"checked": checked, "found": found, "degraded_answers": degraded}


def _correctness(client: Client, up: _Written, down: _Written, backlog: _Written) -> dict[str, Any]:
    rng = random.Random(SEED)
    sample = rng.sample(sorted(backlog.ids), min(CHECK_BACKLOG_AGENTS, len(backlog.ids)))
    before = sum(len(client.recent(agent, limit=1000)) for agent in up.ids)
    return {
        "sequential_adds_while_down": _read_back(client, down, sorted(down.ids)),
        "backlog_sample": _read_back(client, backlog, sample),
        "records_from_before_the_kill_readable": before,
    }


def _run_one(
    label: str, daemon: Daemon, server: RedisServer, adds: int, backlog: int
) -> dict[str, Any]:
    prefix = f"out-{label}"
    rng = random.Random(SEED)
    up, down, buffered = _Written(), _Written(), _Written()
    daemon_pid = process_pid(daemon)
    with (
        Client(daemon.socket_path, timeout_s=60) as client,
        Client(daemon.socket_path, timeout_s=10) as watcher,
    ):
        up_latency = _sequential_adds(client, f"{prefix}.up", adds, rng, up)
        barrier(daemon.socket_path, f"{prefix}.barrier")
        server.kill()
        degraded_after_s = _wait_for(watcher, _is_degraded, DEGRADED_TIMEOUT_S)
        down_latency = _sequential_adds(client, f"{prefix}.down", adds, rng, down)
        backlog_write = _write_backlog(client, f"{prefix}.backlog", backlog, buffered)
        status = watcher.status()
        rss_down = rss_bytes(daemon_pid)
        server.start()
        drain = _watch_drain(watcher, status, time.monotonic())
        correctness = _correctness(client, up, down, buffered)
        final = watcher.status()
    return {
        "add_up": up_latency,
        "add_down": down_latency,
        "degraded_after_kill_s": degraded_after_s,
        "backlog_write": backlog_write,
        "state_before_restart": status["state"],
        "daemon_rss_with_backlog_bytes": rss_down,
        "daemon_rss_after_drain_bytes": rss_bytes(daemon_pid),
        "drain": drain.result(),
        "correctness": correctness,
        "alerts": sorted({alert.get("kind", "?") for alert in final.get("alerts", [])}),
    }


def run_outage(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    runs: dict[str, Any] = {}
    for config in CONFIGS:
        ctx.log(f"outage: memoryd-{config.label}")
        with private_redis_daemon(config) as (daemon, server):
            runs[f"memoryd-{config.label}"] = _run_one(
                config.label, daemon, server, p.outage_adds, p.outage_backlog
            )
    return {"params": _params(p.outage_adds, p.outage_backlog), "runs": runs}


def _params(adds: int, backlog: int) -> dict[str, Any]:
    return {
        "adds": adds,
        "warmup_adds": WARMUP_ADDS,
        "backlog": backlog,
        "batch": BATCH,
        "poll_s": POLL_S,
        "transport": "client to memoryd: Unix socket; memoryd to Redis: TCP 127.0.0.1",
        "method": (
            "per fsync policy, a daemon (Redis store) and its own redis-server: sequential adds"
            " with Redis up; SIGKILL of redis-server; once status says degraded, the same adds"
            f" and a backlog of {backlog} records (add_many); redis-server started again on the"
            f" same port; status polled every {POLL_S} s for the state and the WAL backlog."
            " The restarted Redis is empty (no persistence): the records applied before the kill"
            " are gone and the daemon raises its store_data_lost alert (marker check); expected"
            " here. Correctness: the records written while Redis was down, read back with"
            " recent after the drain"
        ),
    }
