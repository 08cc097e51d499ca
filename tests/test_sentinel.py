"""memoryd on a Redis Sentinel set: master discovery, and a failover by kill -9
under 4 writers with no acknowledged write lost or duplicated."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memoryd_client import Client
from tests.daemons import eventually
from tests.harness import Daemon, SentinelSet
from tests.test_put_back import Writers, stored


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
        eventually(
            lambda: client.status()["wal"]["backlog_records"] == 0,
            timeout_s=30,
            what="the backlog applied to the new master",
        )
        status = client.status()
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
        for agent, ids in writers.acked.items():
            kept = stored(master, agent)
            assert set(ids) <= set(kept), f"{len(set(ids) - set(kept))} of {agent} lost"
            assert len(kept) == len(set(kept)) == client.stats(agent)["count"]
    assert daemon.stop() == 0
