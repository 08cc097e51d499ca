"""A batch that Redis applied but whose reply was lost is applied again, and must
change nothing the first apply changed.

With ``max_memories=2``, ``[Put X, Put Z, Delete W]`` over ``{W}`` trims X and
leaves ``{Z}``.  Applied again, each operation is idempotent on its own, but Put X
finds no X and brings it back: ``{X, Z}``.  The flusher numbers its batches with
the WAL's sequence numbers and the apply script skips what it already applied
(memoryd.stores.base.Sequenced), so the retry changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from memoryd_client import Client
from tests.daemons import eventually
from tests.harness import Daemon, RedisServer
from tests.lossy_proxy import LossyProxy
from tests.redis_view import members

AGENT = "lossy"


@pytest.fixture
def proxied_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, LossyProxy]]:
    server = RedisServer().start()
    proxy = LossyProxy(server.socket_path, tmp_path / "proxy.sock").start()
    try:
        yield server, proxy
    finally:
        proxy.stop()
        server.cleanup()


def test_a_batch_whose_reply_was_lost_is_applied_again_without_effect(
    proxied_redis: tuple[RedisServer, LossyProxy],
) -> None:
    server, proxy = proxied_redis
    daemon = Daemon(env_overrides={"MEMORYD_REDIS_URL": proxy.url, "MEMORYD_MAX_MEMORIES": "2"})
    admin = redis.Redis(unix_socket_path=str(server.socket_path))
    now = time.time()
    try:
        daemon.start()
        with Client(daemon.socket_path, timeout_s=20) as client:
            w = client.add(AGENT, "note", "W", created_at=now - 50)["id"]
            eventually(lambda: client.status()["wal"]["backlog_records"] == 0, timeout_s=10)

            proxy.refuse()  # Redis looks down: the next writes wait in the WAL, one batch
            eventually(
                lambda: client.status()["state"] == "degraded", timeout_s=20, what="degraded"
            )
            # The flusher's attempt in flight keeps the batch it took until Redis is
            # back: let it take another agent's write, so that the three below
            # travel together, in the next batch.
            client.add("bystander", "note", "first in the backlog")
            time.sleep(1.0)
            client.add(AGENT, "note", "X", created_at=now - 100)
            z = client.add(AGENT, "note", "Z", created_at=now)["id"]
            client.delete(AGENT, w)

            proxy.lose_reply_to(f"agent:{{{AGENT}}}:memories:list".encode())
            proxy.accept()
            eventually(
                lambda: client.status()["state"] == "healthy", timeout_s=30, what="healthy again"
            )
            assert proxy.dropped_replies == 1, "the fault did not happen"
            listed = members(admin, f"agent:{{{AGENT}}}:memories:list")
            assert listed == [z], "the batch applied again brought a trimmed record back"
            assert [r["id"] for r in client.recent(AGENT)] == [z]
            assert client.stats(AGENT)["count"] == 1
        assert daemon.stop() == 0
    finally:
        admin.close()
        daemon.cleanup()
