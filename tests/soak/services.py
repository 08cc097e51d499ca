"""The soak's own redis-server and memoryd daemon, and their restarts.

Redis runs on a Unix socket in a temporary directory (``tests.harness``: never
the machine's Redis on 6379) with ``--appendonly yes --appendfsync always``, so
a restart keeps everything it acknowledged.  The daemon runs with the plan's
small caps and TTLs in its environment and a config file that SIGHUP re-reads.
Every daemon process is a *lifetime*, from READY to its end: the leak fits are
made per lifetime.  A process that exits without being told to (a crash) is
noted and restarted, so that a long run goes on and reports everything.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tests.harness import Daemon, RedisServer
from tests.soak.plan import Plan

REDIS_ARGS = ("--appendonly", "yes", "--appendfsync", "always")
DAEMON_READY_TIMEOUT_S = 60.0


@dataclass
class Lifetime:
    pid: int
    ready: float  # time.monotonic() of READY=1


class Services:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.redis = RedisServer()
        self.daemon = Daemon(env_overrides=plan.daemon.environment(self.redis.url))
        self.config_path = self.daemon.directory / "soak.toml"
        self.config_variant = 0
        # Held while a process is being replaced, so nobody takes the gap for a crash.
        self.lock = threading.RLock()
        self.lifetimes: list[Lifetime] = []
        self.crashes: list[str] = []
        self.stopping = False

    @property
    def socket_path(self) -> str:
        return str(self.daemon.socket_path)

    @property
    def redis_socket_path(self) -> str:
        return str(self.redis.socket_path)

    def start(self) -> None:
        self.redis.start(*REDIS_ARGS)
        self.write_config(0)
        self.start_daemon()

    def write_config(self, variant: int) -> None:
        self.config_variant = variant
        staging = self.config_path.with_suffix(".tmp")
        staging.write_text(self.plan.daemon.config_file(variant))
        staging.replace(self.config_path)

    def start_daemon(self) -> None:
        with self.lock:
            self.daemon.start("--config", str(self.config_path), wait=False)
            self.daemon.wait_ready(DAEMON_READY_TIMEOUT_S)
            assert self.daemon.process is not None
            self.lifetimes.append(Lifetime(self.daemon.process.pid, time.monotonic()))

    def daemon_pid(self) -> int | None:
        process = self.daemon.process
        return process.pid if process is not None and process.poll() is None else None

    def redis_pid(self) -> int | None:
        process = self.redis.process
        return process.pid if process is not None and process.poll() is None else None

    def exited_unasked(self) -> list[str]:
        """Processes that exited on their own since the last look: which, and how."""
        exited = []
        with self.lock:
            if self.stopping:
                return []
            daemon, redis = self.daemon.process, self.redis.process
            if daemon is not None and daemon.poll() is not None:
                exited.append(f"the daemon (pid {daemon.pid}) exited with {daemon.returncode}")
                self.daemon.process = None
            if redis is not None and redis.poll() is not None:
                exited.append(f"redis-server (pid {redis.pid}) exited with {redis.returncode}")
                self.redis.process = None
        self.crashes += exited
        return exited

    def restart_missing(self) -> None:
        """Start again whatever ``exited_unasked`` found gone."""
        with self.lock:
            if self.redis.process is None:
                self.redis.kill()  # removes a stale socket file
                self.redis.start(*REDIS_ARGS)
            if self.daemon.process is None:
                self.start_daemon()

    def stop_daemon(self) -> int | None:
        """SIGTERM, as systemd stops it; its exit code (None if it was not running)."""
        with self.lock:
            self.stopping = True
            if self.daemon.process is None:
                return None
            return self.daemon.stop(timeout_s=60)

    def cleanup(self) -> None:
        with self.lock:
            self.stopping = True
            self.daemon.cleanup()
            self.redis.cleanup()
