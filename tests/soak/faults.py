"""The faults, done to the real processes, each inside its window.

- ``redis_restart``: redis-server killed (SIGKILL) and started again after
  ``redis_down_s`` on the same socket, with its AOF: what it acknowledged is kept.
- ``redis_freeze``: SIGSTOP for ``freeze_s`` (longer than the daemon's
  ``redis_socket_timeout_s``), then SIGCONT.
- ``sighup``: the config file is rewritten (read cache size and flush batch
  switch between two values) and the daemon told SIGHUP; done when it has sent
  RELOADING=1 and then READY=1.
- ``daemon_kill``: SIGKILL of the daemon, started again at once; done at READY=1.
- ``connection_burst``: ``burst_rounds`` times, ``burst_connections`` sockets
  opened together, half of them send a ping and read the answer, all closed;
  then as many opened and closed at once without a word; the daemon's RSS
  before and a second after is noted (``rss_step_mib``).

After each, the runner waits until the daemon reports ``healthy`` (at most
``recovery_timeout_s``) before anything else: that moment closes the window
(plus the grace) and the next fault never starts before it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from memoryd_client import Client, errors, wire
from tests.soak import plan as kinds
from tests.soak.plan import Plan
from tests.soak.sampler import process_gauges
from tests.soak.services import REDIS_ARGS, Services
from tests.soak.timeline import FaultWindow, Timeline

NOTIFY_TIMEOUT_S = 30.0
BURST_CONNECT_TIMEOUT_S = 5.0
BURST_SETTLE_S = 1.0


class Faults:
    def __init__(self, plan: Plan, services: Services, timeline: Timeline) -> None:
        self.plan = plan
        self.services = services
        self.timeline = timeline
        self.failures: list[str] = []
        self.recovery_s: dict[str, list[float]] = {kind: [] for kind in kinds.FAULT_KINDS}
        self._actions: dict[str, Callable[[FaultWindow], None]] = {
            kinds.REDIS_RESTART: self._redis_restart,
            kinds.REDIS_FREEZE: self._redis_freeze,
            kinds.SIGHUP: self._sighup,
            kinds.DAEMON_KILL: self._daemon_kill,
            kinds.CONNECTION_BURST: self._connection_burst,
        }

    def run(self, kind: str) -> FaultWindow:
        """Do fault ``kind``, then wait for the daemon to be healthy again."""
        window = self.timeline.open(kind)
        try:
            self._actions[kind](window)
        except Exception as exc:
            self.failures.append(f"{kind} at {self.timeline.offset_s(window.started)}s: {exc!r}")
        window.ended = time.monotonic()
        window.healthy = self.wait_healthy(self.plan.recovery_timeout_s)
        if window.healthy is None:
            window.healthy = time.monotonic()
            self.failures.append(
                f"{kind} at {self.timeline.offset_s(window.started)}s: the daemon was not "
                f"healthy {self.plan.recovery_timeout_s:.0f}s after it"
            )
        else:
            self.recovery_s[kind].append(round(window.healthy - window.ended, 3))
        return window

    def wait_healthy(self, timeout_s: float) -> float | None:
        """When the daemon first answered ``healthy`` (monotonic), or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with Client(self.services.socket_path, timeout_s=2) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(errors.MemorydError):
                    if client.status()["state"] == "healthy":
                        return time.monotonic()
                time.sleep(0.1)
        return None

    # ------------------------------------------------------------- the faults

    def _redis_restart(self, window: FaultWindow) -> None:
        with self.services.lock:
            self.services.redis.kill()
            time.sleep(self.plan.redis_down_s)
            self.services.redis.start(*REDIS_ARGS)

    def _redis_freeze(self, window: FaultWindow) -> None:
        pid = self.services.redis_pid()
        if pid is None:
            raise RuntimeError("redis-server is not running")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(self.plan.freeze_s)
        finally:
            os.kill(pid, signal.SIGCONT)

    def _sighup(self, window: FaultWindow) -> None:
        notify = self.services.daemon.notify
        assert notify is not None
        seen = len(notify.poll())
        self.services.write_config(self.services.config_variant + 1)
        window.notes["config_variant"] = self.services.config_variant % 2
        self.services.daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + NOTIFY_TIMEOUT_S
        while time.monotonic() < deadline:
            lines = [line for message in notify.poll()[seen:] for line in message.splitlines()]
            if "RELOADING=1" in lines and "READY=1" in lines[lines.index("RELOADING=1") :]:
                return
            time.sleep(0.02)
        raise RuntimeError(f"no RELOADING=1 then READY=1 within {NOTIFY_TIMEOUT_S:.0f}s")

    def _daemon_kill(self, window: FaultWindow) -> None:
        with self.services.lock:
            pid = self.services.daemon_pid()
            window.notes["killed_pid"] = pid
            self.services.daemon.kill()
            self.services.start_daemon()
            window.notes["new_pid"] = self.services.daemon_pid()

    def _connection_burst(self, window: FaultWindow) -> None:
        counts: dict[str, float] = {"opened": 0, "answered": 0, "refused": 0, "failed": 0}
        rss_before = self._daemon_rss()
        for _ in range(self.plan.burst_rounds):
            _burst(self.services.socket_path, self.plan.burst_connections, True, counts)
            _burst(self.services.socket_path, self.plan.burst_connections, False, counts)
        time.sleep(BURST_SETTLE_S)  # the daemon has closed its side of every connection
        rss_after = self._daemon_rss()
        if rss_before is not None and rss_after is not None:
            counts["rss_step_mib"] = round((rss_after - rss_before) / (1 << 20), 1)
        window.notes.update(counts)

    def _daemon_rss(self) -> int | None:
        pid = self.services.daemon_pid()
        rss: int | None = process_gauges(pid).get("rss_bytes") if pid is not None else None
        return rss


def _burst(socket_path: str, connections: int, talk: bool, counts: dict[str, Any]) -> None:
    """Open ``connections`` sockets together; if ``talk``, ping on every other one; close all.

    A connect that finds the listen queue full (EAGAIN) is tried again, as the
    client library does, and counted in ``refused``.
    """
    socks: list[socket.socket] = []
    talking: list[socket.socket] = []
    packer = wire.make_packer()
    try:
        for n in range(connections):
            sock = _connect(socket_path, counts)
            if sock is None:
                continue
            socks.append(sock)
            counts["opened"] += 1
            if talk and n % 2 == 0:
                with contextlib.suppress(OSError):
                    sock.sendall(wire.pack_request(packer, n + 1, "ping", {}))
                    talking.append(sock)
        for sock in talking:
            with contextlib.suppress(OSError):
                if sock.recv(4096):
                    counts["answered"] += 1
    finally:
        for sock in socks:
            sock.close()


def _connect(socket_path: str, counts: dict[str, Any]) -> socket.socket | None:
    deadline = time.monotonic() + BURST_CONNECT_TIMEOUT_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(BURST_CONNECT_TIMEOUT_S)
        try:
            sock.connect(socket_path)
            return sock
        except BlockingIOError:
            sock.close()
            counts["refused"] += 1
            if time.monotonic() >= deadline:
                counts["failed"] += 1
                return None
            time.sleep(0.001)
        except OSError:
            sock.close()
            counts["failed"] += 1
            return None
