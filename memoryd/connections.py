"""Who is connected, and who may connect: the registry of live connections.

The registry counts connections in all and per uid, refuses those past
``max_connections`` / ``max_connections_per_uid`` (root and the daemon's own
user keep a small reserve), tells the server what is in flight at shutdown,
and shares what every connection uses alike: one packer, one rate-limited
log of protocol errors and refusals.  The connections themselves are
memoryd.transport.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from memoryd_client import wire

if TYPE_CHECKING:
    from memoryd.transport import Connection

logger = logging.getLogger(__name__)

# Connections that root and the daemon's own user may hold past both
# max_connections and max_connections_per_uid: `memoryd status` must answer
# when another user has taken every slot.
PRIVILEGED_RESERVE_CONNECTIONS = 8
# Protocol errors and refused connections are logged at most this often; a
# fuzzing client otherwise writes thousands of lines a minute.
PROTOCOL_LOG_MAX_LINES = 10
PROTOCOL_LOG_INTERVAL_S = 10.0
# Freed buffers of closed connections stay in the C heap until it is trimmed:
# trim once the connections fall to half their peak, at least this many fewer.
HEAP_TRIM_MIN_CLOSED = 64
HEAP_TRIM_DELAY_S = 0.5


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The settings a connection lives by, as they were when it was accepted."""

    max_message_bytes: int
    max_inflight: int
    max_connections: int
    max_connections_per_uid: int
    message_timeout_s: float
    idle_timeout_s: float  # 0: never closed for idleness


class ThrottledLog:
    """Log lines at a bounded rate: at most ``max_lines`` per ``interval_s``.

    Past that, lines are only counted, and once the interval is over one line
    says how many were left out.
    """

    def __init__(
        self, log: logging.Logger, what: str, *, max_lines: int, interval_s: float
    ) -> None:
        self.log = log
        self.what = what
        self.max_lines = max_lines
        self.interval_s = interval_s
        self._interval_end_s = 0.0
        self._lines = 0
        self._suppressed = 0

    def write(self, level: int, message: str, *args: object) -> None:
        loop = asyncio.get_running_loop()
        now_s = loop.time()
        if now_s >= self._interval_end_s and not self._suppressed:
            self._interval_end_s = now_s + self.interval_s
            self._lines = 0
        if self._lines < self.max_lines:
            self._lines += 1
            self.log.log(level, message, *args)
            return
        if not self._suppressed:
            loop.call_at(self._interval_end_s, self._report_suppressed)
        self._suppressed += 1

    def _report_suppressed(self) -> None:
        self.log.warning(
            "%d more %s in the last %.0f s not logged (at most %d lines per %.0f s)",
            self._suppressed,
            self.what,
            self.interval_s,
            self.max_lines,
            self.interval_s,
        )
        self._suppressed = 0


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, which returns free pages inside the heap to the OS."""
    try:
        return cast(Callable[[int], int], ctypes.CDLL(None).malloc_trim)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_malloc_trim = _find_malloc_trim()


class ConnectionRegistry:
    """The live connections, so the server can count, admit and drain them."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self.accepting = True
        # One packer for every connection: packing is synchronous, on the loop's thread.
        self.packer = wire.make_packer()
        self.protocol_log = ThrottledLog(
            logger,
            "protocol errors and refused connections",
            max_lines=PROTOCOL_LOG_MAX_LINES,
            interval_s=PROTOCOL_LOG_INTERVAL_S,
        )
        self.privileged_uids = frozenset({0, os.geteuid()})
        self._connections_by_uid: dict[int, int] = {}
        self._peak_connections = 0
        self._heap_trim: asyncio.TimerHandle | None = None

    def inflight(self) -> int:
        return sum(len(c.tasks) for c in self.connections)

    def connections_of(self, uid: int) -> int:
        return self._connections_by_uid.get(uid, 0)

    def refusal(self, uid: int, limits: ConnectionLimits) -> str | None:
        """Why a new connection from ``uid`` must be refused, or None."""
        reserve = PRIVILEGED_RESERVE_CONNECTIONS if uid in self.privileged_uids else 0
        if len(self.connections) >= limits.max_connections + reserve:
            return f"max_connections ({limits.max_connections}) reached"
        if self.connections_of(uid) >= limits.max_connections_per_uid + reserve:
            return f"max_connections_per_uid ({limits.max_connections_per_uid}) reached"
        return None

    def add(self, connection: Connection) -> None:
        self.connections.add(connection)
        uid = connection.peer.uid
        self._connections_by_uid[uid] = self.connections_of(uid) + 1
        self._peak_connections = max(self._peak_connections, len(self.connections))

    def remove(self, connection: Connection) -> None:
        if connection not in self.connections:
            return
        self.connections.remove(connection)
        uid = connection.peer.uid
        left = self.connections_of(uid) - 1
        if left:
            self._connections_by_uid[uid] = left
        else:
            del self._connections_by_uid[uid]
        self._trim_heap_if_many_closed()

    def _trim_heap_if_many_closed(self) -> None:
        count = len(self.connections)
        closed = self._peak_connections - count
        if self._heap_trim is None and closed >= HEAP_TRIM_MIN_CLOSED and count <= closed:
            loop = asyncio.get_running_loop()
            self._heap_trim = loop.call_later(HEAP_TRIM_DELAY_S, self._trim_heap)

    def _trim_heap(self) -> None:
        self._heap_trim = None
        self._peak_connections = len(self.connections)
        if _malloc_trim is not None:
            _malloc_trim(0)
