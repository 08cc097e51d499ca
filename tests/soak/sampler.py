"""One sample every few seconds: the daemon's process, its status, Redis, and the agents' view.

From ``/proc/<pid>``: resident memory (``VmRSS``), open file descriptors
(entries of ``fd/``) and CPU seconds (``stat``).  From the daemon's ``status``:
state, WAL bytes and segments, backlog, clients, read-cache records.  From
Redis: keys and used memory (the keyspace must stay bounded too).  From the
``Observer``: each method's p50/p99 latency and the errors of the interval.
The same loop notices a daemon or redis-server that exited on its own.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import redis

from memoryd_client import Client, errors
from tests.soak.observed import Observer
from tests.soak.plan import Plan
from tests.soak.services import Services
from tests.soak.timeline import Timeline

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REPORT_EVERY_S = 60.0


def process_gauges(pid: int) -> dict[str, Any]:
    """RSS bytes, open fds and CPU seconds of a live process; empty if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as stat:
            # The fields after the command name, which is in parentheses and may hold spaces.
            fields = stat.read().rsplit(")", 1)[1].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, StopIteration, IndexError, ValueError):
        return {}
    return {"rss_bytes": rss_kib * 1024, "fds": fds, "cpu_s": round(cpu_s, 2)}


def status_gauges(client: Client) -> dict[str, Any]:
    try:
        status = client.status()
    except errors.MemorydError:
        return {"state": None}
    wal = status["wal"]
    return {
        "state": status["state"],
        "wal_bytes": wal["bytes"],
        "wal_segments": wal["segments"],
        "backlog_records": wal["backlog_records"],
        "backlog_bytes": wal["backlog_bytes"],
        "clients": status["clients"],
        "cache_records": status.get("read_cache", {}).get("records"),
        "alerts": len(status.get("alerts", [])),
    }


def redis_gauges(conn: redis.Redis) -> dict[str, Any]:
    try:
        return {
            "redis_keys": conn.dbsize(),
            "redis_used_bytes": conn.info("memory")["used_memory"],
        }
    except redis.RedisError:
        return {}


class Sampler:
    def __init__(
        self, plan: Plan, services: Services, observer: Observer, timeline: Timeline
    ) -> None:
        self.plan = plan
        self.services = services
        self.observer = observer
        self.timeline = timeline
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with (
            Client(self.services.socket_path, timeout_s=2) as client,
            redis.Redis(
                unix_socket_path=self.services.redis_socket_path,
                socket_timeout=0.3,
                socket_connect_timeout=0.3,
            ) as conn,
        ):
            next_at = time.monotonic() + self.plan.sample_every_s
            next_report = time.monotonic() + REPORT_EVERY_S
            while not self.stop.wait(max(0.0, next_at - time.monotonic())):
                next_at += self.plan.sample_every_s
                self._watch_processes()
                self.samples.append(self.sample(client, conn))
                if time.monotonic() >= next_report:
                    next_report += REPORT_EVERY_S
                    print(self.report(self.samples[-1]), flush=True)

    def sample(self, client: Client, conn: redis.Redis) -> dict[str, Any]:
        sample: dict[str, Any] = {"t_s": self.timeline.offset_s(time.monotonic())}
        pid = self.services.daemon_pid()
        sample["pid"] = pid
        if pid is not None:
            sample.update(process_gauges(pid))
        sample.update(status_gauges(client))
        sample.update(redis_gauges(conn))
        sample.update(self.observer.take_interval())
        return sample

    def report(self, sample: dict[str, Any]) -> str:
        """One line for the operator watching a long run."""
        rss = sample.get("rss_bytes")
        rss_text = "?" if rss is None else f"{rss / (1 << 20):.1f}MiB"
        errors = self.observer.errors_in_windows.total(), self.observer.errors_outside.total()
        return (
            f"[{sample['t_s']:7.1f}s] {sample.get('state')}  rss {rss_text}  "
            f"fds {sample.get('fds')}  backlog {sample.get('backlog_records')}  "
            f"calls {self.observer.calls_total()}  errors in windows {errors[0]}, "
            f"outside {errors[1]}  problems {self.observer.problems.total()}"
        )

    def _watch_processes(self) -> None:
        exited = self.services.exited_unasked()
        if not exited:
            return
        window = self.timeline.open("crash")
        window.notes["what"] = "; ".join(exited)
        with contextlib.suppress(Exception):
            self.services.restart_missing()
        window.ended = window.healthy = time.monotonic()
