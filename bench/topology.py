"""The topology scenario: the sessions workload through memoryd on one standalone Redis and on a
Redis Cluster of three masters (a replica each), with one daemon and with three daemons sharing
the store (one per host, in production; meetings spread over them), all in one run.

Reported per topology and number of daemons: the sessions' aggregate ops/s and p50s, the daemons'
CPU seconds, and their read caches (hits, misses, whether they answer from memory: with several
writers on one store they read from the store instead).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from bench import sessions
from bench.scenarios import SEED, Context
from bench.services import (
    DaemonConfig,
    cpu_seconds,
    daemon_env,
    process_pid,
    start_daemon,
    start_redis,
)
from memoryd_client import Client
from tests.harness import ClusterSet, Daemon

CONFIG = DaemonConfig("redis", "everysec")
DAEMON_COUNTS = (1, 3)


@contextlib.contextmanager
def _stores() -> Iterator[dict[str, str]]:
    """Name -> redis_url of each topology, for the scenario's length."""
    standalone = start_redis()
    cluster = ClusterSet()
    try:
        cluster.start()
        yield {"standalone": standalone.tcp_url, "cluster": cluster.url}
    finally:
        cluster.cleanup()
        standalone.cleanup()


def _read_cache(daemon: Daemon) -> dict[str, Any]:
    with Client(daemon.socket_path, timeout_s=10) as client:
        cache = client.status()["read_cache"]
    return {key: cache.get(key) for key in ("hits", "misses", "from_memory", "writers")}


def _one_run(ctx: Context, store: str, url: str, daemons: int) -> dict[str, Any]:
    started = [start_daemon(daemon_env(CONFIG, url)) for _ in range(daemons)]
    try:
        targets = [
            ("memoryd", f"memoryd-{store}-{n}", str(daemon.socket_path))
            for n, daemon in enumerate(started)
        ]
        cpu_before = [cpu_seconds(process_pid(daemon)) for daemon in started]
        parallel = max(ctx.params.session_parallel)
        ctx.log(f"topology: {store}, {daemons} daemon(s), {parallel} sessions")
        run = sessions.run_parallel(targets, parallel, 0, SEED, f"topology-{store}-d{daemons}")
        run["store"] = store
        run["daemons"] = daemons
        run["daemon_cpu_s"] = round(
            sum(
                cpu_seconds(process_pid(d)) - before
                for d, before in zip(started, cpu_before, strict=True)
            ),
            3,
        )
        run["read_cache"] = [_read_cache(daemon) for daemon in started]
        return run
    finally:
        for daemon in started:
            daemon.cleanup()


def run_topology(ctx: Context) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with _stores() as urls:
        for store, url in urls.items():
            for daemons in DAEMON_COUNTS:
                runs.append(_one_run(ctx, store, url, daemons))
    return {"config": CONFIG.label, "runs": runs}
