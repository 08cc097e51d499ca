"""The wire protocol from raw bytes, against the real daemon's socket."""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.harness import Daemon


class RawConnection:
    """A bare Unix socket speaking msgpack, to send what a client never would."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(5)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def send(self, message: Any) -> None:
        self.sock.sendall(msgpack.packb(message, use_bin_type=True))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_until_closed(self, data: bytes) -> None:
        """Send what the daemon may refuse half-way: it closes as soon as it has
        seen too much, so the rest of the send can fail."""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(data)

    def receive(self, count: int = 1, timeout_s: float = 5) -> list[Any]:
        messages: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(messages) < count:
            messages.extend(self.unpacker)
            if len(messages) >= count:
                break
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed after {len(messages)} messages: {messages}")
            self.unpacker.feed(data)
        return messages

    def is_closed_by_server(self, timeout_s: float = 5) -> bool:
        self.sock.settimeout(timeout_s)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.unpacker.feed(data)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    daemon = Daemon(
        env_overrides={
            "MEMORYD_MAX_MESSAGE_BYTES": str(64 * 1024),
            "MEMORYD_MAX_INFLIGHT_PER_CONNECTION": "4",
            # Long, so that only the header can be why a stalled message is refused.
            "MEMORYD_MESSAGE_TIMEOUT_S": "60",
        }
    )
    try:
        yield daemon.start()
    finally:
        daemon.cleanup()


@pytest.fixture
def conn(daemon: Daemon) -> Iterator[RawConnection]:
    connection = RawConnection(daemon.socket_path)
    yield connection
    connection.close()


def assert_protocol_error(conn: RawConnection, code: str | None = None) -> None:
    [notification] = conn.receive(1)
    assert notification[0] == 2 and notification[1] == "protocol_error", notification
    assert isinstance(notification[2], list) and notification[2][0]["message"]
    if code is not None:
        assert notification[2][0]["code"] == code
    assert conn.is_closed_by_server()


def assert_still_serving(daemon: Daemon) -> None:
    other = RawConnection(daemon.socket_path)
    other.send([0, 7, "ping", []])
    assert other.receive(1) == [[1, 7, None, "pong"]]
    other.close()


def test_ping_bytes_exactly(conn: RawConnection) -> None:
    conn.send_bytes(bytes.fromhex("940001a470696e6790"))  # [0, 1, "ping", []]
    conn.sock.settimeout(5)
    assert conn.sock.recv(100) == bytes.fromhex("940101c0a4706f6e67")  # [1, 1, nil, "pong"]


def test_message_split_into_single_bytes(conn: RawConnection) -> None:
    data = msgpack.packb([0, 42, "hello", [{"client": "byte-at-a-time"}]])
    for byte in data:
        conn.send_bytes(bytes([byte]))
        time.sleep(0.001)
    [response] = conn.receive(1)
    assert response[:3] == [1, 42, None]
    assert response[3]["server"] == "memoryd"


def test_many_messages_in_one_write_all_answered_by_msgid(conn: RawConnection) -> None:
    # More requests than the in-flight cap (4): reading pauses, nothing is dropped.
    conn.send_bytes(b"".join(msgpack.packb([0, i, "ping", []]) for i in range(1, 301)))
    responses = conn.receive(300)
    assert sorted(r[1] for r in responses) == list(range(1, 301))
    assert all(r[0] == 1 and r[2] is None and r[3] == "pong" for r in responses)


def test_msgid_bounds(conn: RawConnection, daemon: Daemon) -> None:
    conn.send([0, 2**32 - 1, "ping", []])
    assert conn.receive(1) == [[1, 2**32 - 1, None, "pong"]]
    conn.send([0, 1, "ping", []])
    assert conn.receive(1) == [[1, 1, None, "pong"]]


@pytest.mark.parametrize(
    "message",
    [
        [0, 0, "ping", []],  # msgid 0 is reserved
        [0, -1, "ping", []],
        [0, 2**32, "ping", []],
        [0, "1", "ping", []],
        [0, 1.0, "ping", []],
        [0, 1, "ping"],  # a request has four elements
        [0, 1, 7, []],  # method must be a string
        [0, 1, "", []],
        [0, 1, "x" * 65, []],
        [0, 1, "ping", {"not": "an array"}],
        [0, 1, "ping", [1]],  # params holds one map
        [0, 1, "ping", [{}, {}]],
        [1, 1, None, "a response from a client"],
        [3, 1, "ping", []],
        [True, 1, "ping", []],
        "just a string",
        [],
        {"a": "map"},
    ],
)
def test_malformed_messages_close_only_that_connection(
    conn: RawConnection, daemon: Daemon, message: Any
) -> None:
    conn.send(message)
    assert_protocol_error(conn, "invalid_request")
    assert_still_serving(daemon)


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never used in msgpack
        b"\xdd\xff\xff\xff\xff",  # array32 announcing 4 billion items
        b"\xdf\xff\xff\xff\xff",  # map32 announcing 4 billion pairs
        bytes([0x94, 0x00, 0x01, 0xA4]) + b"p\xffng" + b"\x90",  # invalid UTF-8 in the method
        msgpack.packb([0, 1, "ping", [{1: "int key"}]]),
        b"\x91" * 5000 + b"\xc0",  # nesting deeper than the decoder allows
    ],
)
def test_garbage_and_hostile_headers_close_only_that_connection(
    conn: RawConnection, daemon: Daemon, data: bytes
) -> None:
    conn.send_bytes(data)
    assert_protocol_error(conn)
    assert_still_serving(daemon)


@pytest.mark.parametrize(
    "header",
    [b"\xdb\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff"],  # str32 of 4 GiB, bin32 of 2 GiB
    ids=["str32", "bin32"],
)
def test_huge_string_header_never_buffers_past_the_limit(
    conn: RawConnection, daemon: Daemon, header: bytes
) -> None:
    # The decoder waits for a string's body, but never holds more than
    # max_message_bytes plus slack of it: past that the connection is refused.
    conn.send_until_closed(header + b"z" * 256 * 1024)
    assert_protocol_error(conn, "too_large")
    assert_still_serving(daemon)


# [0, 1, "add", [{"agent_id": "a", "type": "t", "content": ...: what comes next is the content.
ADD_UP_TO_CONTENT = b"\x94\x00\x01\xa3add\x91\x83" + b"".join(
    msgpack.packb(s) for s in ("agent_id", "a", "type", "t", "content")
)


@pytest.mark.parametrize(
    "header",
    [
        b"\xdb" + struct.pack(">I", 500 * 2**20),  # str32 of 500 MB
        b"\xc6" + struct.pack(">I", 500 * 2**20),  # bin32
        b"\xc9" + struct.pack(">I", 500 * 2**20) + b"\x01",  # ext32
        b"\xdf\x00\x01\x00\x00",  # map32 of 65,536 entries: 131,072 objects
        b"\xdd\x00\x01\x00\x00" * 2,  # 65,536 arrays of 65,536 items: a byte each at least
    ],
    ids=["str32", "bin32", "ext32", "map32", "nested-arrays"],
)
def test_oversize_header_is_refused_as_soon_as_it_is_read(
    conn: RawConnection, daemon: Daemon, header: bytes
) -> None:
    # Nothing follows the header: the daemon must not wait for it.
    conn.send_bytes(ADD_UP_TO_CONTENT + header)
    [notification] = conn.receive(1, timeout_s=3)
    assert notification[:2] == [2, "protocol_error"]
    assert notification[2][0]["code"] == "too_large"
    assert conn.is_closed_by_server(timeout_s=1)
    assert_still_serving(daemon)


def test_a_large_message_that_fits_is_not_refused_on_its_headers(conn: RawConnection) -> None:
    # Headers announcing all the message may hold, sent in pieces: it is decoded.
    content = "y" * (64 * 1024 - 200)
    data = msgpack.packb([0, 8, "ping", [{"padding": content}]])
    for start in range(0, len(data), 1000):
        conn.send_bytes(data[start : start + 1000])
    [response] = conn.receive(1)
    assert response[:2] == [1, 8]
    assert response[2]["code"] == "invalid_request" and "padding" in response[2]["message"]


def test_message_larger_than_max_message_bytes(conn: RawConnection, daemon: Daemon) -> None:
    big = msgpack.packb([0, 1, "add", [{"agent_id": "a", "type": "t", "content": b"x" * 300_000}]])
    conn.send_until_closed(big)
    assert_protocol_error(conn, "too_large")
    assert_still_serving(daemon)


def test_message_of_many_small_values_is_bounded_too(conn: RawConnection, daemon: Daemon) -> None:
    # The decoder builds a message as its bytes arrive; the limit must count
    # the message's bytes, not just what is still buffered.
    many = msgpack.packb(
        [0, 1, "add", [{"agent_id": "a", "type": "t", "content": [["ab"] * 100] * 2000}]]
    )
    conn.send_until_closed(many)
    assert_protocol_error(conn, "too_large")
    assert_still_serving(daemon)


def test_unknown_method_is_an_error_response_not_a_close(conn: RawConnection) -> None:
    conn.send([0, 5, "frobnicate", []])
    [response] = conn.receive(1)
    assert response[:2] == [1, 5]
    assert response[2]["code"] == "invalid_request"
    assert "frobnicate" in response[2]["message"] and response[2]["retryable"] is False
    conn.send([0, 6, "ping", []])
    assert conn.receive(1) == [[1, 6, None, "pong"]]


def test_unknown_argument_names_the_argument(conn: RawConnection) -> None:
    conn.send([0, 9, "ping", [{"colour": "blue"}]])
    [response] = conn.receive(1)
    assert response[2]["code"] == "invalid_request"
    assert "colour" in response[2]["message"]


def test_client_notifications_are_ignored(conn: RawConnection) -> None:
    conn.send([2, "something", [{}]])
    conn.send([0, 3, "ping", []])
    assert conn.receive(1) == [[1, 3, None, "pong"]]


def test_pipelined_writes_of_one_agent_keep_their_order(conn: RawConnection) -> None:
    agent = f"pipeline_{time.monotonic_ns()}"
    requests = [
        [
            0,
            i,
            "add",
            [
                {
                    "agent_id": agent,
                    "type": "step",
                    "content": i,
                    "id": f"R{i:04d}",
                    "created_at": 1_700_000_000 + i,
                }
            ],
        ]
        for i in range(1, 101)
    ]
    conn.send_bytes(b"".join(msgpack.packb(r) for r in requests))
    responses = conn.receive(100)
    assert all(r[2] is None for r in responses), [r[2] for r in responses if r[2]][:3]
    conn.send([0, 1000, "recent", [{"agent_id": agent, "limit": 100, "order": "oldest"}]])
    [response] = conn.receive(1)
    assert [r["content"] for r in response[3]["records"]] == list(range(1, 101))


def test_a_client_that_never_reads_does_not_hurt_others(daemon: Daemon) -> None:
    stubborn = RawConnection(daemon.socket_path)
    stubborn.sock.setblocking(False)
    request = msgpack.packb([0, 1, "status", []])
    sent = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            sent += stubborn.sock.send(request * 64)
        except BlockingIOError:
            break  # the daemon stopped reading from us: back-pressure works
    assert time.monotonic() < deadline, "the daemon kept reading from a client that never reads"
    assert_still_serving(daemon)
    stubborn.close()
    assert_still_serving(daemon)


def test_the_listen_queue_holds_a_burst_of_connections_not_yet_accepted(daemon: Daemon) -> None:
    """The socket listens with a queue of 1024 (not the event loop's default of 100):
    connections that arrive while the daemon is busy wait to be accepted."""
    burst = 300
    opened: list[socket.socket] = []
    refused = 0
    daemon.signal(signal.SIGSTOP)  # a daemon too busy to accept
    try:
        for _ in range(burst):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(str(daemon.socket_path))
            except BlockingIOError:  # the listen queue is full
                sock.close()
                refused += 1
                continue
            opened.append(sock)
    finally:
        daemon.signal(signal.SIGCONT)
    for sock in opened:
        sock.close()
    assert refused == 0, f"{refused} of {burst} connections found the listen queue full"
    assert_still_serving(daemon)


def test_an_idle_connection_reserves_little_memory(daemon_dir: Daemon) -> None:
    """A connection's decoder starts with a small buffer that grows as a message needs,
    not with a megabyte: at the default max_message_bytes (1 MiB), 300 connections, each
    after one ping, add less than 200 MiB of address space (about 390 MiB when every
    decoder reserved a whole message's worth)."""
    daemon_dir.env_overrides = {"MEMORYD_MAX_CONNECTIONS_PER_UID": "1024"}  # all 300 are ours
    daemon = daemon_dir.start()

    def data_bytes() -> int:
        assert daemon.process is not None
        with open(f"/proc/{daemon.process.pid}/status") as status:
            return next(
                int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:")
            )

    before = data_bytes()
    connections = [RawConnection(daemon.socket_path) for _ in range(300)]
    for n, connection in enumerate(connections, start=1):
        connection.send([0, n, "ping", []])
    for n, connection in enumerate(connections, start=1):
        assert connection.receive(1) == [[1, n, None, "pong"]]
    grown = data_bytes() - before
    for connection in connections:
        connection.close()
    assert grown < 200 * 1024 * 1024, f"300 idle connections took {grown >> 20} MiB"
    assert_still_serving(daemon)
