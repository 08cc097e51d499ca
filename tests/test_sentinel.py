"""memoryd on a Redis Sentinel set: master discovery, and a failover by kill -9
under 4 writers with no acknowledged write lost or duplicated."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from memoryd_client import Client
from tests.daemons import eventually
from tests.harness import Daemon, SentinelSet
from tests.test_put_back import Writers


def settled(status: dict[str, Any]) -> bool:
    """Nothing left to apply, and everything applied confirmed by the replicas of the
    master memoryd writes to now: what an old master took after its replacement
    was put back and applied again, or this stays false."""
    wal = status["wal"]
    return bool(wal["backlog_records"] == 0 and wal["unconfirmed_records"] == 0)


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    topology = SentinelSet().start()
    try:
        yield topology
    finally:
        topology.cleanup()


def test_a_master_killed_is_replaced_and_no_acknowledged_write_is_lost(
    sentinels: SentinelSet, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": sentinels.url}
    daemon = daemon_dir.start()
    old_port = sentinels.master_port()
    assert old_port is not None
    with Client(daemon.socket_path, timeout_s=20) as client:
        store = client.status()["store"]
        assert store["master"] == f"127.0.0.1:{old_port}", store
        with Writers(daemon) as writers:
            eventually(lambda: writers.count() > 200, timeout_s=30, what="writes before")
            sentinels.server_on(old_port).kill()
            sentinels.wait(
                lambda: sentinels.master_port() not in (None, old_port), "a replica promoted"
            )
            before = writers.count()
            eventually(lambda: writers.count() > before + 200, timeout_s=60, what="writes after")
        status = eventually(
            client.status, settled, timeout_s=30, what="the backlog applied and confirmed"
        )
        new_port = sentinels.master_port()
        assert new_port is not None and new_port != old_port
        assert status["store"]["master"] == f"127.0.0.1:{new_port}", status["store"]
        eventually(
            client.status,
            lambda s: s["state"] == "healthy",
            timeout_s=30,
            what="healthy",
        )
        master = sentinels.server_on(new_port)
        writers.assert_kept_in(master, client)
    assert daemon.stop() == 0


def test_writes_only_the_dead_master_had_come_back_on_the_promoted_replica(
    sentinels: SentinelSet, daemon_dir: Daemon
) -> None:
    """The hard case of asynchronous replication: both replicas frozen while the master
    takes writes, the master killed, the replicas resumed and one promoted.  The
    promoted one never saw those writes; memoryd, which WAIT never told they were
    replicated, kept them in the WAL and applies them again on the new master."""
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": sentinels.url}
    daemon = daemon_dir.start()
    old_port = sentinels.master_port()
    assert old_port is not None
    replicas = [server for server in sentinels.servers if server.port != old_port]
    # Big records: more than the kernel buffers between master and frozen replicas
    # hold, so that the replication stream really is lost with the master.
    writers = Writers(daemon, payload_bytes=40_000)
    with Client(daemon.socket_path, timeout_s=20) as client, writers:
        eventually(lambda: writers.count() > 100, timeout_s=30, what="writes before")
        for replica in replicas:
            assert replica.process is not None
            os.kill(replica.process.pid, signal.SIGSTOP)
        frozen_at = writers.count()
        eventually(lambda: writers.count() > frozen_at + 400, timeout_s=60, what="writes")
        eventually(
            lambda: client.status()["wal"]["backlog_records"] < 20,
            timeout_s=10,
            what="the writes applied to the master alone",
        )
        assert client.status()["wal"]["unconfirmed_records"] > 0, "WAIT said replicated"
        sentinels.server_on(old_port).kill()
        for replica in replicas:
            assert replica.process is not None
            os.kill(replica.process.pid, signal.SIGCONT)
        sentinels.wait(
            lambda: sentinels.master_port() not in (None, old_port),
            "a resumed replica promoted",
            timeout_s=60,
        )
        promoted_at = writers.count()
        eventually(lambda: writers.count() > promoted_at + 100, timeout_s=60, what="writes after")
    with Client(daemon.socket_path, timeout_s=20) as client:
        eventually(
            client.status,
            lambda s: s["state"] == "healthy" and settled(s),
            timeout_s=60,
            what="healthy, the backlog applied",
        )
        new_port = sentinels.master_port()
        assert new_port is not None
        master = sentinels.server_on(new_port)
        writers.assert_kept_in(master, client)
    assert daemon.stop() == 0


def test_a_master_frozen_longer_than_the_socket_timeout_is_failed_over_without_loss(
    sentinels: SentinelSet, daemon_dir: Daemon
) -> None:
    """SIGSTOP, not kill: the sentinels promote a replica while the old master still
    holds connections.  The batches in flight time out and are applied again on the
    new master (the old one, resumed, finds itself demoted and resyncs, dropping what
    it ran of them late); writes are acknowledged throughout, none lost or doubled."""
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": sentinels.url}
    daemon = daemon_dir.start()
    old_port = sentinels.master_port()
    assert old_port is not None
    old_master = sentinels.server_on(old_port)
    assert old_master.process is not None
    with Client(daemon.socket_path, timeout_s=20) as client, Writers(daemon) as writers:
        eventually(lambda: writers.count() > 100, timeout_s=30, what="writes before")
        os.kill(old_master.process.pid, signal.SIGSTOP)  # longer than the 1 s socket timeout
        try:
            sentinels.wait(
                lambda: sentinels.master_port() not in (None, old_port), "a replica promoted"
            )
        finally:
            os.kill(old_master.process.pid, signal.SIGCONT)
        resumed_at = writers.count()
        eventually(lambda: writers.count() > resumed_at + 150, timeout_s=60, what="writes after")
    new_port = sentinels.master_port()
    assert new_port is not None and new_port != old_port
    with Client(daemon.socket_path, timeout_s=20) as client:
        # The old master, resumed, took writes until the sentinels demoted it;
        # memoryd sees it turned replica, and applies them again on the new one.
        eventually(
            client.status,
            lambda s: (
                s["state"] == "healthy"
                and settled(s)
                and s["store"]["master"] == f"127.0.0.1:{new_port}"
            ),
            timeout_s=60,
            what="healthy on the new master, the backlog applied",
        )
        writers.assert_kept_in(sentinels.server_on(new_port), client)
    assert daemon.stop() == 0
