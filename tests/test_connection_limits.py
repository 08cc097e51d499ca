"""Nobody holds a connection for free: a started message has a deadline, an
idle connection is closed, one uid cannot take every slot, root keeps a
reserve for `memoryd status`, and hostile clients cannot flood the log.

Real daemons, raw sockets, and a real second user (``nobody``, by switching
the effective uid around connect(): the daemon sees it through SO_PEERCRED).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import signal
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

import memoryd_client
from tests.daemons import (
    RawConnection,
    acting_as,
    eventually,
    open_to_everyone,
    run_cli,
)
from tests.harness import Daemon, running_daemon, wait_until

pytestmark = pytest.mark.timeout(120)

# The first bytes of a request, [0, 1, "ping", ...: a message that has started.
STARTED_MESSAGE = b"\x94\x00\x01\xa4ping"
GARBAGE = b"\xc1"  # a byte msgpack never uses


def nobody() -> tuple[int, int]:
    if os.geteuid() != 0:
        pytest.skip("acting as a second user needs root")
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def stalled_connections(daemon: Daemon, count: int) -> list[RawConnection]:
    """``count`` connections that each start a message and send no more."""
    connections = []
    for _ in range(count):
        connection = RawConnection(daemon.socket_path, timeout_s=5)
        # A refused one may be closed before the bytes go: ``refused`` tells.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.send_bytes(STARTED_MESSAGE)
        connections.append(connection)
    return connections


def refused(connections: list[RawConnection]) -> list[RawConnection]:
    """Those the daemon refused with ``overloaded`` (and closed).

    Refusals come right after accept: one second in all is plenty.
    """
    result = []
    deadline = time.monotonic() + 1
    for connection in connections:
        if connection.closed_by_daemon(timeout_s=max(0.01, deadline - time.monotonic())):
            error = connection.protocol_error()
            assert error["code"] == "overloaded", error
            result.append(connection)
    return result


def status_cli(daemon: Daemon) -> str:
    result = run_cli("status", "--socket", str(daemon.socket_path), "--timeout", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEALTHY" in result.stdout, result.stdout
    return result.stdout


def wait_for_clients(daemon: Daemon, count: int) -> None:
    """Until the daemon counts ``count`` connections besides the one asking."""

    def clients() -> int:
        with RawConnection(daemon.socket_path) as asking:
            error, status = asking.call("status")
        assert error is None, error
        return int(status["clients"]) - 1

    eventually(clients, lambda n: n == count, what=f"{count} connections")


def log_lines(daemon: Daemon, pattern: str) -> list[str]:
    return [line for line in daemon.log().splitlines() if re.search(pattern, line)]


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    """Closes what a test registers with it, whatever happens."""
    with ExitStack() as stack:
        yield stack


def close_all(stack: ExitStack, connections: list[RawConnection]) -> list[RawConnection]:
    for connection in connections:
        stack.callback(connection.close)
    return connections


# -- deadlines -------------------------------------------------------------------


@pytest.fixture(scope="module")
def deadline_daemon() -> Iterator[Daemon]:
    with running_daemon(
        MEMORYD_MESSAGE_TIMEOUT_S="2",
        MEMORYD_MAX_MESSAGE_BYTES=str(64 * 1024),
        MEMORYD_IDLE_TIMEOUT_S="0",
    ) as daemon:
        yield daemon


def test_a_started_message_must_complete_within_message_timeout_s(
    deadline_daemon: Daemon, closing: ExitStack
) -> None:
    [stalled] = close_all(closing, stalled_connections(deadline_daemon, 1))
    assert stalled.closed_by_daemon(timeout_s=6)
    error = stalled.protocol_error()
    assert error["code"] == "deadline_exceeded"
    assert "message_timeout_s" in error["message"]
    with RawConnection(deadline_daemon.socket_path) as other:
        assert other.call("ping") == (None, "pong")


def test_a_payload_that_stops_arriving_is_closed_at_the_deadline(
    deadline_daemon: Daemon, closing: ExitStack
) -> None:
    # It fits (30 KB of 64 KiB), so only the deadline can end it.
    stalled = RawConnection(deadline_daemon.socket_path)
    closing.callback(stalled.close)
    stalled.send_bytes(STARTED_MESSAGE + b"\x91\x81\xa1x\xda" + struct.pack(">H", 30_000))
    stalled.send_bytes(b"z" * 10_000)
    assert stalled.closed_by_daemon(timeout_s=6)
    assert stalled.protocol_error()["code"] == "deadline_exceeded"


def test_huge_announcements_that_stall_are_all_closed_at_once(
    deadline_daemon: Daemon, closing: ExitStack
) -> None:
    connections = close_all(
        closing, [RawConnection(deadline_daemon.socket_path, timeout_s=5) for _ in range(50)]
    )
    for connection in connections:
        connection.send_bytes(b"\xdb" + struct.pack(">I", 500 * 2**20))  # a 500 MB string
    for connection in connections:
        # Well before the 2 s deadline: the header alone says it cannot fit.
        assert connection.closed_by_daemon(timeout_s=1.5)
        assert connection.protocol_error()["code"] == "too_large"


def test_a_slow_message_that_completes_in_time_is_answered(deadline_daemon: Daemon) -> None:
    with RawConnection(deadline_daemon.socket_path) as slow:
        request = bytes.fromhex("940001a470696e6790")  # [0, 1, "ping", []]
        for byte in request:
            slow.send_bytes(bytes([byte]))
            time.sleep(0.05)
        assert slow.receive() == [1, 1, None, "pong"]
        assert not slow.closed_by_daemon(timeout_s=2.5)  # no deadline after the message


# -- idle connections ----------------------------------------------------------


@pytest.fixture(scope="module")
def idle_daemon() -> Iterator[Daemon]:
    with running_daemon(MEMORYD_IDLE_TIMEOUT_S="1") as daemon:
        yield daemon


def idle_closes_of_this_process(daemon: Daemon) -> int:
    return len(log_lines(daemon, rf"closing the connection of pid {os.getpid()} .*idle"))


def test_an_idle_connection_is_closed_quietly(idle_daemon: Daemon) -> None:
    with RawConnection(idle_daemon.socket_path) as idle:
        assert idle.call("ping") == (None, "pong")
        assert idle.closed_by_daemon(timeout_s=5)
        assert list(idle.unpacker) == []  # no notification: nothing was wrong
    assert log_lines(idle_daemon, r"DEBUG memoryd\.transport: closing .* idle for")
    assert not log_lines(idle_daemon, r"(INFO|WARNING) .*idle")


def test_a_connection_that_keeps_talking_stays_open(idle_daemon: Daemon) -> None:
    with RawConnection(idle_daemon.socket_path) as busy:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert busy.call("ping") == (None, "pong")
            time.sleep(0.3)


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
def test_the_client_carries_on_after_an_idle_close(idle_daemon: Daemon, retry: bool) -> None:
    with memoryd_client.Client(idle_daemon.socket_path, retry=retry) as client:
        assert client.ping() == "pong"
        closed_before = idle_closes_of_this_process(idle_daemon)
        eventually(
            lambda: idle_closes_of_this_process(idle_daemon) > closed_before,
            what="the daemon to close the idle connection",
        )
        assert client.ping() == "pong"
        assert client.add("idle-agent", "note", "after an idle close")["id"]


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
def test_the_async_client_carries_on_after_an_idle_close(idle_daemon: Daemon, retry: bool) -> None:
    async def scenario() -> None:
        async with memoryd_client.AsyncClient(idle_daemon.socket_path, retry=retry) as client:
            assert await client.ping() == "pong"
            closed_before = idle_closes_of_this_process(idle_daemon)
            while idle_closes_of_this_process(idle_daemon) == closed_before:
                await asyncio.sleep(0.05)
            assert await client.ping() == "pong"
            assert (await client.add("idle-agent", "note", "async, after an idle close"))["id"]

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_idle_timeout_is_reloaded_by_sighup(daemon_dir: Daemon) -> None:
    config = daemon_dir.directory / "memoryd.toml"
    config.write_text("idle_timeout_s = 0\n")
    daemon_dir.start("--config", str(config))
    with RawConnection(daemon_dir.socket_path) as before:
        assert before.call("ping") == (None, "pong")
        assert not before.closed_by_daemon(timeout_s=1.5)
        config.write_text("idle_timeout_s = 0.5\nmax_connections_per_uid = 64\n")
        daemon_dir.signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: settings reloaded" in daemon_dir.log(), 10, "the reload")
        assert "takes a restart" not in daemon_dir.log()
        with RawConnection(daemon_dir.socket_path) as after:
            assert after.call("ping") == (None, "pong")
            assert after.closed_by_daemon(timeout_s=5)
        # Limits hold for connections opened after the reload.
        assert before.call("ping") == (None, "pong")


# -- connections per uid and the reserve ---------------------------------------


def shared_daemon(**env: str) -> Daemon:
    daemon = Daemon(env_overrides={"MEMORYD_SOCKET_MODE": "0666", **env})
    open_to_everyone(daemon)
    return daemon.start()


def test_one_uid_cannot_take_every_connection(closing: ExitStack) -> None:
    uid, gid = nobody()
    daemon = shared_daemon(
        MEMORYD_MAX_CONNECTIONS="8",
        MEMORYD_MAX_CONNECTIONS_PER_UID="4",
        MEMORYD_MESSAGE_TIMEOUT_S="60",
    )
    closing.callback(daemon.cleanup)
    with acting_as(uid, gid):
        hostile = close_all(closing, stalled_connections(daemon, 8))
    assert len(refused(hostile)) == 4
    # Everyone else still gets in: another client, and the status command.
    with memoryd_client.Client(daemon.socket_path, retry=False) as client:
        assert client.ping() == "pong"
        assert client.status()["clients"] == 5
    status_cli(daemon)
    with acting_as(uid, gid):
        again = close_all(closing, stalled_connections(daemon, 1))
    assert len(refused(again)) == 1
    assert log_lines(daemon, rf"WARNING .*refusing a connection from pid \d+ uid {uid}: ")


def test_status_answers_when_every_slot_is_taken(closing: ExitStack) -> None:
    from memoryd.connections import PRIVILEGED_RESERVE_CONNECTIONS

    uid, gid = nobody()
    daemon = shared_daemon(
        MEMORYD_MAX_CONNECTIONS="4",
        MEMORYD_MAX_CONNECTIONS_PER_UID="3",
        MEMORYD_MESSAGE_TIMEOUT_S="60",
    )
    closing.callback(daemon.cleanup)
    with acting_as(uid, gid):
        assert refused(close_all(closing, stalled_connections(daemon, 3))) == []
    # Root's own connections take the last slot and its per-uid share...
    assert refused(close_all(closing, stalled_connections(daemon, 3))) == []
    with acting_as(uid, gid):
        assert len(refused(close_all(closing, stalled_connections(daemon, 1)))) == 1
    # ...yet root still gets in, up to its reserve.
    status_cli(daemon)
    wait_for_clients(daemon, 6)  # the CLI's connection is gone again
    reserve = close_all(closing, stalled_connections(daemon, PRIVILEGED_RESERVE_CONNECTIONS))
    assert len(refused(reserve)) == 2  # 6 held already: 4 + 8 in all
    [beyond] = close_all(closing, stalled_connections(daemon, 1))
    assert refused([beyond]) == [beyond]


# -- the log -------------------------------------------------------------------


def test_protocol_errors_are_logged_at_a_bounded_rate(closing: ExitStack) -> None:
    from memoryd.connections import PROTOCOL_LOG_MAX_LINES

    daemon = Daemon(env_overrides={"MEMORYD_LOG_LEVEL": "INFO"}).start()
    closing.callback(daemon.cleanup)
    for _ in range(200):
        with RawConnection(daemon.socket_path) as hostile:
            hostile.send_bytes(GARBAGE)
            assert hostile.protocol_error()["code"] == "invalid_request"
    with RawConnection(daemon.socket_path) as fine:
        assert fine.call("ping") == (None, "pong")
    logged = log_lines(daemon, "protocol error from pid")
    assert 0 < len(logged) <= PROTOCOL_LOG_MAX_LINES
    summary = eventually(
        lambda: log_lines(daemon, r"WARNING .* more protocol errors and refused connections"),
        timeout_s=20,
        what="the line that counts what was not logged",
    )
    counts = [int(re.search(r"(\d+) more", line).group(1)) for line in summary]  # type: ignore[union-attr]
    assert len(logged) + sum(counts) == 200


# -- in-process: the throttle and the admission rule -----------------------------


def test_throttled_log_writes_at_most_its_lines_then_says_how_many_it_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from memoryd.connections import ThrottledLog

    log = logging.getLogger("tests.throttled")

    async def scenario() -> None:
        throttled = ThrottledLog(log, "test lines", max_lines=3, interval_s=0.2)
        for n in range(10):
            throttled.write(logging.INFO, "line %d", n)
        await asyncio.sleep(0.3)  # the interval ends: the count is written
        throttled.write(logging.INFO, "line %d", 10)  # a new interval logs again

    with caplog.at_level(logging.INFO, logger="tests.throttled"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records] == [
        "line 0",
        "line 1",
        "line 2",
        "7 more test lines in the last 0 s not logged (at most 3 lines per 0 s)",
        "line 10",
    ]
    assert caplog.records[3].levelname == "WARNING"


def test_root_and_the_daemons_own_user_have_a_reserve_others_do_not() -> None:
    from dataclasses import dataclass
    from typing import cast

    from memoryd.connections import (
        PRIVILEGED_RESERVE_CONNECTIONS,
        ConnectionLimits,
        ConnectionRegistry,
    )
    from memoryd.transport import Connection, Peer

    limits = ConnectionLimits(
        max_message_bytes=4096,
        max_inflight=1,
        max_connections=4,
        max_connections_per_uid=2,
        message_timeout_s=1.0,
        idle_timeout_s=0.0,
    )

    @dataclass(eq=False)
    class Peered:  # all the registry reads of a connection
        peer: Peer

    registry = ConnectionRegistry()
    registry.privileged_uids = frozenset({0, 999})  # as when the daemon runs as uid 999

    def connect(uid: int) -> bool:
        if registry.refusal(uid, limits) is not None:
            return False
        registry.add(cast(Connection, Peered(Peer(1, uid, uid))))
        return True

    assert [connect(1000) for _ in range(3)] == [True, True, False]  # per uid
    assert registry.refusal(1000, limits) == "max_connections_per_uid (2) reached"
    assert [connect(1001) for _ in range(3)] == [True, True, False]  # all 4 taken
    assert registry.refusal(1002, limits) == "max_connections (4) reached"
    privileged = [connect(uid) for uid in (0, 999) * PRIVILEGED_RESERVE_CONNECTIONS]
    assert privileged.count(True) == PRIVILEGED_RESERVE_CONNECTIONS
    assert registry.refusal(0, limits) == "max_connections (4) reached"
    assert registry.connections_of(0) + registry.connections_of(999) == 8
