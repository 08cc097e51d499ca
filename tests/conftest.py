from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import AsyncIterator, Iterator

import hypothesis
import pytest
import redis

import memoryd_client
from tests.daemons import STORE_KINDS, TRIM_MAX_MEMORIES, Env, new_agent, start_env
from tests.harness import LOOPBACK, ClusterSet, Daemon, LocalUser, RedisServer

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


def _started_cluster() -> Iterator[ClusterSet]:
    cluster = ClusterSet().start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterSet]:
    """One Redis Cluster for the session (3 masters, a replica each); tests that
    fail it over or reshard it start their own."""
    yield from _started_cluster()


@pytest.fixture
def own_cluster() -> Iterator[ClusterSet]:
    """A Redis Cluster of the test's own, to fail over or reshard."""
    yield from _started_cluster()


@pytest.fixture
def cluster_url(redis_cluster: ClusterSet) -> str:
    """The session's Redis Cluster, every master emptied before the test."""
    for port in redis_cluster.master_ports():
        with redis.Redis(LOOPBACK, port) as conn:
            conn.flushall()
    return redis_cluster.url


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


# -- the shared daemons (tests/daemons.py) ---------------------------------------


@pytest.fixture(scope="session", params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def daemons_redis() -> Iterator[RedisServer]:
    """A Redis of these daemons' own: their sweeps must not touch the data of
    tests that use the session Redis, and its flushes must not touch theirs."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def _envs(daemons_redis: RedisServer) -> Iterator[dict[tuple[str, str], Env]]:
    """Daemons by (store kind, flavour), started on first use, stopped at the end."""
    envs: dict[tuple[str, str], Env] = {}
    try:
        yield envs
    finally:
        for started in envs.values():
            started.close()


def _env(
    envs: dict[tuple[str, str], Env],
    kind: str,
    flavour: str,
    daemons_redis: RedisServer,
    **settings: str,
) -> Env:
    key = (kind, flavour)
    if key not in envs:
        envs[key] = start_env(kind, daemons_redis, **settings)
    started = envs[key]
    process = started.daemon.process
    assert process is not None and process.poll() is None, started.daemon.log()
    return started


@pytest.fixture
def env(_envs: dict[tuple[str, str], Env], store_kind: str, daemons_redis: RedisServer) -> Env:
    """The shared daemon of this store kind (default settings, fast sweep)."""
    return _env(_envs, store_kind, "default", daemons_redis)


@pytest.fixture
def trim_env(_envs: dict[tuple[str, str], Env], store_kind: str, daemons_redis: RedisServer) -> Env:
    """A shared daemon of this store kind with ``max_memories`` = 5."""
    return _env(
        _envs,
        store_kind,
        "trim",
        daemons_redis,
        MEMORYD_MAX_MEMORIES=str(TRIM_MAX_MEMORIES),
    )


@pytest.fixture
def client(env: Env) -> Iterator[memoryd_client.Client]:
    with env.client() as connected:
        yield connected


@pytest.fixture
async def aclient(env: Env) -> AsyncIterator[memoryd_client.AsyncClient]:
    async with memoryd_client.AsyncClient(env.socket_path) as connected:
        yield connected


@pytest.fixture
def agent() -> str:
    return new_agent()


@pytest.fixture
def redis_env(_envs: dict[tuple[str, str], Env], daemons_redis: RedisServer) -> Env:
    """The shared Redis daemon, for tests that look inside Redis itself."""
    return _env(_envs, "redis", "default", daemons_redis)


@pytest.fixture
def local_env(_envs: dict[tuple[str, str], Env], daemons_redis: RedisServer) -> Env:
    """The shared local (SQLite) daemon."""
    return _env(_envs, "local", "default", daemons_redis)
