"""Records nested deeper than memoryd accepts, stored by an older version.

memoryd now refuses content and metadata nested more than
``MAX_NESTING_DEPTH`` levels (tests/test_bad_input.py), but a store may
already hold records an older version accepted, nested up to the thousand or
so levels msgpack carries.  They are put into the store below the daemon's
validation, with the store classes themselves, before the daemon starts: then
every reader must cope, on both stores and again after a restart.  Depths are
measured here without recursion and without ``==`` (which recurses too).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memoryd.ops import Put
from memoryd.records import Record
from memoryd.stores import LocalStore, RedisStore
from memoryd.tools.transfer import MAX_LINE_DEPTH
from memoryd.validation import MAX_NESTING_DEPTH
from memoryd_client import Client, errors
from memoryd_client.compat.tableround import Memory
from tests.daemons import new_agent, run_cli
from tests.harness import Daemon, RedisServer

# What an older memoryd took in an ``add``: its decoder stops near 1,024 levels.
THOUSAND = 1000
# Deep enough that no answer holding it fits msgpack's 1,024 levels once it is
# inside a ``recent`` answer (answer, result map, records array, record map),
# shallow enough to be stored and to travel alone in a ``get`` answer.
UNSENDABLE = 1021
# Deeper than memoryd accepts now, shallow enough for a line of JSON.
EXPORTABLE = 100
NEEDLE = "needle-at-the-bottom"


def nested(levels: int, innermost: Any) -> Any:
    """``innermost`` inside ``levels`` maps and arrays, alternately."""
    value = innermost
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


def unnested(value: Any) -> tuple[int, Any]:
    """How many maps and arrays (one item each) wrap ``value``, and what is inside."""
    levels = 0
    while isinstance(value, dict | list):
        assert len(value) == 1, f"level {levels} holds {len(value)} items"
        value = next(iter(value.values())) if isinstance(value, dict) else value[0]
        levels += 1
    return levels, value


def as_str_renders_it(levels: int, innermost: str) -> str:
    """``str(nested(levels, innermost))``, built from the inside out."""
    if not levels:
        return innermost
    shown = repr(innermost)
    for level in range(levels):
        shown = f"{{'k': {shown}}}" if level % 2 else f"[{shown}]"
    return shown


def record(agent_id: str, record_id: str, content: Any, metadata: Any, at: float) -> Record:
    return {
        "id": record_id,
        "agent_id": agent_id,
        "type": "note",
        "content": content,
        "author": None,
        "importance": 0.5,
        "tags": [],
        "metadata": metadata,
        "created_at": at,
        "expires_at": None,
    }


class OldData:
    """The agents and records an older memoryd left in the store."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.agent = new_agent("deep")
        self.unsendable_agent = new_agent("unsendable")
        self.bystander = new_agent("bystander")
        now = time.time()
        self.shallow = record(self.agent, "shallow", {"text": "a needle, shallow"}, {}, now - 30)
        self.deep = record(self.agent, "deep", nested(THOUSAND, NEEDLE), {}, now - 20)
        self.deep_metadata = record(
            self.agent, "deep-meta", "plain", {"m": nested(THOUSAND - 1, "meta")}, now - 15
        )
        self.exportable = record(
            self.agent, "exportable", nested(EXPORTABLE, b"\x00bytes"), {}, now - 10
        )
        self.unsendable = record(
            self.unsendable_agent, "unsendable", nested(UNSENDABLE, NEEDLE), {}, now - 5
        )
        self.bystander_record = record(self.bystander, "fine", "all fine", {}, now)
        self.key_prefix = f"deep{tag}:"

    @property
    def records(self) -> list[Record]:
        return [
            self.shallow,
            self.deep,
            self.deep_metadata,
            self.exportable,
            self.unsendable,
            self.bystander_record,
        ]


async def _store_old_data(kind: str, daemon: Daemon, redis_url: str, old: OldData) -> None:
    store = (
        LocalStore(daemon.data_dir)
        if kind == "local"
        else RedisStore(redis_url, key_prefix=old.key_prefix)
    )
    await store.open()
    try:
        await store.apply([Put.of(r) for r in old.records], time.time())
    finally:
        await store.close()


