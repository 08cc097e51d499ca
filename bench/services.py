"""The processes a benchmark run owns: redis-servers and memoryd daemons (tests.harness).

Nothing here touches the machine's own Redis.  At most one daemon runs at a time, so that the
configurations measured one after another do not share the two cores with an idle rival.

Every redis-server listens on a free loopback TCP port (and on a Unix socket the bench does not
use): the original system reached Redis with redis-py at host:port, so the direct-Redis
baselines, the ingest ceilings and the daemons' store (``MEMORYD_REDIS_URL`` is the server's
``tcp_url``, ``redis://127.0.0.1:<port>/0``) all reach Redis that same way.  Clients reach
memoryd over its Unix socket: that is the product.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import psutil

from tests.harness import REDIS_SERVER, Daemon, RedisServer

Store = Literal["redis", "local"]
Fsync = Literal["always", "everysec"]

PACKAGES = ("redis", "hiredis", "msgpack", "uvloop", "psutil", "memoryd", "memoryd-client",
            "matplotlib")  # fmt: skip


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    store: Store
    fsync: Fsync

    @property
    def label(self) -> str:
        return f"{self.store}-{self.fsync}"


class Services:
    """Starts what a scenario asks for, lazily, and keeps it until ``close``.

    A daemon, once started, stays up for the later scenarios (an idle daemon wakes once a second
    for its store probe); a daemon start costs seconds on a small machine.
    """

    def __init__(self) -> None:
        self._redis: dict[str, RedisServer] = {}
        self._daemons: dict[DaemonConfig, Daemon] = {}

    def redis(self, role: str) -> RedisServer:
        """A redis-server of this run: ``direct`` for the baselines, ``memoryd`` for the store."""
        server = self._redis.get(role)
        if server is None:
            server = start_redis()
            self._redis[role] = server
        return server

    def daemon(self, config: DaemonConfig) -> Daemon:
        """The daemon of ``config``, started if needed."""
        daemon = self._daemons.get(config)
        if daemon is not None:
            return daemon
        redis_url = None
        if config.store == "redis":
            # One Redis per daemon, so that their stores do not share a server thread.
            redis_url = self.redis(f"memoryd-{config.label}").tcp_url
        daemon = start_daemon(daemon_env(config, redis_url))
        self._daemons[config] = daemon
        return daemon

    def pid(self, process: Daemon | RedisServer) -> int | None:
        return process_pid(process)

    def close(self) -> None:
        for daemon in self._daemons.values():
            with contextlib.suppress(Exception):
                daemon.stop()
            daemon.cleanup()
        self._daemons.clear()
        for server in self._redis.values():
            server.cleanup()
        self._redis.clear()


def start_redis() -> RedisServer:
    """A redis-server on a free loopback TCP port (and its own Unix socket)."""
    server = RedisServer(tcp=True)
    try:
        return server.start()
    except BaseException:
        server.cleanup()
        raise


def daemon_env(config: DaemonConfig, redis_url: str | None, **extra: str) -> dict[str, str]:
    env = {
        "MEMORYD_WAL_FSYNC": config.fsync,
        "MEMORYD_BACKEND": config.store,
        "MEMORYD_LOG_LEVEL": "INFO",
        **extra,
    }
    if redis_url is not None:
        env["MEMORYD_REDIS_URL"] = redis_url
    return env


def start_daemon(env: dict[str, str]) -> Daemon:
    daemon = Daemon(env_overrides=env)
    try:
        return daemon.start()
    except BaseException:
        daemon.cleanup()
        raise


@contextlib.contextmanager
def private_redis_daemon(
    config: DaemonConfig, **extra_env: str
) -> Iterator[tuple[Daemon, RedisServer]]:
    """A daemon with the Redis store on a redis-server of its own, both gone afterwards.

    For the scenarios that fill, kill or restart the store (``scale``, ``outage``), so that
    nothing they do reaches the servers the other scenarios measure.
    """
    server = start_redis()
    try:
        daemon = start_daemon(daemon_env(config, server.tcp_url, **extra_env))
        try:
            yield daemon, server
        finally:
            with contextlib.suppress(Exception):
                daemon.stop()
            daemon.cleanup()
    finally:
        server.cleanup()


def process_pid(process: Daemon | RedisServer) -> int | None:
    return process.process.pid if process.process is not None else None


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size of a process (None when unknown)."""
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _redis_version() -> str:
    try:
        out = subprocess.run(
            [REDIS_SERVER, "--version"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(argv: list[str]) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        "command": shlex.join([sys.executable, "-m", "bench.run", *argv]),
        "cwd": os.getcwd(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_total_bytes": memory.total,
        "memory_available_bytes": memory.available,
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "redis_server": _redis_version(),
        "packages": {name: _version(name) for name in PACKAGES},
    }
