"""Helpers for the end-to-end suites: real daemons, real clients.

The fixtures built on them are in ``tests/conftest.py``.  conftest imports
this module before pytest could rewrite its asserts: PYTEST_DONT_REWRITE says
that this is intended.

One daemon per store kind serves a whole session (it starts in about half a
second); tests keep out of each other's way with unique agent ids
(``new_agent``).  Daemons with special settings (a small ``max_memories``)
are started the first time a test asks for them and then shared as well.
The Redis daemons share a Redis of their own (``daemons_redis``), never flushed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import redis

import memoryd_client
from tests import redis_view
from tests.harness import Daemon, RedisServer

STORE_KINDS = ("local", "redis")
# Short enough that the expiry tests see the sweep within a second.
SWEEP_INTERVAL_S = "0.5"
TRIM_MAX_MEMORIES = 5

T = TypeVar("T")


@dataclass
class Env:
    """A running daemon, the kind of store behind it and how to look inside that store."""

    kind: str
    daemon: Daemon
    redis_server: RedisServer | None = None
    _redis: redis.Redis | None = None

    @property
    def socket_path(self) -> Path:
        return self.daemon.socket_path

    @property
    def sqlite_path(self) -> Path:
        return self.daemon.data_dir / "store.sqlite3"

    def client(self, **kwargs: Any) -> memoryd_client.Client:
        return memoryd_client.Client(self.daemon.socket_path, **kwargs)

    # -- what the store holds, read directly --------------------------------

    def redis_conn(self) -> redis.Redis:
        """A new connection to the daemon's Redis (close it, e.g. with ``with``)."""
        assert self.redis_server is not None, "only the redis daemon has a Redis"
        return redis.Redis(unix_socket_path=str(self.redis_server.socket_path))

    @property
    def _conn(self) -> redis.Redis:
        if self._redis is None:
            self._redis = self.redis_conn()
        return self._redis

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        self.daemon.cleanup()

    def redis_keys(self, agent_id: str) -> set[str]:
        """Every key of ``agent_id`` in Redis, found with SCAN."""
        return {key.decode() for key in self._conn.scan_iter(match=f"*{{{agent_id}}}*", count=1000)}

    def record_keys(self, agent_id: str) -> set[str]:
        """The keys of ``agent_id`` that hold its records (all but its applied numbers,
        which outlive them for APPLIED_KEPT_S: memoryd.stores.base.Sequenced)."""
        return self.redis_keys(agent_id) - {f"agent:{{{agent_id}}}:applied"}

    def applied_ttl_s(self, agent_id: str) -> float:
        """How long the agent's applied numbers are kept still; negative: no such key."""
        return float(self._conn.pttl(f"agent:{{{agent_id}}}:applied")) / 1000

    def sqlite_rows(self, agent_id: str) -> list[tuple[Any, ...]]:
        """The local store's rows of ``agent_id``, read through a separate connection."""
        if not self.sqlite_path.exists():
            return []
        conn = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=5)
        try:
            return list(
                conn.execute(
                    "SELECT id, type, created_at, expires_at FROM records WHERE agent_id = ?",
                    (agent_id,),
                )
            )
        finally:
            conn.close()

    def stored_ids(self, agent_id: str) -> set[str]:
        """The ids the store itself (not the daemon's overlay) holds for ``agent_id``."""
        if self.kind == "redis":
            return set(redis_view.members(self._conn, f"agent:{{{agent_id}}}:memories:list"))
        return {row[0] for row in self.sqlite_rows(agent_id)}

    def store_has_traces(self, marker: str) -> bool:
        """Whether anything in the store mentions ``marker`` (keys or agent ids)."""
        if self.kind == "redis":
            return any(True for _ in self._conn.scan_iter(match=f"*{marker}*", count=1000))
        if not self.sqlite_path.exists():
            return False
        conn = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute(
                "SELECT COUNT(*) FROM records WHERE instr(agent_id, ?) > 0", (marker,)
            ).fetchone()
        finally:
            conn.close()
        return bool(row[0])


def new_agent(tag: str = "agent") -> str:
    """An agent id no other test uses."""
    return f"{tag}-{uuid.uuid4().hex[:16]}"


def eventually(
    probe: Callable[[], T],
    accept: Callable[[T], bool] = bool,
    *,
    timeout_s: float = 5.0,
    what: str = "the condition",
) -> T:
    """Poll ``probe`` until ``accept`` takes its value; that value, or AssertionError."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: {value!r}")
        time.sleep(0.02)


def start_env(kind: str, redis_server: RedisServer, **env: str) -> Env:
    overrides = {"MEMORYD_SWEEP_INTERVAL_S": SWEEP_INTERVAL_S, **env}
    if kind == "redis":
        overrides["MEMORYD_REDIS_URL"] = redis_server.url
        overrides["MEMORYD_BACKEND"] = "redis"
    else:
        overrides["MEMORYD_BACKEND"] = "local"
    daemon = Daemon(env_overrides=overrides)
    try:
        daemon.start()
    except BaseException:
        daemon.cleanup()
        raise
    return Env(kind, daemon, redis_server if kind == "redis" else None)


@contextlib.contextmanager
def env_of(kind: str, redis_server: RedisServer, **env: str) -> Iterator[Env]:
    started = start_env(kind, redis_server, **env)
    try:
        yield started
    finally:
        started.close()


# -- raw protocol --------------------------------------------------------------


class RawConnection:
    """MessagePack-RPC by hand, for what the client library refuses to send."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self.sock.connect(str(path))
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self._msgid = 0

    def send(self, message: Any) -> None:
        self.sock.sendall(msgpack.packb(message, use_bin_type=True))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> Any:
        while True:
            for obj in self.unpacker:
                return obj
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            self.unpacker.feed(chunk)

    def protocol_error(self) -> dict[str, Any]:
        """The ``protocol_error`` notification the daemon sends before it closes."""
        message = self.receive()
        assert message[:2] == [2, "protocol_error"], message
        args: dict[str, Any] = message[2][0]
        return args

    def closed_by_daemon(self, timeout_s: float) -> bool:
        """Whether the daemon closes the connection within ``timeout_s``
        (what it sends before is kept for ``receive``)."""
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.unpacker.feed(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def call(self, method: str, args: dict[str, Any] | None = None) -> tuple[Any, Any]:
        """One request; its (error, result)."""
        self._msgid += 1
        self.send([0, self._msgid, method, [] if args is None else [args]])
        response = self.receive()
        assert response[0] == 1 and response[1] == self._msgid, response
        return response[2], response[3]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- other users -----------------------------------------------------------------


@contextlib.contextmanager
def acting_as(uid: int, gid: int) -> Iterator[None]:
    """Make the calls inside with the effective uid and gid of another user.

    A socket connected inside carries that uid and gid (SO_PEERCRED) for the
    daemon, for the whole life of the connection.  Needs root.
    """
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def open_to_everyone(daemon: Daemon) -> None:
    """Let other users reach the daemon's socket: its directory traversable
    (the daemon itself must run with ``MEMORYD_SOCKET_MODE=0666``)."""
    daemon.directory.chmod(0o711)


# -- the command line ----------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any variable memoryd reads."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MEMORYD_", "REDIS_", "ENABLE_REDIS", "MEMORY_", "NOTIFY_"))
    }
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memoryd", *args],
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
