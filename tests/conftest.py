from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator

import hypothesis
import pytest
import redis

from tests.harness import Daemon, LocalUser, RedisServer

UNPRIVILEGED_USER = "memoryd-test"
USERADD_EXISTS = 9  # useradd's exit status for "username already in use"

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


@pytest.fixture(scope="session")
def unprivileged_user() -> Iterator[LocalUser]:
    """A real user without privileges, created for the session (and removed after it).

    CI runs as root, so it can; elsewhere the tests that need another local
    user cannot run, and say so.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second local user with useradd (CI runs as root)")
    existing = {user.pw_name for user in pwd.getpwall()}
    if UNPRIVILEGED_USER not in existing:  # else left by a run that did not finish: reuse it
        added = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            + [UNPRIVILEGED_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        # USERADD_EXISTS: another run created it meanwhile.
        if added.returncode not in (0, USERADD_EXISTS):
            raise RuntimeError(f"useradd {UNPRIVILEGED_USER} failed: {added.stderr.strip()}")
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    try:
        yield LocalUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", UNPRIVILEGED_USER], capture_output=True, check=False)
