"""The blocking memoryd client.

One Unix socket per client, shared by threads through a lock: a call sends one
request and reads until its response.  Calls connect lazily, reconnect after a
daemon restart or after the daemon closed an idle connection, and retry within
their deadline (see ``memoryd_client.retry``).
"""

# Longer than the other modules on purpose: one method per protocol method,
# each with the signature and docstring help() shows.  The arguments and
# results themselves are built once, in memoryd_client.calls;
# tests/test_client_unit.py holds these methods equal to memoryd_client.aio.AsyncClient's.

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import msgpack

from memoryd_client import calls, peer, wire
from memoryd_client.calls import UNSET, Call, Unset
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

__all__ = ["Client"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0

# An application that restored the default SIGPIPE action must not be killed
# when the daemon goes away under a send.
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)


def _time_left_s(deadline: float) -> float:
    remaining_s = deadline - time.monotonic()
    if remaining_s <= 0:
        raise MemorydTimeoutError("deadline passed while talking to memoryd")
    return remaining_s


class Client:
    """Blocking client for memoryd; safe to share between threads.

    ``socket_path``: the argument, else ``$MEMORYD_SOCKET_PATH``, else the
    default path.  ``timeout_s`` is the deadline of each call, retries
    included; every method also takes ``timeout_s`` to override it for one
    call.  ``retry``: True for the default policy, False for a single attempt,
    or a ``RetryPolicy``.  ``server_uid``: a uid trusted to run the daemon
    besides root and this process's own (default: ``$MEMORYD_SERVER_UID``);
    a daemon of any other uid gets nothing sent and raises ``UntrustedServer``
    (see ``memoryd_client.peer``).

    Arguments left as None are not sent, so the server applies its defaults.
    Errors raise ``memoryd_client.errors`` classes: the server's (one per
    code, with ``.code``), ``ConnectError`` when the daemon cannot be reached,
    ``MemorydTimeoutError`` when it does not answer in time and
    ``ProtocolError`` when it refuses or garbles the stream.
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
        # The lock guards everything below: socket, unpacker, packer, msgids.
        self._lock = threading.Lock()
        self._msgids = calls.MsgIds()
        self._packer = wire.make_packer()
        self._sock: socket.socket | None = None
        self._unpacker: msgpack.Unpacker | None = None
        self._closed = False

    # Life cycle -----------------------------------------------------------

    def connect(self, *, timeout_s: float | None = None) -> None:
        """Connect now rather than at the first call, retrying within the deadline."""
        self._run(self._connect_attempt, timeout_s)

    def close(self) -> None:
        """Close the connection; calls in flight and later calls raise ``ClientClosed``."""
        self._closed = True
        sock = self._sock
        if sock is not None:
            # Wakes a thread blocked in recv() so that it releases the lock.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._drop()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._sock else "idle"
        return f"<Client {self.socket_path!r} {state}>"

    # Methods --------------------------------------------------------------

    def hello(self, client: str | None = None, *, timeout_s: float | None = None) -> HelloResult:
        """Introduce this client (``client``: a name for the server's logs).

        Returns ``{server, version, protocol, peer: {pid, uid, gid}}``.
        """
        return self._call(calls.hello(client), timeout_s)

    def ping(self, *, timeout_s: float | None = None) -> str:
        """Round trip to the daemon; returns ``"pong"``."""
        return self._call(calls.ping(), timeout_s)

    def add(
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
        return self._call(call, timeout_s)

    def add_many(
        self, records: Sequence[Mapping[str, Any]], *, timeout_s: float | None = None
    ) -> list[str]:
        """Store several records (each with the fields of ``add`` and its
        ``agent_id``) in one request; returns their ids in order.

        Records without ``id``/``created_at`` get them from the client; the
        caller's mappings are not modified.
        """
        return self._call(calls.add_many(records), timeout_s)

    def get(self, agent_id: str, id: str, *, timeout_s: float | None = None) -> Record:
        """The record ``id`` of ``agent_id``; raises ``NotFound`` if there is none."""
        return self._call(calls.get(agent_id, id), timeout_s)

    def update(
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
        return self._call(call, timeout_s)

    def delete(self, agent_id: str, id: str, *, timeout_s: float | None = None) -> bool:
        """Delete a record; returns whether it existed.

        A retry after a lost answer may report False for a record that the
        first attempt deleted.
        """
        return self._call(calls.delete(agent_id, id), timeout_s)

    def recent(
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
        return self._call(call, timeout_s)

    def search(
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
        return self._call(calls.search(agent_id, query, limit=limit, types=types), timeout_s)

    def stats(self, agent_id: str, *, timeout_s: float | None = None) -> Stats:
        """What is stored for ``agent_id`` now: ``{count, by_type, bytes, oldest, newest}``."""
        return self._call(calls.stats(agent_id), timeout_s)

    def clear(self, agent_id: str, *, timeout_s: float | None = None) -> Cleared:
        """Delete every record of ``agent_id`` (and nothing else); returns how many,
        a ``Cleared`` (an ``int``) with ``.degraded``."""
        return self._call(calls.clear(agent_id), timeout_s)

    def agents(
        self,
        *,
        prefix: str | None = None,
        limit: int | None = None,
        timeout_s: float | None = None,
    ) -> AgentList:
        """The agent ids known to the store, optionally those starting with ``prefix``;
        an ``AgentList`` with ``.degraded``."""
        return self._call(calls.agents(prefix=prefix, limit=limit), timeout_s)

    def status(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """The daemon's status snapshot, as ``memoryd status --json`` prints it."""
        return self._call(calls.status(), timeout_s)

    # Machinery ------------------------------------------------------------

    def _call(self, call: Call[T], timeout_s: float | None) -> T:
        return call.shape(self._run(lambda deadline: self._roundtrip(call, deadline), timeout_s))

    def _run(self, attempt: Callable[[float], T], timeout_s: float | None) -> T:
        attempts = Attempts(self.retry_policy, self.timeout_s if timeout_s is None else timeout_s)
        while True:
            attempts.time_left_s()
            try:
                return attempt(attempts.deadline)
            except MemorydError as exc:
                pause_s = attempts.after_failure(exc)
                logger.debug("memoryd: %s; retrying in %.3f s", exc, pause_s)
            time.sleep(pause_s)

    def _connect_attempt(self, deadline: float) -> None:
        self._acquire(deadline)
        try:
            self._connected(deadline)
        finally:
            self._lock.release()

    def _roundtrip(self, call: Call[Any], deadline: float) -> Any:
        self._acquire(deadline)
        try:
            response = self._exchange(call, deadline)
        finally:
            self._lock.release()
        return calls.outcome(response)

    def _acquire(self, deadline: float) -> None:
        if not self._lock.acquire(timeout=_time_left_s(deadline)):
            raise MemorydTimeoutError("another thread held the connection past the deadline")

    def _exchange(self, call: Call[Any], deadline: float) -> wire.Response:
        try:
            reused = self._sock is not None
            sock = self._connected(deadline)
            msgid = self._msgids.take()
            payload = wire.pack_request(self._packer, msgid, call.method, call.args)
            try:
                self._send(sock, payload, deadline)
            except ConnectionLost:
                if not reused:
                    raise
                # The daemon closes idle connections.  A send refused on one
                # never reached the daemon, so it goes again on a new one.
                self._drop()
                sock = self._connected(deadline)
                self._send(sock, payload, deadline)
            return self._receive(sock, msgid, deadline)
        except BaseException:
            # Whatever broke the exchange (a timeout, an interrupt) may leave a
            # late answer in the stream: only a fresh connection is clean.
            self._drop()
            raise

    def _connected(self, deadline: float) -> socket.socket:
        if self._closed:
            raise ClientClosed("the client is closed")
        if self._sock is None:
            self._sock = self._open(deadline)
            self._unpacker = wire.make_unpacker(self._max_message_bytes, max_container_items=None)
        return self._sock

    def _open(self, deadline: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_time_left_s(deadline))
            sock.connect(self.socket_path)
        except TimeoutError as exc:
            sock.close()
            raise MemorydTimeoutError(f"connecting to {self.socket_path} timed out") from exc
        except OSError as exc:
            sock.close()
            raise connect_error(self.socket_path, exc) from exc
        except BaseException:
            sock.close()
            raise
        try:
            peer.check_server(sock, self.socket_path, self.trusted_uids)
        except BaseException:
            sock.close()
            raise
        logger.debug("memoryd: connected to %s", self.socket_path)
        return sock

    def _send(self, sock: socket.socket, payload: bytes, deadline: float) -> None:
        try:
            sock.settimeout(_time_left_s(deadline))
            sock.sendall(payload, _SEND_FLAGS)
        except TimeoutError as exc:
            raise MemorydTimeoutError("sending to memoryd timed out") from exc
        except OSError as exc:
            raise ConnectionLost(f"connection to memoryd broke: {exc}") from exc

    def _receive(self, sock: socket.socket, msgid: int, deadline: float) -> wire.Response:
        unpacker = self._unpacker
        assert unpacker is not None
        while True:
            for obj in calls.objects(unpacker):
                response = calls.read_message(obj)
                if response is None:
                    continue
                if response.msgid != msgid:
                    raise calls.unknown_msgid(response.msgid)
                return response
            calls.feed(unpacker, self._recv(sock, deadline))

    def _recv(self, sock: socket.socket, deadline: float) -> bytes:
        try:
            sock.settimeout(_time_left_s(deadline))
            chunk = sock.recv(calls.RECV_CHUNK_BYTES)
        except TimeoutError as exc:
            raise MemorydTimeoutError("memoryd did not answer in time") from exc
        except OSError as exc:
            raise ConnectionLost(f"connection to memoryd broke: {exc}") from exc
        if not chunk:
            raise ConnectionLost("memoryd closed the connection with a request in flight")
        return chunk

    def _drop(self) -> None:
        sock, self._sock, self._unpacker = self._sock, None, None
        if sock is not None:
            sock.close()
