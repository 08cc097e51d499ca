"""The interface every backend implements, in a blocking and an asyncio flavour.

Reads return lists of records (dicts); the formatting into prompt text that the original
system did on top is the same for every backend and is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from bench.workload import Append, ByType, Clear, Context, Newest, Op, Rec, Search

Records = list[dict[str, Any]]


class Backend(Protocol):
    name: str

    def add(self, stream: str, record: Rec) -> str: ...
    def add_many(self, items: Sequence[tuple[str, Rec]]) -> int: ...
    def newest_n(self, stream: str, n: int) -> Records: ...
    def by_type(self, stream: str, record_type: str, n: int) -> Records: ...
    def context(self, stream: str, n: int, exclude_author: str) -> Records: ...
    def search(self, stream: str, query: str, n: int) -> Records: ...
    def clear(self, stream: str, *, shared: bool = False) -> None: ...
    def close(self) -> None: ...


class AsyncBackend(Protocol):
    name: str

    async def add(self, stream: str, record: Rec) -> str: ...
    async def add_many(self, items: Sequence[tuple[str, Rec]]) -> int: ...
    async def newest_n(self, stream: str, n: int) -> Records: ...
    async def by_type(self, stream: str, record_type: str, n: int) -> Records: ...
    async def context(self, stream: str, n: int, exclude_author: str) -> Records: ...
    async def search(self, stream: str, query: str, n: int) -> Records: ...
    async def clear(self, stream: str, *, shared: bool = False) -> None: ...
    async def close(self) -> None: ...


def execute(backend: Backend, op: Op) -> object:
    match op:
        case Append(stream=stream, record=record):
            return backend.add(stream, record)
        case Newest(stream=stream, n=n):
            return backend.newest_n(stream, n)
        case ByType(stream=stream, type=record_type, n=n):
            return backend.by_type(stream, record_type, n)
        case Context(stream=stream, n=n, exclude_author=author):
            return backend.context(stream, n, author)
        case Search(stream=stream, query=query, n=n):
            return backend.search(stream, query, n)
        case Clear(stream=stream, shared=shared):
            backend.clear(stream, shared=shared)
            return None


async def aexecute(backend: AsyncBackend, op: Op) -> object:
    match op:
        case Append(stream=stream, record=record):
            return await backend.add(stream, record)
        case Newest(stream=stream, n=n):
            return await backend.newest_n(stream, n)
        case ByType(stream=stream, type=record_type, n=n):
            return await backend.by_type(stream, record_type, n)
        case Context(stream=stream, n=n, exclude_author=author):
            return await backend.context(stream, n, author)
        case Search(stream=stream, query=query, n=n):
            return await backend.search(stream, query, n)
        case Clear(stream=stream, shared=shared):
            await backend.clear(stream, shared=shared)
            return None


def contains_text(value: Any, needle: str) -> bool:
    """Case-insensitive substring match over every string inside ``value``."""
    if isinstance(value, str):
        return needle in value.lower()
    if isinstance(value, dict):
        return any(contains_text(item, needle) for item in value.values())
    if isinstance(value, list | tuple):
        return any(contains_text(item, needle) for item in value)
    return False
