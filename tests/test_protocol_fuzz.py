"""Hostile and random input on the socket: the daemon survives, its memory
stays bounded, and other clients never notice."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memoryd_client import Client
from tests.harness import Daemon

MAX_MESSAGE_BYTES = 64 * 1024

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=30,
)
methods = st.sampled_from(
    [
        "hello",
        "ping",
        "add",
        "add_many",
        "get",
        "update",
        "delete",
        "recent",
        "search",
        "stats",
        "clear",
        "agents",
        "status",
        "nope",
        "",
    ]
)
argument_names = st.sampled_from(
    [
        "agent_id",
        "type",
        "content",
        "id",
        "limit",
        "types",
        "tags",
        "records",
        "query",
        "ttl_s",
        "importance",
        "metadata",
        "durability",
        "order",
        "since",
        "prefix",
        "x",
    ]
)
requests = st.builds(
    lambda msgid, method, args: [0, msgid, method, [args]],
    st.integers(min_value=-5, max_value=2**33),
    methods,
    st.dictionaries(argument_names, values, max_size=5),
)
messages = st.one_of(requests, values, st.lists(values, min_size=0, max_size=5))


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    daemon = Daemon(env_overrides={"MEMORYD_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES)})
    try:
        yield daemon.start()
    finally:
        daemon.cleanup()


def exchange(daemon: Daemon, data: bytes, chunk: int) -> list[Any]:
    """Send ``data`` in chunks, then read what comes back until quiet or closed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(daemon.socket_path))
        sock.settimeout(2)
        try:
            for start in range(0, len(data), chunk):
                sock.sendall(data[start : start + chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass
        # Half-close: the daemon answers what it got, then sees the end.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        sock.settimeout(5)
        while True:
            try:
                received = sock.recv(65536)
            except ConnectionResetError:
                break
            if not received:
                break
            unpacker.feed(received)
        return list(unpacker)


def check_answers(answers: list[Any]) -> None:
    for answer in answers:
        assert isinstance(answer, list) and answer[0] in (1, 2), answer
        if answer[0] == 1:
            _, msgid, error, _ = answer
            assert 1 <= msgid <= 2**32 - 1
            assert error is None or error["code"] in (
                "invalid_request",
                "not_found",
                "too_large",
                "backend_unavailable",
            ), error
        else:
            assert answer[1] == "protocol_error"


def assert_healthy(daemon: Daemon) -> None:
    assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
    with Client(daemon.socket_path, timeout_s=5) as client:
        assert client.ping() == "pong"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(messages, min_size=1, max_size=8), chunk=st.sampled_from([1, 7, 4096]))
def test_random_messages(daemon: Daemon, batch: list[Any], chunk: int) -> None:
    data = b"".join(msgpack.packb(m, use_bin_type=True) for m in batch)
    check_answers(exchange(daemon, data, chunk))
    assert_healthy(daemon)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    request=requests,
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4),
    cut=st.integers(min_value=0),
)
def test_mutated_messages(
    daemon: Daemon, request: list[Any], flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(msgpack.packb(request, use_bin_type=True))
    for position, byte in flips:
        data[position % len(data)] = byte
    data = data[: max(1, cut % (len(data) + 1))]
    check_answers(exchange(daemon, bytes(data), 64))
    assert_healthy(daemon)


@pytest.mark.parametrize(
    "header",
    [
        b"\xdb\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
        b"\xdd\x00\x01\x00\x00",
        b"\xdf\x00\x01\x00\x00",
        b"\xc9\xff\xff\xff\xff\x01",
    ],
)
def test_huge_headers_do_not_grow_the_daemon(daemon: Daemon, header: bytes) -> None:
    assert daemon.process is not None
    process = psutil.Process(daemon.process.pid)
    before = process.memory_info().rss
    for _ in range(20):
        exchange(daemon, header + b"\x00" * 200_000, 65536)
    growth = process.memory_info().rss - before
    assert growth < 32 * 1024 * 1024, f"RSS grew by {growth} bytes"
    assert_healthy(daemon)


def flood(sockets: list[socket.socket], request: bytes) -> None:
    """Send until every socket blocks: the daemon stopped reading from it."""
    for sock in sockets:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                sock.send(request * 16)
            except BlockingIOError:
                break
        else:
            raise AssertionError("the daemon kept reading from a client that never reads")


def test_many_clients_that_never_read_keep_memory_bounded(daemon: Daemon) -> None:
    from memoryd.transport import WRITE_HIGH_WATER_BYTES

    assert daemon.process is not None
    process = psutil.Process(daemon.process.pid)
    with Client(daemon.socket_path) as client:
        client.add_many(
            [{"agent_id": "stubborn", "type": "note", "content": "文" * 600} for _ in range(50)]
        )
    # Every answer is ~90 KB: a client that never reads fills its buffers quickly.
    request = msgpack.packb([0, 1, "recent", [{"agent_id": "stubborn", "limit": 50}]])
    answer_bytes = 100 * 1024
    before = process.memory_info().rss
    stubborn = []
    for _ in range(20):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(daemon.socket_path))
        sock.setblocking(False)
        stubborn.append(sock)
    try:
        flood(stubborn, request)
        assert_healthy(daemon)
        grown = process.memory_info().rss - before
        # Per stalled client: its write buffer up to the high-water mark, plus
        # the answers of the requests already in flight (at most 128).
        bound = len(stubborn) * (WRITE_HIGH_WATER_BYTES + 128 * answer_bytes)
        assert grown < bound, f"RSS grew by {grown} bytes, bound {bound}"
        flood(stubborn, request)  # pushing on changes nothing: reading stays paused
        assert process.memory_info().rss - before < grown + 8 * 1024 * 1024
        assert_healthy(daemon)
    finally:
        for sock in stubborn:
            sock.close()
    assert_healthy(daemon)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/<pid>/status")