@pytest.fixture
def old_daemon(
    store_kind: str, daemons_redis: RedisServer, daemon_dir: Daemon
) -> Iterator[tuple[Daemon, OldData]]:
    """A daemon started on a store that already holds the deep records."""
    old = OldData()
    daemon_dir.env_overrides = {"MEMORYD_BACKEND": store_kind, "MEMORYD_KEY_PREFIX": old.key_prefix}
    if store_kind == "redis":
        daemon_dir.env_overrides["MEMORYD_REDIS_URL"] = daemons_redis.url
    asyncio.run(_store_old_data(store_kind, daemon_dir, daemons_redis.url, old))
    daemon_dir.start()
    yield daemon_dir, old


def check_reads(daemon: Daemon, old: OldData) -> None:
    with Client(daemon.socket_path, timeout_s=10) as client:
        found = client.search(old.agent, NEEDLE)
        assert not found.degraded
        assert [r["id"] for r in found] == ["deep"]
        assert unnested(found[0]["content"]) == (THOUSAND, NEEDLE)
        assert [r["id"] for r in client.search(old.agent, "needle")] == ["deep", "shallow"]
        assert list(client.search(old.agent, "nowhere")) == []

        got = client.get(old.agent, "deep")
        assert unnested(got["content"]) == (THOUSAND, NEEDLE)
        assert unnested(client.get(old.agent, "deep-meta")["metadata"]) == (THOUSAND, "meta")
        assert client.get(old.unsendable_agent, "unsendable")["id"] == "unsendable"
        newest = client.recent(old.agent, limit=10)
        assert [r["id"] for r in newest] == ["exportable", "deep-meta", "deep", "shallow"]

        # No answer can hold this one: memoryd says so at once instead of never answering.
        started = time.monotonic()
        with pytest.raises(errors.InternalError, match="nested deeper than msgpack allows"):
            client.recent(old.unsendable_agent)
        assert time.monotonic() - started < 5
        assert client.ping() == "pong"


def check_export(daemon: Daemon, old: OldData, out: Path) -> list[dict[str, Any]]:
    done = run_cli("export", "--all", "-o", str(out), "--socket", str(daemon.socket_path))
    assert done.returncode == 1, done.stderr
    assert f"skipped record deep of agent {old.agent}" in done.stderr
    assert f"skipped record deep-meta of agent {old.agent}" in done.stderr
    assert f"skipped the rest of the records of agent {old.unsendable_agent}" in done.stderr
    assert "exported 3 records; skipped 3" in done.stderr
    assert NEEDLE not in done.stderr and "meta'" not in done.stderr  # names, never content
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted((line["agent_id"], line["id"]) for line in lines) == sorted(
        [(old.agent, "shallow"), (old.agent, "exportable"), (old.bystander, "fine")]
    )
    exported = next(line for line in lines if line["id"] == "exportable")
    # The binary value at the bottom is a {"$bytes": base64} map: one level more.
    assert unnested(exported["content"]) == (EXPORTABLE + 1, "AGJ5dGVz")
    return lines


def test_an_old_deep_record_leaves_search_get_and_export_working(
    old_daemon: tuple[Daemon, OldData], tmp_path: Path
) -> None:
    daemon, old = old_daemon
    assert EXPORTABLE + 1 < MAX_LINE_DEPTH < THOUSAND
    check_reads(daemon, old)
    check_export(daemon, old, tmp_path / "backup.jsonl")

    # The exported deep record is a bad line for an import now, not the end of the import.
    again = run_cli("import", str(tmp_path / "backup.jsonl"), "--socket", str(daemon.socket_path))
    assert again.returncode == 1, again.stderr
    assert "imported 2 records of 2 agents; 0 already expired, 1 bad lines" in again.stdout
    assert f"content: maps and arrays nested more than {MAX_NESTING_DEPTH} levels" in again.stdout

    # What the facades render from it, as str() would, without recursion.
    memory = Memory(old.agent, socket_path=str(daemon.socket_path))
    rendered = memory.get_all_memories()
    assert len(rendered) == 4
    deep_line = rendered[1]
    assert deep_line.endswith(f"note: {as_str_renders_it(THOUSAND, NEEDLE)}")

    daemon.stop()
    daemon.start()
    check_reads(daemon, old)
    check_export(daemon, old, tmp_path / "after-restart.jsonl")
