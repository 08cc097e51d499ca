"""One client connection: bytes in, MessagePack-RPC messages, responses out.

Framing is the plain msgpack stream of the spec.  The Unpacker's limits come
from ``max_message_bytes``, and we never feed it more than it may hold.  When
a read ends inside a message, ``wire.HeaderWalk`` reads that message's headers
as they arrive, so a header announcing more than the message may hold is
refused at once instead of waiting for bytes that never come; reads that
hold whole messages never pay for the walk.  Hostile or broken streams get a
``protocol_error`` notification and the connection is closed; every other
connection is untouched.

Nobody holds a connection for free: a started message must be complete
within ``message_timeout_s``, a connection idle for ``idle_timeout_s`` is
closed, and one uid may hold at most ``max_connections_per_uid`` of the
``max_connections`` (root and the daemon's own user have a small reserve
above both, so that ``memoryd status`` answers when the slots are full).

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import msgpack

from memoryd.connections import ConnectionLimits, ConnectionRegistry
from memoryd.errors import InternalError, RequestError, ShuttingDown
from memoryd.metrics import Metrics
from memoryd_client import wire

logger = logging.getLogger(__name__)

_PEERCRED = struct.Struct("3i")
WRITE_HIGH_WATER_BYTES = 1024 * 1024
# Each connection's decoder starts with a buffer this small and grows it only
# for a message that needs more; it starts small again once that message is done.
UNPACKER_INITIAL_BUFFER_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a connection (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


class Dispatcher(Protocol):
    """What answers a connection's requests (memoryd.handlers.Handlers)."""

    async def call(self, method: str, args: Mapping[str, Any], peer: Peer) -> Any: ...


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
        service: Dispatcher,
        registry: ConnectionRegistry,
        metrics: Metrics,
        limits: ConnectionLimits,
    ) -> None:
        self.service = service
        self.registry = registry
        self.metrics = metrics
        self.limits = limits
        self.max_inflight = limits.max_inflight
        self.unpacker_capacity = limits.max_message_bytes + wire.UNPACKER_SLACK_BYTES
        self.unpacker = self._new_unpacker()
        self.transport: asyncio.Transport | None = None
        self.peer = Peer(0, -1, -1)
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._unfed = bytearray()
        self._fed_bytes = 0
        self._message_start = 0  # stream offset where the message being decoded began
        self._last_fed = b""  # what the decoder got last, until it has run out of bytes
        self._unpacker_may_have_grown = False
        self._header_walk: wire.HeaderWalk | None = None
        self._message_deadline_s = 0.0  # on the loop's clock, like the two below
        self._received_at_s = 0.0
        self._busy_at_s = 0.0
        self._message_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._closing = False

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        self.peer = peer_of(transport)
        refusal = self.registry.refusal(self.peer.uid, self.limits)
        if refusal is not None:
            self.registry.protocol_log.write(
                logging.WARNING,
                "refusing a connection from pid %d uid %d: %s",
                self.peer.pid,
                self.peer.uid,
                refusal,
            )
            self._close_with_error(wire.OVERLOADED, f"too many connections: {refusal}")
            return
        self.registry.add(self)
        self._received_at_s = self._loop.time()
        if self.limits.idle_timeout_s > 0:
            idle_until_s = self._received_at_s + self.limits.idle_timeout_s
            self._idle_timer = self._loop.call_at(idle_until_s, self._check_idle)
        logger.debug("connection from pid %d uid %d", self.peer.pid, self.peer.uid)

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests already running finish (their writes are in the WAL);
        # their answers have nowhere to go and are dropped.
        self._forget()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._received_at_s = self._loop.time()
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
        if message_bytes:
            if not self._message_may_fit():
                self._protocol_error(wire.TOO_LARGE, "message larger than max_message_bytes")
                return False
        elif self._unpacker_may_have_grown:
            self._renew_unpacker()
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
        if message_bytes + len(chunk) > UNPACKER_INITIAL_BUFFER_BYTES:
            self._unpacker_may_have_grown = True
        return True

    def _message_may_fit(self) -> bool:
        """Walk the headers of the message being received that arrived since the
        last walk; False once they announce more than it may hold."""
        walk = self._header_walk
        if walk is None or walk.message_offset != self._message_start:
            walk = wire.HeaderWalk(self._message_start, self.unpacker_capacity)
            self._header_walk = walk
            self._start_message_clock()
        return walk.advance(self._last_fed, self._fed_bytes - len(self._last_fed))

    def _new_unpacker(self) -> msgpack.Unpacker:
        return wire.make_unpacker(
            self.limits.max_message_bytes, initial_buffer_bytes=UNPACKER_INITIAL_BUFFER_BYTES
        )

    def _renew_unpacker(self) -> None:
        """A decoder whose buffer grew for a large message keeps it, and its
        writes wander through all of it: an empty one starts small again."""
        self.unpacker = self._new_unpacker()
        self._fed_bytes = 0
        self._message_start = 0
        self._header_walk = None
        self._unpacker_may_have_grown = False

    def _update_reading(self) -> None:
        if self.transport is None or self._closing:
            return
        should_pause = self._backpressured() or bool(self._unfed)
        if should_pause and not self._reading_paused:
            self.transport.pause_reading()
            self._reading_paused = True
        elif not should_pause and self._reading_paused:
            self.transport.resume_reading()
            self._reading_paused = False

    def _backpressured(self) -> bool:
        return len(self.tasks) >= self.max_inflight or self._writing_paused

    def _handle(self, obj: Any) -> None:
        try:
            message = wire.parse_message(obj)
        except wire.WireFormatError as exc:
            self._protocol_error(wire.INVALID_REQUEST, str(exc))
            return
        if isinstance(message, wire.Request):
            task = self._loop.create_task(self._run(message))
            self.tasks.add(task)
            task.add_done_callback(self._request_done)
        elif isinstance(message, wire.Response):
            self._protocol_error(wire.INVALID_REQUEST, "clients send requests, not responses")
        # Notifications from clients carry nothing we act on.

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not self._closing:
            self._process()

    # ------------------------------------------------------------ deadlines

    def _start_message_clock(self) -> None:
        self._message_deadline_s = self._loop.time() + self.limits.message_timeout_s
        if self._message_timer is None:
            self._message_timer = self._loop.call_at(
                self._message_deadline_s, self._check_message_deadline
            )

    def _receiving_message(self) -> bool:
        walk = self._header_walk
        return (
            walk is not None
            and walk.message_offset == self._message_start
            and self._fed_bytes > self._message_start
        )

    def _check_message_deadline(self) -> None:
        self._message_timer = None
        if self._closing or not self._receiving_message():
            return
        now_s = self._loop.time()
        if self._backpressured():
            # We stopped reading, not the peer: its clock starts again when we read.
            self._message_deadline_s = now_s + self.limits.message_timeout_s
        if now_s < self._message_deadline_s:
            self._message_timer = self._loop.call_at(
                self._message_deadline_s, self._check_message_deadline
            )
            return
        self._protocol_error(
            wire.DEADLINE_EXCEEDED,
            f"message not complete within message_timeout_s ({self.limits.message_timeout_s} s)",
        )

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._closing:
            return
        now_s = self._loop.time()
        if self.tasks:
            self._busy_at_s = now_s
        idle_until_s = max(self._received_at_s, self._busy_at_s) + self.limits.idle_timeout_s
        if now_s < idle_until_s:
            self._idle_timer = self._loop.call_at(idle_until_s, self._check_idle)
            return
        logger.debug(
            "closing the connection of pid %d uid %d: idle for %.1f s",
            self.peer.pid,
            self.peer.uid,
            now_s - max(self._received_at_s, self._busy_at_s),
        )
        self._close()

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
        try:
            response = wire.pack_response(self.registry.packer, request.msgid, error, result)
        except ValueError:
            # msgpack nests at most about 1,000 levels: a record an older
            # memoryd accepted may go past that once inside a response.  The
            # request is answered all the same (the client is not left waiting).
            logger.error(
                "the answer to %s cannot be encoded: a record in it is nested too deeply",
                request.method[:64],
            )
            error = InternalError(
                "the answer cannot be encoded: a record in it is nested deeper than msgpack allows"
            ).to_wire()
            response = wire.pack_response(self.registry.packer, request.msgid, error, None)
        self.metrics.observe(request.method, time.perf_counter() - started_s, error)
        self._send(response)

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self._closing:
            self.transport.write(data)

    # ------------------------------------------------------------ closing

    def _protocol_error(self, code: str, message: str) -> None:
        self.registry.protocol_log.write(
            logging.INFO,
            "protocol error from pid %d uid %d (%s): %s; closing",
            self.peer.pid,
            self.peer.uid,
            code,
            message,
        )
        self._close_with_error(code, message)

    def _close_with_error(self, code: str, message: str) -> None:
        self._send(
            wire.pack_notification(
                self.registry.packer,
                wire.PROTOCOL_ERROR_EVENT,
                {"code": code, "message": message},
            )
        )
        self._close()

    def _close(self) -> None:
        self._forget()
        if self.transport is None:
            return
        if self.transport.get_write_buffer_size():
            # The peer is not reading: it would hold the socket until it did.
            self.transport.abort()
        else:
            self.transport.close()

    def _forget(self) -> None:
        self._closing = True
        self.registry.remove(self)
        for timer in (self._message_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._message_timer = self._idle_timer = None
        self._unfed.clear()
        self._last_fed = b""
