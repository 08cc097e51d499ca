"""memoryd through its own clients, ``Client`` (blocking) and ``AsyncClient`` (asyncio).

A stream is an agent id; the speeches of a meeting carry their speaker as ``author``, so the
context read is ``recent(meeting, limit=n, exclude_author=caller)``.  Meeting metadata
(participants, stage) goes to a stream of its own, ``<meeting>.meta``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.backends.base import Records
from bench.workload import Rec, meta_stream
from memoryd_client import AsyncClient, Client


def _target(stream: str, record: Rec) -> str:
    return meta_stream(stream) if record.kind == "meta" else stream


def new_record(stream: str, record: Rec) -> dict[str, Any]:
    return {
        "agent_id": _target(stream, record),
        "type": record.type,
        "content": record.content,
        "author": record.author,
    }


class Memoryd:
    def __init__(self, name: str, socket_path: Path) -> None:
        self.name = name
        self.client = Client(socket_path)

    def add(self, stream: str, record: Rec) -> str:
        result = self.client.add(
            _target(stream, record), record.type, record.content, author=record.author
        )
        return result["id"]

    def add_many(self, items: Sequence[tuple[str, Rec]]) -> int:
        return len(self.client.add_many([new_record(stream, record) for stream, record in items]))

    def newest_n(self, stream: str, n: int) -> Records:
        return list(self.client.recent(stream, limit=n))  # type: ignore[arg-type]

    def by_type(self, stream: str, record_type: str, n: int) -> Records:
        return list(self.client.recent(stream, limit=n, types=[record_type]))  # type: ignore[arg-type]

    def context(self, stream: str, n: int, exclude_author: str) -> Records:
        records = self.client.recent(stream, limit=n, exclude_author=exclude_author)
        return list(records)  # type: ignore[arg-type]

    def search(self, stream: str, query: str, n: int) -> Records:
        return list(self.client.search(stream, query, limit=n))  # type: ignore[arg-type]

    def clear(self, stream: str, *, shared: bool = False) -> None:
        self.client.clear(stream)
        if shared:
            self.client.clear(meta_stream(stream))

    def close(self) -> None:
        self.client.close()


class AsyncMemoryd:
    def __init__(self, name: str, socket_path: Path) -> None:
        self.name = name
        self.client = AsyncClient(socket_path)

    async def add(self, stream: str, record: Rec) -> str:
        result = await self.client.add(
            _target(stream, record), record.type, record.content, author=record.author
        )
        return result["id"]

    async def add_many(self, items: Sequence[tuple[str, Rec]]) -> int:
        records = [new_record(stream, record) for stream, record in items]
        return len(await self.client.add_many(records))

    async def newest_n(self, stream: str, n: int) -> Records:
        return list(await self.client.recent(stream, limit=n))  # type: ignore[arg-type]

    async def by_type(self, stream: str, record_type: str, n: int) -> Records:
        records = await self.client.recent(stream, limit=n, types=[record_type])
        return list(records)  # type: ignore[arg-type]

    async def context(self, stream: str, n: int, exclude_author: str) -> Records:
        records = await self.client.recent(stream, limit=n, exclude_author=exclude_author)
        return list(records)  # type: ignore[arg-type]

    async def search(self, stream: str, query: str, n: int) -> Records:
        return list(await self.client.search(stream, query, limit=n))  # type: ignore[arg-type]

    async def clear(self, stream: str, *, shared: bool = False) -> None:
        await self.client.clear(stream)
        if shared:
            await self.client.clear(meta_stream(stream))

    async def close(self) -> None:
        await self.client.aclose()
