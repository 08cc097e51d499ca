"""Records to and from JSON Lines: ``memoryd export`` and ``memoryd import``.

One record per line, with the record fields of the protocol (``id``,
``agent_id``, ``type``, ``content``, ``author``, ``importance``, ``tags``,
``metadata``, ``created_at``, ``expires_at``).  Both directions stream:
export pages through each agent (memoryd_client.paging) and import sends
batches as it reads, so memory stays constant for millions of records.
Importing keeps ids, creation and expiry times, so importing a file twice
adds nothing, and an export of the imported store equals the file.  Binary
values (msgpack ``bin``), which JSON cannot hold, travel as
``{"$bytes": "<base64>"}``.

This is the backup, and the way between the Redis and the local store.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from memoryd import validation as v
from memoryd.errors import InvalidRequest
from memoryd_client import Client, Record
from memoryd_client.paging import all_records_sync

# The record's fields, in the order the protocol lists them (one definition, in the client).
FIELDS = tuple(Record.__annotations__)
BYTES_KEY = "$bytes"
AGENTS_PER_CALL = 10_000  # memoryd's largest `agents` limit
# What may follow an agent id's first character (the protocol's agent id rule).
_AGENT_ID_CHARS = sorted("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@-")


# -- export ------------------------------------------------------------------------------------


def agents_under(client: Client, prefix: str) -> Iterator[str]:
    """Every agent id starting with ``prefix``, in order, however many there are.

    ``agents`` answers the first 10,000 ids in order.  When it is full, the ids whose next
    character sorts before the last answer's are all in it; the rest is listed again under
    each longer prefix from that character on.
    """
    found = client.agents(prefix=prefix, limit=AGENTS_PER_CALL)
    if len(found) < AGENTS_PER_CALL:
        yield from found
        return
    depth = len(prefix)
    cut = found[-1][depth]  # the last id is longer than the prefix: ids are unique
    yield from (agent for agent in found if len(agent) == depth or agent[depth] < cut)
    for char in _AGENT_ID_CHARS:
        if char >= cut:
            yield from agents_under(client, prefix + char)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {BYTES_KEY: base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def record_line(record: Any) -> str:
    return json.dumps(
        {name: _jsonable(record[name]) for name in FIELDS}, ensure_ascii=False, allow_nan=False
    )


def export_lines(client: Client, agent_ids: Iterable[str]) -> Iterator[str]:
    for agent_id in agent_ids:
        for record in all_records_sync(client, agent_id):
            yield record_line(record)


# -- import ------------------------------------------------------------------------------------


class BadLine(ValueError):
    """A line that is not a record; its text says why."""


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {BYTES_KEY} and isinstance(value[BYTES_KEY], str):
            return base64.b64decode(value[BYTES_KEY], validate=True)
        return {key: _from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    return value


def _document(line: str) -> dict[str, Any]:
    """The line's JSON object, with the required fields and no unknown ones."""
    try:
        document = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadLine(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(document, dict):
        raise BadLine("not a JSON object")
    required = ("id", "agent_id", "type", "content", "created_at")
    missing = [name for name in required if name not in document]
    if missing:
        raise BadLine(f"missing {', '.join(missing)}")
    unknown = sorted(set(document) - set(FIELDS))
    if unknown:
        raise BadLine(f"unknown fields {', '.join(unknown)}")
    return document


def _optional(document: dict[str, Any]) -> dict[str, Any]:
    """The optional fields that are there, checked as the daemon checks them."""
    checks: dict[str, Callable[[Any], Any]] = {
        "author": lambda value: v.author("author", value),
        "importance": lambda value: v.number("importance", value, 0, 1),
        "tags": lambda value: v.tags("tags", value),
        "metadata": lambda value: v.metadata("metadata", _from_json(value)),
    }
    return {
        name: check(document[name])
        for name, check in checks.items()
        if document.get(name) is not None
    }


def add_item(line: str, now_s: float) -> dict[str, Any] | None:
    """The ``add_many`` item for one line; None if the record has expired already."""
    document = _document(line)
    try:
        expires_at = document.get("expires_at")
        if expires_at is not None:
            expires_at = v.expiry("expires_at", expires_at)
            if expires_at <= now_s:
                return None
        item: dict[str, Any] = {
            "id": v.record_id("id", document["id"]),
            "agent_id": v.agent_id("agent_id", document["agent_id"]),
            "type": v.type_token("type", document["type"]),
            "content": _from_json(document["content"]),
            "created_at": v.timestamp("created_at", document["created_at"], now_s),
            **_optional(document),
        }
    except InvalidRequest as exc:
        raise BadLine(str(exc)) from None
    if expires_at is None:
        item["ttl_s"] = 0  # never expires; a missing expiry would mean the default TTL
    else:
        item["expires_at"] = expires_at
    return item


@dataclass(slots=True)
class ImportReport:
    records: int = 0
    expired: int = 0
    agents: set[str] = field(default_factory=set)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


def import_lines(
    client: Client,
    lines: IO[str],
    report: ImportReport,
    *,
    batch: int,
    now_s: float,
    on_batch: Callable[[ImportReport], None] | None = None,
) -> None:
    """Send the records of ``lines`` in batches; bad lines are reported and skipped."""
    pending: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = add_item(line, now_s)
        except BadLine as exc:
            report.bad_lines.append((number, str(exc)))
            continue
        if item is None:
            report.expired += 1
            continue
        pending.append(item)
        if len(pending) >= batch:
            _send(client, pending, report, on_batch)
    if pending:
        _send(client, pending, report, on_batch)


def _send(
    client: Client,
    pending: list[dict[str, Any]],
    report: ImportReport,
    on_batch: Callable[[ImportReport], None] | None,
) -> None:
    client.add_many(pending)
    report.records += len(pending)
    report.agents.update(item["agent_id"] for item in pending)
    pending.clear()
    if on_batch is not None:
        on_batch(report)
