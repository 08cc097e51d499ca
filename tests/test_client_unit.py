"""Unit tests of memoryd_client against a scripted MessagePack-RPC server.

The server runs in threads on a short Unix socket path under /tmp; each test
scripts what it answers, so the client's retry, reconnect and pipelining paths
can be driven precisely without the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest

from memoryd_client import AsyncClient, Client, RecordList, RetryPolicy, errors, wire
from memoryd_client.calls import MsgIds

FAST = RetryPolicy(initial_backoff_s=0.005, max_backoff_s=0.05)
HANG_UP = object()
SILENCE = object()


# Scripted server -------------------------------------------------------------


class Peer:
    """One accepted connection of the scripted server."""

    def __init__(self, server: FakeServer, sock: socket.socket, index: int) -> None:
        self.server = server
        self.sock = sock
        self.index = index
        self._unpacker = msgpack.Unpacker(raw=False)
        self._packer = msgpack.Packer(use_bin_type=True)

    def read(self) -> Any:
        """The next request (recorded on the server), or None at EOF."""
        while True:
            with contextlib.suppress(StopIteration):
                obj = next(self._unpacker)
                self.server.record(obj)
                return obj
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return None
            if not chunk:
                return None
            self._unpacker.feed(chunk)

    def send(self, obj: Any) -> None:
        self.sock.sendall(self._packer.pack(obj))


Handler = Callable[[Peer], None]
Answer = Callable[[Peer, list[Any]], Any]


class FakeServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[list[Any]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def start(self) -> FakeServer:
        self._listener.bind(self.path)
        self._listener.listen(64)
        self._listener.settimeout(0.01)
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def record(self, request: Any) -> None:
        with self._lock:
            self.requests.append(request)

    def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"only {len(self.requests)} requests"
            time.sleep(0.005)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(None)
            with self._lock:
                self._socks.append(sock)
                peer = Peer(self, sock, self.connections)
                self.connections += 1
            self._spawn(self._serve, peer)

    def _serve(self, peer: Peer) -> None:
        try:
            self.handler(peer)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            peer.sock.close()


def serve(answer: Answer) -> Handler:
    """A handler that replies to each request with ``answer(peer, request)``."""

    def handler(peer: Peer) -> None:
        while (request := peer.read()) is not None:
            reply = answer(peer, request)
            if reply is HANG_UP:
                return
            if reply is not SILENCE:
                peer.send(reply)

    return handler


def ok(request: list[Any], result: Any) -> list[Any]:
    return [1, request[1], None, result]


def fail(request: list[Any], code: str) -> list[Any]:
    return [1, request[1], wire.error_object(code, "scripted"), None]


def args_of(request: list[Any]) -> dict[str, Any]:
    params = request[3]
    return params[0] if params else {}


def a_record(args: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": args.get("id", "01HZZZZZZZZZZZZZZZZZZZZZZZ"),
        "agent_id": args.get("agent_id", "craftsman_1"),
        "type": "discussion",
        "content": args.get("content", "hello"),
        "author": None,
        "importance": 0.5,
        "tags": [],
        "metadata": {},
        "created_at": 1.0,
        "expires_at": None,
    }


def canned(request: list[Any]) -> Any:
    """What a healthy daemon would answer, well enough for the client."""
    method, args = request[2], args_of(request)
    results: dict[str, Callable[[], Any]] = {
        "hello": lambda: {"server": "memoryd", "version": "0", "protocol": 1},
        "ping": lambda: "pong",
        "add": lambda: {"id": args["id"], "created_at": args["created_at"]},
        "add_many": lambda: {"ids": [r["id"] for r in args["records"]]},
        "get": lambda: a_record(args),
        "update": lambda: a_record(args),
        "delete": lambda: {"deleted": True},
        "recent": lambda: {"records": [a_record(args)], "degraded": True},
        "search": lambda: {"records": [a_record(args)], "degraded": False},
        "stats": lambda: {
            "count": 1,
            "by_type": {"x": 1},
            "bytes": 9,
            "oldest": 1.0,
            "newest": 1.0,
        },
        "clear": lambda: {"deleted": 3},
        "agents": lambda: ["a", "b"],
        "status": lambda: {"state": "healthy"},
    }
    return ok(request, results[method]())


def canned_answer(peer: Peer, request: list[Any]) -> Any:
    return canned(request)


# Fixtures --------------------------------------------------------------------


@pytest.fixture
def sock_path() -> Iterator[str]:
    # A Unix socket path must stay under ~100 bytes: pytest's tmp_path may not.
    directory = tempfile.mkdtemp(prefix="mdc-", dir="/tmp")
    try:
        yield os.path.join(directory, "s.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def start_server(sock_path: str) -> Iterator[Callable[[Handler], FakeServer]]:
    servers: list[FakeServer] = []

    def start(handler: Handler) -> FakeServer:
        server = FakeServer(sock_path, handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def client(sock_path: str) -> Iterator[Client]:
    with Client(sock_path, timeout_s=5.0, retry=FAST) as c:
        yield c


# Request shape, msgids, results ------------------------------------------------


def test_request_shape_and_msgids(
    start_server: Callable[[Handler], FakeServer], client: Client
) -> None:
    server = start_server(serve(canned_answer))
    assert client.ping() == "pong"
    result = client.add("craftsman_1", "discussion", {"text": "hi"}, importance=0.7)
    assert server.requests[0] == [0, 1, "ping", []]
    kind, msgid, method, params = server.requests[1]
    assert (kind, msgid, method) == (0, 2, "add")
    assert len(params) == 1
    args = params[0]
    # Arguments left as None are not sent.
    assert set(args) == {"agent_id", "type", "content", "importance", "id", "created_at"}
    assert args["content"] == {"text": "hi"}
    assert len(args["id"]) == 26
    assert abs(args["created_at"] - time.time()) < 5
    assert result == {"id": args["id"], "created_at": args["created_at"]}


def test_msgids_wrap_and_skip_zero(
    start_server: Callable[[Handler], FakeServer], client: Client
) -> None:
    ids = MsgIds(wire.MAX_MSGID - 1)
    assert [ids.take() for _ in range(4)] == [wire.MAX_MSGID - 1, wire.MAX_MSGID, 1, 2]
    server = start_server(serve(canned_answer))
    client._msgids = MsgIds(wire.MAX_MSGID)
    client.ping()
    client.ping()
    assert [r[1] for r in server.requests] == [wire.MAX_MSGID, 1]


def test_every_method_sends_its_arguments_and_shapes_its_result(
    start_server: Callable[[Handler], FakeServer], client: Client
) -> None:
    server = start_server(serve(canned_answer))
    assert client.hello("tester")["server"] == "memoryd"
    ids = client.add_many([{"agent_id": "a", "type": "t", "content": 1, "author": None}])
    assert len(ids) == 1 and len(ids[0]) == 26
    assert client.get("a", "x")["id"] == "x"
    assert client.update("a", "x", content=None)["id"] == "x"
    assert client.delete("a", "x") is True
    recent = client.recent("a", limit=5, types=["t"], exclude_author="me", order="oldest")
    assert isinstance(recent, RecordList) and recent.degraded is True and len(recent) == 1
    found = client.search("a", "needle")
    assert found.degraded is False and found[0]["agent_id"] == "a"
    assert client.stats("a")["count"] == 1
    assert client.clear("a") == 3
    assert client.agents(prefix="a") == ["a", "b"]
    assert client.status() == {"state": "healthy"}
    sent = {r[2]: args_of(r) for r in server.requests}
    assert sent["hello"] == {"client": "tester", "protocol": wire.PROTOCOL_VERSION}
    assert set(sent["add_many"]["records"][0]) == {
        "agent_id",
        "type",
        "content",
        "id",
        "created_at",
    }
    # update sends exactly the fields given, None included.
    assert sent["update"] == {"agent_id": "a", "id": "x", "content": None}
    assert sent["recent"] == {
        "agent_id": "a",
        "limit": 5,
        "types": ["t"],
        "exclude_author": "me",
        "order": "oldest",
    }
    assert sent["search"] == {"agent_id": "a", "query": "needle"}
    assert sent["agents"] == {"prefix": "a"}
    assert server.requests[-1][3] == []


def test_tags_as_a_string_is_refused(client: Client) -> None:
    with pytest.raises(TypeError):
        client.add("a", "t", "x", tags="stage1")


def test_unexpected_result_shape_is_a_protocol_error(
    start_server: Callable[[Handler], FakeServer], client: Client
) -> None:
    start_server(serve(lambda peer, request: ok(request, ["not", "a", "map"])))
    with pytest.raises(errors.ProtocolError):
        client.delete("a", "x")


# Retries -----------------------------------------------------------------------


def drop_first_connection(peer: Peer, request: list[Any]) -> Any:
    return HANG_UP if peer.index == 0 else canned(request)


def test_add_is_the_same_write_after_a_lost_answer(
    start_server: Callable[[Handler], FakeServer], client: Client
) -> None:
    server = start_server(serve(drop_first_connection))
    result = client.add("a", "t", "x")
    first, second = server.requests
    assert first[1] != second[1]
    assert args_of(first) == args_of(second)
    assert result["id"] == args_of(first)["id"]
    assert server.connections == 2


def test_add_many_is_the_same_write_after_a_lost_answer(
    start_server: Callable[[Handler], FakeServer], client: Client
) -> None:
    server = start_server(serve(drop_first_connection))
    mine = {"agent_id": "a", "type": "t", "content": "x", "id": "MINE"}
    records = [{"agent_id": "a", "type": "t", "content": "y"}, mine]
    ids = client.add_many(records)
    first, second = (args_of(r)["records"] for r in server.requests)
    assert first == second
    assert ids[1] == "MINE" and ids[0] == first[0]["id"]
    assert "id" not in records[0]  # the caller's mappings are left alone


@pytest.mark.parametrize("code", sorted(wire.RETRYABLE_CODES))
def test_retryable_error_is_retried(
    start_server: Callable[[Handler], FakeServer], client: Client, code: str
) -> None:
    def answer(peer: Peer, request: list[Any]) -> Any:
        return fail(request, code) if request[1] == 1 else canned(request)

    server = start_server(serve(answer))
    assert client.ping() == "pong"
    assert len(server.requests) == 2
    assert server.connections == 1


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("invalid_request", errors.InvalidRequest),
        ("not_found", errors.NotFound),
        ("too_large", errors.TooLarge),
        ("unauthorized", errors.Unauthorized),
        ("internal", errors.InternalError),
        ("from_the_future", errors.InternalError),
    ],
)
def test_non_retryable_error_raises_at_once(
    start_server: Callable[[Handler], FakeServer],
    client: Client,
    code: str,
    cls: type[errors.MemorydError],
) -> None:
    server = start_server(serve(lambda peer, request: fail(request, code)))
    with pytest.raises(cls) as caught:
        client.get("a", "x")
    assert caught.value.code == code
    assert len(server.requests) == 1


def test_retryable_error_until_the_deadline_raises_it(
    start_server: Callable[[Handler], FakeServer], sock_path: str
) -> None:
    start_server(serve(lambda peer, request: fail(request, "overloaded")))
    with Client(sock_path, timeout_s=0.2, retry=FAST) as c, pytest.raises(errors.Overloaded):
        c.ping()


def test_reconnects_after_a_server_restart(
    start_server: Callable[[Handler], FakeServer], client: Client
) -> None:
    start_server(serve(canned_answer)).stop()
    assert not os.path.exists(client.socket_path)
    second = start_server(serve(canned_answer))
    assert client.ping() == "pong"
    second.stop()
    # Down while the call starts; back 0.2 s later, within the deadline.
    timer = threading.Timer(0.2, start_server, args=(serve(canned_answer),))
    timer.start()
    try:
        assert client.ping() == "pong"
    finally:
        timer.join()


def test_connect_error_when_nothing_listens(sock_path: str) -> None:
    started = time.monotonic()
    with Client(sock_path, timeout_s=0.3, retry=FAST) as c, pytest.raises(errors.ConnectError):
        c.ping()
    assert 0.25 < time.monotonic() - started < 2
    # A socket file nobody listens on: connection refused.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    try:
        with Client(sock_path, timeout_s=0.2, retry=FAST) as c:
            with pytest.raises(ConnectionError) as caught:
                c.ping()
            assert isinstance(caught.value, errors.ConnectError)
    finally:
        stale.close()


def test_no_retry_fails_fast(sock_path: str) -> None:
    started = time.monotonic()
    with Client(sock_path, timeout_s=5, retry=False) as c, pytest.raises(errors.ConnectError):
        c.ping()
    assert time.monotonic() - started < 0.5


def test_timeout_when_the_server_never_answers(
    start_server: Callable[[Handler], FakeServer], sock_path: str
) -> None:
    start_server(serve(lambda peer, request: SILENCE))
    started = time.monotonic()
    with Client(sock_path, timeout_s=5, retry=FAST) as c:
        with pytest.raises(TimeoutError) as caught:
            c.ping(timeout_s=0.3)
        assert isinstance(caught.value, errors.MemorydTimeoutError)
    assert 0.25 < time.monotonic() - started < 2


# Protocol violations -------------------------------------------------------------


def test_protocol_error_notification(
    start_server: Callable[[Handler], FakeServer], client: Client
) -> None:
    def answer(peer: Peer, request: list[Any]) -> Any:
        peer.send([2, "protocol_error", [{"code": "too_large", "message": "too big"}]])
        return HANG_UP

    server = start_server(serve(answer))
    with pytest.raises(errors.ProtocolError, match="too_large"):
        client.ping()
    assert len(server.requests) == 1


def test_unknown_notification_is_ignored(
    start_server: Callable[[Handler], FakeServer], client: Client
) -> None:
    def answer(peer: Peer, request: list[Any]) -> Any:
        peer.send([2, "something_new", [{"x": 1}]])
        return canned(request)

    start_server(serve(answer))
    assert client.ping() == "pong"
    assert client.ping() == "pong"


def test_response_to_an_unknown_msgid_drops_the_connection(
    start_server: Callable[[Handler], FakeServer], client: Client
) -> None:
    def answer(peer: Peer, request: list[Any]) -> Any:
        return [1, request[1] + 1000, None, "pong"] if peer.index == 0 else canned(request)

    server = start_server(serve(answer))
    with pytest.raises(errors.ProtocolError):
        client.ping()
    assert client.ping() == "pong"
    assert server.connections == 2


# Blocking client life cycle ------------------------------------------------------


def test_socket_path_resolution(monkeypatch: pytest.MonkeyPatch, sock_path: str) -> None:
    monkeypatch.setenv(wire.SOCKET_PATH_ENV, sock_path)
    assert Client().socket_path == sock_path
    assert AsyncClient().socket_path == sock_path
    assert Client("/tmp/elsewhere.sock").socket_path == "/tmp/elsewhere.sock"
    monkeypatch.delenv(wire.SOCKET_PATH_ENV)
    assert Client().socket_path == wire.default_socket_path()


def test_env_socket_path_is_used_to_connect(
    monkeypatch: pytest.MonkeyPatch,
    start_server: Callable[[Handler], FakeServer],
    sock_path: str,
) -> None:
    monkeypatch.setenv(wire.SOCKET_PATH_ENV, sock_path)
    start_server(serve(canned_answer))
    with Client(timeout_s=2) as c:
        assert c.ping() == "pong"


def test_connect_close_and_use_after_close(
    start_server: Callable[[Handler], FakeServer], sock_path: str
) -> None:
    server = start_server(serve(canned_answer))
    c = Client(sock_path, timeout_s=2)
    c.connect()
    deadline = time.monotonic() + 5
    while server.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert server.connections == 1
    c.close()
    assert c.closed
    with pytest.raises(errors.ClientClosed):
        c.ping()


def test_threads_share_one_client(
    start_server: Callable[[Handler], FakeServer], client: Client
) -> None:
    server = start_server(serve(canned_answer))
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                assert client.get("a", f"{n}-{i}")["id"] == f"{n}-{i}"
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert server.connections == 1
    assert len({r[1] for r in server.requests}) == 160


def test_client_never_imports_the_daemon() -> None:
    code = (
        "import sys, memoryd_client.aio, memoryd_client.client;"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'memoryd'], 'memoryd'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# AsyncClient -----------------------------------------------------------------------


async def test_async_pipelines_200_requests_answered_in_reverse(
    start_server: Callable[[Handler], FakeServer], sock_path: str
) -> None:
    count = 200

    def handler(peer: Peer) -> None:
        requests = [peer.read() for _ in range(count)]
        for request in reversed(requests):
            peer.send(canned(request))
        while peer.read() is not None:
            pass

    server = start_server(handler)
    async with AsyncClient(sock_path, timeout_s=5, retry=FAST) as c:
        records = await asyncio.gather(*(c.get("a", f"id-{i}") for i in range(count)))
    assert [r["id"] for r in records] == [f"id-{i}" for i in range(count)]
    assert server.connections == 1
    assert len({r[1] for r in server.requests}) == count


async def test_async_all_methods(
    start_server: Callable[[Handler], FakeServer], sock_path: str
) -> None:
    start_server(serve(canned_answer))
    async with AsyncClient(sock_path, timeout_s=5, retry=FAST) as c:
        await c.connect()
        assert (await c.hello())["protocol"] == 1
        assert await c.ping() == "pong"
        added = await c.add("a", "t", "x", tags=["s1"], ttl_s=60)
        assert len(added["id"]) == 26
        assert len(await c.add_many([{"agent_id": "a", "type": "t", "content": 1}])) == 1
        assert (await c.get("a", "x"))["id"] == "x"
        assert (await c.update("a", "x", importance=0.9))["id"] == "x"
        assert await c.delete("a", "x") is True
        assert (await c.recent("a", since=1.0)).degraded is True
        assert (await c.search("a", "q", limit=3)).degraded is False
        assert (await c.stats("a"))["bytes"] == 9
        assert await c.clear("a") == 3
        assert await c.agents() == ["a", "b"]
        assert (await c.status())["state"] == "healthy"


async def test_async_lost_connection_retries_every_pending_call(
    start_server: Callable[[Handler], FakeServer], sock_path: str
) -> None:
    count = 10

    def handler(peer: Peer) -> None:
        if peer.index == 0:
            for _ in range(count):
                peer.read()
            return  # EOF with every request in flight
        serve(canned_answer)(peer)

    server = start_server(handler)
    async with AsyncClient(sock_path, timeout_s=5, retry=FAST) as c:
        results = await asyncio.gather(*(c.add("a", "t", i) for i in range(count)))
    first = {args_of(r)["content"]: args_of(r) for r in server.requests[:count]}
    retried = {args_of(r)["content"]: args_of(r) for r in server.requests[count:]}
    assert first == retried
    assert [r["id"] for r in results] == [first[i]["id"] for i in range(count)]
    assert server.connections == 2


async def test_async_retryable_then_non_retryable(
    start_server: Callable[[Handler], FakeServer], sock_path: str
) -> None:
    def answer(peer: Peer, request: list[Any]) -> Any:
        if request[2] == "get":
            return fail(request, "not_found")
        return fail(request, "wal_full") if request[1] == 1 else canned(request)

    server = start_server(serve(answer))
    async with AsyncClient(sock_path, timeout_s=5, retry=FAST) as c:
        assert (await c.add("a", "t", "x"))["id"]
        with pytest.raises(errors.NotFound) as caught:
            await c.get("a", "x")
    assert caught.value.code == "not_found"
    assert [r[2] for r in server.requests] == ["add", "add", "get"]


async def test_async_protocol_error_fails_pending_calls(
    start_server: Callable[[Handler], FakeServer], sock_path: str
) -> None:
    def handler(peer: Peer) -> None:
        for _ in range(3):
            peer.read()
        peer.send([2, "protocol_error", [{"code": "invalid", "message": "bad bytes"}]])

    server = start_server(handler)
    async with AsyncClient(sock_path, timeout_s=5, retry=FAST) as c:
        outcomes = await asyncio.gather(*(c.ping() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, errors.ProtocolError) for o in outcomes), outcomes
    assert len(server.requests) == 3


async def test_async_connect_error_and_timeout(
    start_server: Callable[[Handler], FakeServer], sock_path: str
) -> None:
    async with AsyncClient(sock_path, timeout_s=0.3, retry=FAST) as c:
        with pytest.raises(errors.ConnectError):
            await c.ping()
        start_server(serve(lambda peer, request: SILENCE))
        started = time.monotonic()
        with pytest.raises(errors.MemorydTimeoutError):
            await c.ping()
        assert time.monotonic() - started < 2


async def test_async_late_answer_after_a_timeout_is_dropped(
    start_server: Callable[[Handler], FakeServer], sock_path: str
) -> None:
    def answer(peer: Peer, request: list[Any]) -> Any:
        if request[1] == 1:
            time.sleep(0.3)
        return canned(request)

    server = start_server(serve(answer))
    async with AsyncClient(sock_path, timeout_s=5, retry=FAST) as c:
        with pytest.raises(errors.MemorydTimeoutError):
            await c.ping(timeout_s=0.1)
        assert await c.ping() == "pong"
        assert await c.ping() == "pong"
    assert server.connections == 1


async def test_async_aclose_fails_pending_calls(
    start_server: Callable[[Handler], FakeServer], sock_path: str
) -> None:
    server = start_server(serve(lambda peer, request: SILENCE))
    c = AsyncClient(sock_path, timeout_s=5, retry=FAST)
    tasks = [asyncio.create_task(c.ping()) for _ in range(5)]
    while len(server.requests) < 5:
        await asyncio.sleep(0.005)
    await c.aclose()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, errors.ClientClosed) for o in outcomes), outcomes
    with pytest.raises(errors.ClientClosed):
        await c.ping()


async def test_async_reconnects_after_a_server_restart(
    start_server: Callable[[Handler], FakeServer], sock_path: str
) -> None:
    first = start_server(serve(canned_answer))
    async with AsyncClient(sock_path, timeout_s=5, retry=FAST) as c:
        assert await c.ping() == "pong"
        first.stop()
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, start_server, serve(canned_answer))
        assert await c.ping() == "pong"


def _public_methods(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


def test_the_two_clients_offer_the_same_methods_with_the_same_signatures_and_docs() -> None:
    """One API in two flavours: a method added to, or changed in, one client alone fails here."""
    sync_methods = _public_methods(Client)
    async_methods = _public_methods(AsyncClient)
    # Closing is the one place the names differ by convention (close / aclose).
    assert set(sync_methods) - {"close"} == set(async_methods) - {"aclose"}
    for name in sorted(set(sync_methods) - {"close"}):
        sync_method, async_method = sync_methods[name], async_methods[name]
        assert inspect.iscoroutinefunction(async_method), name
        assert inspect.signature(sync_method) == inspect.signature(async_method), name
        assert inspect.getdoc(sync_method) == inspect.getdoc(async_method), name
        assert inspect.getdoc(sync_method), f"{name} has no docstring"


def test_retryability_comes_from_one_table_of_codes() -> None:
    for code in wire.ERROR_CODES:
        error = errors.error_from_wire({"code": code, "message": "m"})
        assert error.code == code
        assert error.retryable is (code in wire.RETRYABLE_CODES), code
    assert errors.ConnectError("refused").retryable
    assert errors.ConnectionLost("cut").retryable
    for final in (errors.ClientClosed, errors.UntrustedServer, errors.ProtocolError):
        assert not final("no").retryable, final
    assert not errors.MemorydTimeoutError("late").retryable
    # A code this client does not know keeps its name and the server's verdict.
    newer = errors.error_from_wire({"code": "quota_exceeded", "message": "m", "retryable": True})
    assert isinstance(newer, errors.InternalError)
    assert (newer.code, newer.retryable) == ("quota_exceeded", True)
