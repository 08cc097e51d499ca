"""One client connection: bytes in, MessagePack-RPC messages, responses out.

Framing is the plain msgpack stream of the spec.  The Unpacker's limits come
from ``max_message_bytes``, and we never feed it more than it may hold.  When
a read ends inside a message, ``wire.HeaderWalk`` reads that message's headers
as they arrive, so a header announcing more than the message may hold is
refused at once instead of waiting for bytes that never come; reads that
hold whole messages never pay for the walk.  Hostile or broken streams get a
``protocol_error`` notification and the connection is closed; every other
connection is untouched.

Back-pressure: at most ``max_inflight`` requests of a connection run at once;
past that, and while the peer is not reading its responses, we stop reading
from it (the kernel's socket buffer then pushes back on the client).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import Any, cast

import msgpack

from memoryd.errors import InternalError, RequestError, ShuttingDown
from memoryd.metrics import Metrics
from memoryd.service import Peer, Service
from memoryd_client import wire

logger = logging.getLogger(__name__)

_PEERCRED = struct.Struct("3i")
WRITE_HIGH_WATER_BYTES = 1024 * 1024


class ConnectionRegistry:
    """The live connections, so the server can count and drain them."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self.accepting = True

    def inflight(self) -> int:
        return sum(len(c.tasks) for c in self.connections)


def peer_of(transport: asyncio.BaseTransport) -> Peer:
    sock = transport.get_extra_info("socket")
    try:
        pid, uid, gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except (OSError, AttributeError):
        return Peer(0, -1, -1)
    return Peer(pid, uid, gid)


class Connection(asyncio.Protocol):
    def __init__(
        self,
        service: Service,
        registry: ConnectionRegistry,
        metrics: Metrics,
        *,
        max_message_bytes: int,
        max_inflight: int,
        max_connections: int,
    ) -> None:
        self.service = service
        self.registry = registry
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.max_connections = max_connections
        self.unpacker = wire.make_unpacker(max_message_bytes)
        self.unpacker_capacity = max_message_bytes + wire.UNPACKER_SLACK_BYTES
        self.packer = wire.make_packer()
        self.transport: asyncio.Transport | None = None
        self.peer = Peer(0, -1, -1)
        self.tasks: set[asyncio.Task[None]] = set()
        self._unfed = bytearray()
        self._fed_bytes = 0
        self._message_start = 0  # stream offset where the message being decoded began
        self._last_fed = b""  # what the decoder got last, until it has run out of bytes
        self._header_walk: wire.HeaderWalk | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._closing = False

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        self.peer = peer_of(transport)
        if len(self.registry.connections) >= self.max_connections:
            logger.warning(
                "refusing a connection from pid %d: max_connections reached", self.peer.pid
            )
            self._protocol_error(wire.OVERLOADED, "too many connections")
            return
        self.registry.connections.add(self)
        logger.debug("connection from pid %d uid %d", self.peer.pid, self.peer.uid)

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests already running finish (their writes are in the WAL);
        # their answers have nowhere to go and are dropped.
        self._closing = True
        self.registry.connections.discard(self)
        self._unfed.clear()
        self._last_fed = b""

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._unfed += data
        self._process()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._process()

    # ------------------------------------------------------------ framing

    def _process(self) -> None:
        """Decode and start requests until the cap, then read no further."""
        while (
            not self._closing and len(self.tasks) < self.max_inflight and not self._writing_paused
        ):
            try:
                message = self.unpacker.unpack()
            except msgpack.OutOfData:
                if not self._feed_more():
                    break
                continue
            except Exception as exc:  # every decoder failure means the same: hostile bytes
                self._protocol_error(
                    wire.INVALID_REQUEST, f"undecodable msgpack: {type(exc).__name__}"
                )
                return
            self._message_start = self.unpacker.tell()
            self._handle(message)
        self._update_reading()

    def _feed_more(self) -> bool:
        """Feed the Unpacker as much unfed input as it may hold; False if none moved.

        Called only when no complete message is buffered, so everything fed
        since the last message ended belongs to the one being decoded.  The
        Unpacker decodes a message as its bytes arrive, so this count, not
        what it still buffers, is what bounds the size of one message.
        """
        message_bytes = self._fed_bytes - self._message_start
        if message_bytes and not self._message_may_fit():
            self._protocol_error(wire.TOO_LARGE, "message larger than max_message_bytes")
            return False
        self._last_fed = b""
        if not self._unfed:
            return False
        room = self.unpacker_capacity - message_bytes
        if room <= 0:
            self._protocol_error(wire.TOO_LARGE, "message larger than max_message_bytes")
            return False
        chunk = bytes(self._unfed[:room])
        del self._unfed[:room]
        self.unpacker.feed(chunk)
        self._last_fed = chunk
        self._fed_bytes += len(chunk)
        return True

    def _message_may_fit(self) -> bool:
        """Walk the headers of the message being received that arrived since the
        last walk; False once they announce more than it may hold."""
        walk = self._header_walk
        if walk is None or walk.message_offset != self._message_start:
            walk = wire.HeaderWalk(self._message_start, self.unpacker_capacity)
            self._header_walk = walk
        return walk.advance(self._last_fed, self._fed_bytes - len(self._last_fed))

    def _update_reading(self) -> None:
        if self.transport is None or self._closing:
            return
        should_pause = (
            len(self.tasks) >= self.max_inflight or self._writing_paused or bool(self._unfed)
        )
        if should_pause and not self._reading_paused:
            self.transport.pause_reading()
            self._reading_paused = True
        elif not should_pause and self._reading_paused:
            self.transport.resume_reading()
            self._reading_paused = False

    def _handle(self, obj: Any) -> None:
        try:
            message = wire.parse_message(obj)
        except wire.WireFormatError as exc:
            self._protocol_error(wire.INVALID_REQUEST, str(exc))
            return
        if isinstance(message, wire.Request):
            task = asyncio.get_running_loop().create_task(self._run(message))
            self.tasks.add(task)
            task.add_done_callback(self._request_done)
        elif isinstance(message, wire.Response):
            self._protocol_error(wire.INVALID_REQUEST, "clients send requests, not responses")
        # Notifications from clients carry nothing we act on.

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not self._closing:
            self._process()

    # ------------------------------------------------------------ requests

    async def _run(self, request: wire.Request) -> None:
        started_s = time.perf_counter()
        error: dict[str, Any] | None = None
        result: Any = None
        try:
            if not self.registry.accepting:
                raise ShuttingDown("memoryd is shutting down; retry on the restarted daemon")
            result = await self.service.call(request.method, request.args, self.peer)
        except RequestError as exc:
            error = exc.to_wire()
        except Exception:
            logger.exception("internal error in %s", request.method[:64])
            error = InternalError("internal error; see the daemon's log").to_wire()
        self.metrics.observe(request.method, time.perf_counter() - started_s, error)
        self._send(wire.pack_response(self.packer, request.msgid, error, result))

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self._closing:
            self.transport.write(data)

    def _protocol_error(self, code: str, message: str) -> None:
        logger.info("protocol error from pid %d (%s): %s; closing", self.peer.pid, code, message)
        self._send(
            wire.pack_notification(
                self.packer, wire.PROTOCOL_ERROR_EVENT, {"code": code, "message": message}
            )
        )
        self._closing = True
        self.registry.connections.discard(self)
        self._unfed.clear()
        self._last_fed = b""
        if self.transport is not None:
            self.transport.close()
