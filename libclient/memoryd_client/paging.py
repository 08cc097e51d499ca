"""Every record of an agent, oldest first, one ``recent`` page at a time.

Pages are bounded by memoryd's largest ``limit``; each asks for the records
created at or after the last one seen, and skips the ids already given at
that instant, so records sharing a ``created_at`` are neither lost nor
repeated.  Memory stays constant whatever the agent holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from memoryd_client import wire
from memoryd_client.aio import AsyncClient
from memoryd_client.client import Client
from memoryd_client.errors import MemorydError
from memoryd_client.types import Record, RecordList

PAGE = wire.MAX_READ_LIMIT


def _page_args(since: float | None, types: list[str] | None) -> dict[str, Any]:
    args: dict[str, Any] = {"limit": PAGE, "order": "oldest"}
    if since is not None:
        args["since"] = since
    if types is not None:
        args["types"] = types
    return args


class IncompleteAnswer(MemorydError):
    """memoryd could not give every record (the store is unreachable, or too many
    records share one ``created_at`` to page past them)."""


def _checked(page: RecordList, agent_id: str) -> list[Record]:
    if page.degraded:
        raise IncompleteAnswer(
            f"the store is unreachable: memoryd answered for {agent_id!r} from what it holds"
        )
    return list(page)


def _new_in_page(page: list[Record], seen_at_boundary: set[str]) -> list[Record]:
    return [record for record in page if record["id"] not in seen_at_boundary]


def _boundary(records: list[Record]) -> tuple[float, set[str]]:
    last = records[-1]["created_at"]
    return last, {r["id"] for r in records if r["created_at"] == last}


async def all_records(
    client: AsyncClient, agent_id: str, types: list[str] | None = None
) -> AsyncIterator[Record]:
    """Every record of the agent, oldest first, a page at a time."""
    since: float | None = None
    seen: set[str] = set()
    while True:
        page = _checked(await client.recent(agent_id, **_page_args(since, types)), agent_id)
        fresh = _new_in_page(page, seen)
        for record in fresh:
            yield record
        if len(page) < PAGE:
            return
        if not fresh:
            raise IncompleteAnswer(f"more than {PAGE} records of {agent_id!r} share one created_at")
        since, seen = _boundary(page)


def all_records_sync(
    client: Client, agent_id: str, types: list[str] | None = None
) -> Iterator[Record]:
    """``all_records`` for the blocking client."""
    since: float | None = None
    seen: set[str] = set()
    while True:
        page = _checked(client.recent(agent_id, **_page_args(since, types)), agent_id)
        fresh = _new_in_page(page, seen)
        yield from fresh
        if len(page) < PAGE:
            return
        if not fresh:
            raise IncompleteAnswer(f"more than {PAGE} records of {agent_id!r} share one created_at")
        since, seen = _boundary(page)
