from __future__ import annotations

import os
from collections.abc import Iterator

import hypothesis
import pytest
import redis

from tests.harness import Daemon, RedisServer

# Hypothesis profiles (see tests/README.md).  Locally ("dev") every run draws new examples, to
# keep exploring.  In CI (CI set in the environment, as .ci/run does) "ci" draws the same
# examples every run, without the example database, so a red CI is the code's doing and a rerun
# answers the same.  Both print the @reproduce_failure blob of a failing example.
hypothesis.settings.register_profile("dev", print_blob=True)
hypothesis.settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session; tests that kill Redis start their own."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis, emptied before the test."""
    with redis.Redis(unix_socket_path=str(redis_server.socket_path)) as conn:
        conn.flushall()
    yield redis_server.url


@pytest.fixture
def redis_conn(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain blocking connection, to look at what the daemon stored."""
    with redis.Redis(unix_socket_path=str(redis_server.socket_path)) as conn:
        yield conn


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, to kill, freeze or restart."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


def _unstarted_daemon() -> Iterator[Daemon]:
    daemon = Daemon()
    try:
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture
def daemon_dir() -> Iterator[Daemon]:
    """A daemon not yet started: set env_overrides, then start() it."""
    yield from _unstarted_daemon()


@pytest.fixture
def second_daemon_dir() -> Iterator[Daemon]:
    """Another one, for tests of two daemons."""
    yield from _unstarted_daemon()
