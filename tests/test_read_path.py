"""The request layer on the in-memory store: no file store, no server, no socket."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from memoryd import daemon
from memoryd.config import load_settings
from memoryd.records import Query
from memoryd.stores.memory import MemoryStore
from memoryd.transport import Peer

PEER = Peer(os.getpid(), os.getuid(), os.getgid())


async def test_a_write_reads_back_before_and_after_the_store_applies_it(tmp_path: Path) -> None:
    settings = load_settings(None, socket_path=tmp_path / "s.sock", data_dir=tmp_path / "data")
    (tmp_path / "data").mkdir()
    parts = daemon.build(settings, store=MemoryStore(max_memories=settings.max_memories))
    parts.wal.open()
    await parts.store.open()

    async def call(method: str, **args: Any) -> Any:
        return await parts.handlers.call(method, args, PEER)

    try:
        added = await call("add", agent_id="reader", type="note", content="in the WAL")
        assert len(parts.backlog) == 1
        # Not in the store yet (no flusher runs): the answer comes from the backlog.
        assert (await parts.store.query("reader", Query(), time.time())).value == []
        before = await call("recent", agent_id="reader")
        assert [r["id"] for r in before["records"]] == [added["id"]]
        assert before["degraded"] is False

        assert await parts.flusher.drain(5, give_up=lambda: False)
        assert len(parts.backlog) == 0
        stored = (await parts.store.query("reader", Query(), time.time())).value
        assert [r["id"] for r in stored] == [added["id"]]
        after = await call("recent", agent_id="reader")
        assert after["records"] == before["records"]
        assert (await call("stats", agent_id="reader"))["count"] == 1
    finally:
        await parts.wal.close()
