"""The client checks who serves the socket before it sends anything.

A real listener runs as another (unprivileged) user in a directory of its
own and counts the bytes each connection brought: a client of root (these
tests run as root) must refuse it with ``UntrustedServer`` and send nothing,
unless told to trust that uid (``server_uid=``, ``MEMORYD_SERVER_UID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from memoryd_client import AsyncClient, Client, errors
from tests.harness import SYSTEM_PYTHON, LocalUser

SERVER_UID_ENV = "MEMORYD_SERVER_UID"  # the documented name

# Accepts connections one after the other; prints how many bytes each sent before closing.
LISTENER = r"""
import socket, sys
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(8)
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    conn.settimeout(30)
    received = 0
    try:
        while chunk := conn.recv(65536):
            received += len(chunk)
    except OSError:
        pass
    conn.close()
    print(received, flush=True)
"""


@dataclass
class ForeignListener:
    path: Path
    uid: int
    process: subprocess.Popen[str]

    def bytes_of_next_connection(self) -> int:
        """What the next connection sent, once its client closed it."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, (
            f"the listener died: {self.process.stderr.read() if self.process.stderr else ''}"
        )
        return int(line)


@contextlib.contextmanager
def _listener_of(user: LocalUser) -> Iterator[ForeignListener]:
    directory = Path(tempfile.mkdtemp(prefix="mdp-", dir="/tmp"))
    os.chown(directory, user.uid, user.gid)
    path = directory / "memoryd.sock"
    process = user.popen(SYSTEM_PYTHON, "-I", "-c", LISTENER, str(path))
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "listening", process.stderr
        yield ForeignListener(path, user.uid, process)
    finally:
        process.kill()
        process.communicate(timeout=10)  # reaps it and closes its pipes
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def foreign_listener(unprivileged_user: LocalUser) -> Iterator[ForeignListener]:
    with _listener_of(unprivileged_user) as listener:
        yield listener


def assert_refused_before_sending(error: errors.MemorydError, listener: ForeignListener) -> None:
    sent = listener.bytes_of_next_connection()
    assert sent == 0, f"the client sent {sent} bytes to a server of uid {listener.uid}"
    assert isinstance(error, errors.UntrustedServer), repr(error)
    message = str(error)
    assert str(listener.path) in message
    assert f"uid {listener.uid}" in message
    assert f"server_uid={listener.uid}" in message
    assert f"{SERVER_UID_ENV}={listener.uid}" in message
    assert isinstance(error, errors.ConnectError)
    assert error.retryable is False


def test_the_client_refuses_a_server_of_another_uid_before_sending(
    foreign_listener: ForeignListener,
) -> None:
    started = time.monotonic()
    with (
        Client(foreign_listener.path, timeout_s=10) as client,
        pytest.raises(errors.MemorydError) as caught,
    ):
        client.ping()
    elapsed_s = time.monotonic() - started
    assert_refused_before_sending(caught.value, foreign_listener)
    assert elapsed_s < 5, "refused at once, not retried until the deadline"


async def test_the_async_client_refuses_a_server_of_another_uid_before_sending(
    foreign_listener: ForeignListener,
) -> None:
    started = time.monotonic()
    async with AsyncClient(foreign_listener.path, timeout_s=10) as client:
        with pytest.raises(errors.MemorydError) as caught:
            await client.ping()
    elapsed_s = time.monotonic() - started
    # In a thread: the event loop must run to close the aborted connection.
    await asyncio.to_thread(assert_refused_before_sending, caught.value, foreign_listener)
    assert elapsed_s < 5, "refused at once, not retried until the deadline"


async def test_a_uid_the_client_is_told_to_trust_is_talked_to(
    foreign_listener: ForeignListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The listener never answers: a request that reached it ends in a timeout.
    with (
        Client(
            foreign_listener.path, timeout_s=0.5, retry=False, server_uid=foreign_listener.uid
        ) as client,
        pytest.raises(errors.MemorydTimeoutError),
    ):
        client.ping()
    assert foreign_listener.bytes_of_next_connection() > 0
    monkeypatch.setenv(SERVER_UID_ENV, str(foreign_listener.uid))
    async with AsyncClient(foreign_listener.path, timeout_s=0.5, retry=False) as async_client:
        with pytest.raises(errors.MemorydTimeoutError):
            await async_client.ping()
    assert await asyncio.to_thread(foreign_listener.bytes_of_next_connection) > 0


def test_a_trusted_uid_above_2_31_is_read_as_the_uid_it_is() -> None:
    # uid_t is unsigned: a uid past 2**31 - 1 (user namespaces, large sites) is
    # valid, and must not be read as a negative number that matches nothing.
    if os.geteuid() != 0:
        pytest.skip("needs root to run a listener as another uid (CI runs as root)")
    high = LocalUser("memoryd-high-uid", 3_000_000_000, 3_000_000_000)  # no passwd entry needed
    with _listener_of(high) as listener:
        with (
            Client(listener.path, timeout_s=0.5, retry=False, server_uid=high.uid) as client,
            pytest.raises(errors.MemorydTimeoutError),
        ):
            client.ping()
        assert listener.bytes_of_next_connection() > 0


def test_a_server_uid_that_is_not_a_uid_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="^server_uid: must be a uid"):
        Client("/nonexistent.sock", server_uid=-1)
    with pytest.raises(ValueError, match="^server_uid: must be a uid"):
        AsyncClient("/nonexistent.sock", server_uid=True)
    monkeypatch.setenv(SERVER_UID_ENV, "daemon")
    with pytest.raises(ValueError, match=f"^{SERVER_UID_ENV}: must be a uid"):
        Client("/nonexistent.sock")