def test_memory_of_many_closed_connections_goes_back() -> None:
    import resource

    connections = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * connections)), hard))
    daemon = Daemon(
        env_overrides={
            "MEMORYD_MAX_CONNECTIONS": str(2 * connections),
            "MEMORYD_MAX_CONNECTIONS_PER_UID": str(2 * connections),
            "MEMORYD_LOG_LEVEL": "INFO",
        }
    )
    try:
        daemon.start()
        assert daemon.process is not None
        pid = daemon.process.pid
        # Each connection pipelines a few requests and one large-ish message.
        traffic = b"".join(msgpack.packb([0, i, "ping", []]) for i in range(1, 21))
        traffic += msgpack.packb([0, 21, "ping", [{"padding": "x" * 200_000}]])
        exchange(daemon, traffic, 65536)  # the daemon's own first allocations
        before = rss_bytes(pid)
        socks = []
        for _ in range(connections):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(daemon.socket_path))
            sock.settimeout(10)
            socks.append(sock)
        for sock in socks:
            sock.sendall(traffic)
            unpacker = msgpack.Unpacker(raw=False)
            answers = 0
            while answers < 21:
                unpacker.feed(sock.recv(65536))
                answers += sum(1 for _ in unpacker)
        while_open = rss_bytes(pid) - before
        for sock in socks:
            sock.close()
        # Buffers start small and grow only for the large message (before: a
        # 1 MiB decoder buffer and a 256 KiB packer per connection).
        assert while_open < connections * 128 * 1024, f"RSS grew by {while_open} bytes"
        # Once they are closed the daemon gives the memory back (it was about
        # 43 MiB above `before` for good, however long one waited).
        deadline = time.monotonic() + 5
        while (after := rss_bytes(pid) - before) >= 16 * 1024 * 1024:
            if time.monotonic() > deadline:
                raise AssertionError(f"RSS still {after} bytes above where it was")
            time.sleep(0.1)
        assert_healthy(daemon)
    finally:
        daemon.cleanup()
