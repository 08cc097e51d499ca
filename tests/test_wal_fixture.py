"""A WAL written by an earlier release recovers under today's code.

``tests/fixtures/wal-v1/`` was left by the daemon at commit 3e1393e, killed -9
with every write unapplied (``tests/fixtures/make_wal_fixture.py`` says how);
``expected.json`` is what that daemon answered for each agent.  The on-disk
format is a contract: this test keeps a refactor from changing it unnoticed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis

from memoryd.wal import recover
from memoryd_client import Client
from tests.daemons import eventually
from tests.harness import Daemon, RedisServer

FIXTURE = Path(__file__).parent / "fixtures" / "wal-v1"
EXPECTED: dict[str, list[dict[str, Any]]] = json.loads((FIXTURE / "expected.json").read_text())
FIELDS = ("id", "type", "content", "author", "tags", "metadata", "importance")


def _copy_wal(daemon: Daemon) -> None:
    daemon.data_dir.mkdir(mode=0o700)
    shutil.copytree(FIXTURE / "wal", daemon.data_dir / "wal")


def _answers(client: Client) -> dict[str, list[dict[str, Any]]]:
    return {
        agent: [
            {key: dict(record)[key] for key in FIELDS} for record in client.recent(agent, limit=100)
        ]
        for agent in EXPECTED
    }


def test_the_fixture_recovers_whole(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE / "wal", tmp_path / "wal")
    recovery = recover(tmp_path / "wal")
    assert not recovery.damaged
    assert [entry.seq for entry in recovery.entries] == list(range(1, 11))
    kinds = [type(entry.op).__name__ for entry in recovery.entries]
    # add x3, update, delete, add_many of 3, clear, add
    assert kinds == ["Put"] * 3 + ["Replace", "Delete"] + ["Put"] * 3 + ["Clear", "Put"]
    assert {entry.op.agent_id for entry in recovery.entries} == set(EXPECTED)


@pytest.mark.parametrize("store", ["local", "redis"])
def test_a_daemon_applies_an_old_wal_and_answers_as_the_old_one_did(
    store: str, daemon_dir: Daemon, private_redis: RedisServer
) -> None:
    if store == "redis":
        daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    _copy_wal(daemon_dir)
    daemon_dir.start()
    with Client(daemon_dir.socket_path) as client:
        eventually(
            lambda: client.status()["wal"]["backlog_records"],
            lambda backlog: backlog == 0,
            timeout_s=10,
            what="the old WAL to be applied",
        )
        assert _answers(client) == EXPECTED
    assert daemon_dir.stop() == 0
    if store == "redis":
        with redis.Redis(unix_socket_path=str(private_redis.socket_path)) as conn:
            assert conn.dbsize() > 0  # applied to Redis, not only answered from the backlog
