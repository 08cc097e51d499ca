"""The asyncio memoryd client.

One connection per client carries many requests at once (pipelining): a
reader task matches each response to its waiting future by msgid, in whatever
order the daemon answers.  When the connection is lost every waiting call
fails with ``ConnectionLost`` and retries on its own deadline; the first to
retry reconnects, under a lock, and the others reuse its connection.
"""

# Longer than the other modules on purpose: one method per protocol method,
# each with the signature and docstring help() shows.  The arguments and
# results themselves are built once, in memoryd_client.calls;
# tests/test_client_unit.py holds these methods equal to memoryd_client.client.Client's.

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from memoryd_client import calls, peer, wire
from memoryd_client.calls import UNSET, Call, Unset
from memoryd_client.client import DEFAULT_TIMEOUT_S
from memoryd_client.errors import (
    ClientClosed,
    ConnectionLost,
    MemorydError,
    MemorydTimeoutError,
)
from memoryd_client.retry import Attempts, RetryPolicy, connect_error, policy_from
from memoryd_client.types import (
    AddResult,
    AgentList,
    Cleared,
    Durability,
    HelloResult,
    Order,
    Record,
    RecordList,
    Stats,
)

__all__ = ["AsyncClient"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _time_left_s(deadline: float) -> float:
    remaining_s = deadline - time.monotonic()
    if remaining_s <= 0:
        raise MemorydTimeoutError("deadline passed while talking to memoryd")
    return remaining_s


def _settle(future: asyncio.Future[wire.Response]) -> None:
    """Leave nothing for asyncio to report about a response future its call left.

    A call leaves its future early when sending fails or it is cancelled; the
    reader may have failed the future in that moment (the daemon died), and an
    exception nobody retrieves is logged as "Future exception was never
    retrieved".  The call raised its own error already: this one is read and
    dropped, and a future still waiting is cancelled.
    """
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


class _Connection:
    """One stream to the daemon and the requests waiting for their answers."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_message_bytes: int,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._unpacker = wire.make_unpacker(max_message_bytes, max_container_items=None)
        self._pending: dict[int, asyncio.Future[wire.Response]] = {}
        # msgids whose callers gave up (timeout, cancellation): their late
        # answers are expected and dropped, unlike answers nobody asked for.
        self._abandoned: set[int] = set()
        self._close_reason: tuple[type[MemorydError], str] | None = None
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read_loop(), name="memoryd-client-reader"
        )

    @property
    def closed(self) -> bool:
        return self._close_reason is not None

    def in_use(self, msgid: int) -> bool:
        return msgid in self._pending or msgid in self._abandoned

    async def request(self, msgid: int, payload: bytes) -> wire.Response:
        """Send one request and wait for its response (errors included)."""
        self._raise_if_closed()
        future: asyncio.Future[wire.Response] = asyncio.get_running_loop().create_future()
        self._pending[msgid] = future
        try:
            self._writer.write(payload)
            await self._writer.drain()
            return await future
        except MemorydError:
            raise
        except OSError as exc:
            raise ConnectionLost(f"connection to memoryd broke: {exc}") from exc
        finally:
            if self._pending.pop(msgid, None) is not None and not self.closed:
                self._abandoned.add(msgid)
            _settle(future)

    async def aclose(self) -> None:
        """Fail the waiting calls with ``ClientClosed`` and close the stream."""
        self._shutdown(ClientClosed, "the client is closed")
        self._reader_task.cancel()
        # wait() rather than awaiting the task: its CancelledError must not be
        # confused with a cancellation of aclose() itself.
        await asyncio.wait({self._reader_task})
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    def _raise_if_closed(self) -> None:
        if self._close_reason is not None:
            cls, message = self._close_reason
            raise cls(message)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(calls.RECV_CHUNK_BYTES)
                if not data:
                    raise ConnectionLost("memoryd closed the connection")
                calls.feed(self._unpacker, data)
                for obj in calls.objects(self._unpacker):
                    self._dispatch(obj)
        except MemorydError as exc:
            self._shutdown(type(exc), str(exc))
        except OSError as exc:
            self._shutdown(ConnectionLost, f"connection to memoryd broke: {exc}")
        except Exception as exc:
            # A bug here must not leave callers waiting until their deadline.
            logger.exception("memoryd client reader failed")
            self._shutdown(MemorydError, f"memoryd client reader failed: {exc!r}")

    def _dispatch(self, obj: object) -> None:
        response = calls.read_message(obj)
        if response is None:
            return
        future = self._pending.pop(response.msgid, None)
        if future is None:
            if response.msgid in self._abandoned:
                self._abandoned.discard(response.msgid)
                return
            raise calls.unknown_msgid(response.msgid)
        if not future.done():
            future.set_result(response)

    def _shutdown(self, cls: type[MemorydError], message: str) -> None:
        if self._close_reason is not None:
            return
        self._close_reason = (cls, message)
        pending, self._pending = self._pending, {}
        self._abandoned.clear()
        for future in pending.values():
            if not future.done():
                future.set_exception(cls(message))
        # abort(), not close(): unsent requests are failed already, and close()
        # would wait for a stalled daemon to read them.
        self._writer.transport.abort()


class AsyncClient:
    """asyncio client for memoryd; many calls may run concurrently on it.

    Same arguments (``server_uid`` included), methods and errors as
    ``memoryd_client.Client``, as coroutines.  Use ``async with AsyncClient() as client`` or call
    ``aclose()``: the client owns a reader task that must be stopped before
    the event loop ends.  A client belongs to the event loop it first
    connects on.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: bool | RetryPolicy = True,
        max_message_bytes: int = calls.DEFAULT_MAX_RESPONSE_BYTES,
        server_uid: int | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.socket_path = wire.resolve_socket_path(socket_path)
        self.timeout_s = timeout_s
        self.retry_policy = policy_from(retry)
        self.trusted_uids = peer.trusted_uids(server_uid)
        self._max_message_bytes = max_message_bytes
        self._msgids = calls.MsgIds()
        self._packer = wire.make_packer()
        self._conn: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False

    # Life cycle -----------------------------------------------------------

    async def connect(self, *, timeout_s: float | None = None) -> None:
        """Connect now rather than at the first call, retrying within the deadline."""

        async def attempt(deadline: float) -> None:
            async with asyncio.timeout(_time_left_s(deadline)):
                await self._connection()

        await self._run(attempt, timeout_s)

    async def aclose(self) -> None:
        """Close the connection; calls in flight and later calls raise ``ClientClosed``."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._conn else "idle"
        return f"<AsyncClient {self.socket_path!r} {state}>"

    # Methods (documented on Client) --------------------------------------

    async def hello(
        self, client: str | None = None, *, timeout_s: float | None = None
    ) -> HelloResult:
        """Introduce this client (``client``: a name for the server's logs).

        Returns ``{server, version, protocol, peer: {pid, uid, gid}}``.
        """
        return await self._call(calls.hello(client), timeout_s)

    async def ping(self, *, timeout_s: float | None = None) -> str:
        """Round trip to the daemon; returns ``"pong"``."""
        return await self._call(calls.ping(), timeout_s)

    async def add(
        self,
        agent_id: str,
        type: str,
        content: Any,
        *,
        author: str | None = None,
        importance: float | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_s: float | None = None,
        id: str | None = None,
        created_at: float | None = None,
        durability: Durability | None = None,
        timeout_s: float | None = None,
    ) -> AddResult:
        """Store one record for ``agent_id``; returns ``{id, created_at}``.

        The client assigns ``id`` and ``created_at`` when not given, before
        the first attempt, so a retry after a lost answer stores the record
        once.  ``durability="store"`` acknowledges only once the record is in
        the store rather than in the daemon's write-ahead log.
        """
        call = calls.add(
            agent_id,
            type,
            content,
            author=author,
            importance=importance,
            tags=tags,
            metadata=metadata,
            ttl_s=ttl_s,
            id=id,
            created_at=created_at,
            durability=durability,
        )
        return await self._call(call, timeout_s)

    async def add_many(
        self, records: Sequence[Mapping[str, Any]], *, timeout_s: float | None = None
    ) -> list[str]:
        """Store several records (each with the fields of ``add`` and its
        ``agent_id``) in one request; returns their ids in order.

        Records without ``id``/``created_at`` get them from the client; the
        caller's mappings are not modified.
        """
        return await self._call(calls.add_many(records), timeout_s)

    async def get(self, agent_id: str, id: str, *, timeout_s: float | None = None) -> Record:
        """The record ``id`` of ``agent_id``; raises ``NotFound`` if there is none."""
        return await self._call(calls.get(agent_id, id), timeout_s)

    async def update(
        self,
        agent_id: str,
        id: str,
        *,
        content: Any = UNSET,
        importance: float | Unset = UNSET,
        tags: Sequence[str] | Unset = UNSET,
        metadata: Mapping[str, Any] | Unset = UNSET,
        ttl_s: float | None | Unset = UNSET,
        timeout_s: float | None = None,
    ) -> Record:
        """Change the given fields of a record, only those; ``ttl_s=None`` (or 0)
        removes the expiry.  Returns the updated record."""
        call = calls.update(
            agent_id,
            id,
            content=content,
            importance=importance,
            tags=tags,
            metadata=metadata,
            ttl_s=ttl_s,
        )
        return await self._call(call, timeout_s)

    async def delete(self, agent_id: str, id: str, *, timeout_s: float | None = None) -> bool:
        """Delete a record; returns whether it existed.

        A retry after a lost answer may report False for a record that the
        first attempt deleted.
        """
        return await self._call(calls.delete(agent_id, id), timeout_s)

    async def recent(
        self,
        agent_id: str,
        *,
        limit: int | None = None,
        order: Order | None = None,
        types: Sequence[str] | None = None,
        author: str | None = None,
        exclude_author: str | None = None,
        tags: Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        timeout_s: float | None = None,
    ) -> RecordList:
        """The latest records of ``agent_id`` (server default: 10, newest first).

        Filters: ``types``, ``author``, ``exclude_author``, ``tags``, and
        ``since``/``until`` in unix seconds.  Returns a ``RecordList``: a list
        of record dicts whose ``.degraded`` is True when the daemon answered
        without its store.
        """
        call = calls.recent(
            agent_id,
            limit=limit,
            order=order,
            types=types,
            author=author,
            exclude_author=exclude_author,
            tags=tags,
            since=since,
            until=until,
        )
        return await self._call(call, timeout_s)

    async def search(
        self,
        agent_id: str,
        query: str,
        *,
        limit: int | None = None,
        types: Sequence[str] | None = None,
        timeout_s: float | None = None,
    ) -> RecordList:
        """Records whose text contains ``query`` (case-insensitive), newest
        first; a ``RecordList`` with ``.degraded`` as for ``recent``."""
        call = calls.search(agent_id, query, limit=limit, types=types)
        return await self._call(call, timeout_s)

    async def stats(self, agent_id: str, *, timeout_s: float | None = None) -> Stats:
        """What is stored for ``agent_id`` now: ``{count, by_type, bytes, oldest, newest}``."""
        return await self._call(calls.stats(agent_id), timeout_s)

    async def clear(self, agent_id: str, *, timeout_s: float | None = None) -> Cleared:
        """Delete every record of ``agent_id`` (and nothing else); returns how many,
        a ``Cleared`` (an ``int``) with ``.degraded``."""
        return await self._call(calls.clear(agent_id), timeout_s)

    async def agents(
        self,
        *,
        prefix: str | None = None,
        limit: int | None = None,
        timeout_s: float | None = None,
    ) -> AgentList:
        """The agent ids known to the store, optionally those starting with ``prefix``;
        an ``AgentList`` with ``.degraded``."""
        return await self._call(calls.agents(prefix=prefix, limit=limit), timeout_s)

    async def status(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """The daemon's status snapshot, as ``memoryd status --json`` prints it."""
        return await self._call(calls.status(), timeout_s)

    # Machinery ------------------------------------------------------------

    async def _call(self, call: Call[T], timeout_s: float | None) -> T:
        async def attempt(deadline: float) -> Any:
            return calls.outcome(await self._exchange(call, deadline))

        return call.shape(await self._run(attempt, timeout_s))

    async def _run(self, attempt: Callable[[float], Awaitable[T]], timeout_s: float | None) -> T:
        attempts = Attempts(self.retry_policy, self.timeout_s if timeout_s is None else timeout_s)
        while True:
            attempts.time_left_s()
            try:
                return await attempt(attempts.deadline)
            except TimeoutError as exc:
                if isinstance(exc, MemorydError):
                    raise
                raise MemorydTimeoutError("memoryd did not answer in time") from exc
            except MemorydError as exc:
                pause_s = attempts.after_failure(exc)
                logger.debug("memoryd: %s; retrying in %.3f s", exc, pause_s)
            await asyncio.sleep(pause_s)

    async def _exchange(self, call: Call[Any], deadline: float) -> wire.Response:
        async with asyncio.timeout(_time_left_s(deadline)):
            conn = await self._connection()
            msgid = self._msgids.take()
            while conn.in_use(msgid):
                msgid = self._msgids.take()
            payload = wire.pack_request(self._packer, msgid, call.method, call.args)
            return await conn.request(msgid, payload)

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._connect_lock:
            if self._closed:
                raise ClientClosed("the client is closed")
            conn = self._conn
            if conn is None or conn.closed:
                conn = await self._open()
                if self._closed:
                    await conn.aclose()
                    raise ClientClosed("the client is closed")
                self._conn = conn
            return conn

    async def _open(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError as exc:
            raise connect_error(self.socket_path, exc) from exc
        try:
            peer.check_server(writer.get_extra_info("socket"), self.socket_path, self.trusted_uids)
        except BaseException:
            writer.transport.abort()
            raise
        logger.debug("memoryd: connected to %s", self.socket_path)
        return _Connection(reader, writer, self._max_message_bytes)
