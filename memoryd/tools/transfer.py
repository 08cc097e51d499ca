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

A record that cannot be written as a line (nested deeper than
``MAX_LINE_DEPTH``: an older memoryd accepted any depth) is reported with its
agent and id and left out, and so is the rest of an agent whose records
memoryd cannot send; the export goes on with the others.  Every conversion
here walks content without recursion.

This is the backup, and the way between the Redis and the local store.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final

from memoryd import validation as v
from memoryd.errors import InvalidRequest
from memoryd_client import Client, Record, errors, wire
from memoryd_client.paging import all_records_sync

# The record's fields, in the order the protocol lists them (one definition, in the client).
FIELDS = tuple(Record.__annotations__)
BYTES_KEY = "$bytes"
AGENTS_PER_CALL = wire.MAX_AGENTS_LIMIT
# How deeply maps and arrays may nest in one line, the line's own object
# included.  Python's json encoder and decoder recurse, and fail near 1,000
# levels; this leaves them a wide margin.  (What memoryd accepts now nests at
# most validation.MAX_NESTING_DEPTH levels; deeper records come from older
# versions, and an import reports them as bad lines.)
MAX_LINE_DEPTH: Final = 256
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


def _rebuilt(value: Any, convert: Callable[[Any], Any]) -> Any:
    """A copy of ``value`` with ``convert`` applied to it and to everything in it.

    ``convert`` sees each value before its items; maps and arrays it returns are
    copied and their items converted in turn.  Without recursion: a stored
    record may nest deeper than Python recurses.
    """
    holder: list[Any] = [value]
    pending: list[tuple[dict[Any, Any] | list[Any], Any]] = [(holder, 0)]
    while pending:
        parent, key = pending.pop()
        item = convert(parent[key])
        if isinstance(item, dict):
            item = dict(item)
            pending.extend((item, name) for name in item)
        elif isinstance(item, list | tuple):
            item = list(item)
            pending.extend((item, index) for index in range(len(item)))
        parent[key] = item
    return holder[0]


def _bytes_to_json(value: Any) -> Any:
    return {BYTES_KEY: base64.b64encode(value).decode()} if isinstance(value, bytes) else value


class Unwritable(ValueError):
    """A record that cannot be a line; its text says why (never its content)."""


def record_line(record: Any) -> str:
    document = _rebuilt({name: record[name] for name in FIELDS}, _bytes_to_json)
    if v.nesting_depth(document, MAX_LINE_DEPTH) > MAX_LINE_DEPTH:
        raise Unwritable(
            f"nested more than {MAX_LINE_DEPTH} levels deep, more than a line of JSON holds safely"
        )
    return json.dumps(document, ensure_ascii=False, allow_nan=False)


@dataclass(slots=True)
class ExportReport:
    records: int = 0
    # (agent id, record id or None for the rest of the agent, why)
    skipped: list[tuple[str, str | None, str]] = field(default_factory=list)


def export_lines(
    client: Client,
    agent_ids: Iterable[str],
    report: ExportReport,
    on_skip: Callable[[str, str | None, str], None] | None = None,
) -> Iterator[str]:
    """The lines of every record of ``agent_ids``; what cannot be exported is
    reported (``report.skipped``, ``on_skip``) and the export goes on."""

    def skip(agent_id: str, record_id: str | None, why: str) -> None:
        report.skipped.append((agent_id, record_id, why))
        if on_skip is not None:
            on_skip(agent_id, record_id, why)

    for agent_id in agent_ids:
        try:
            for record in all_records_sync(client, agent_id):
                try:
                    line = record_line(record)
                except Unwritable as exc:
                    skip(agent_id, record["id"], str(exc))
                    continue
                report.records += 1
                yield line
        except errors.InternalError as exc:
            # memoryd could not send a page of this agent (a record too deep
            # for msgpack, stored by an older version): the others may be fine.
            skip(agent_id, None, f"memoryd could not send the agent's next records: {exc}")


# -- import ------------------------------------------------------------------------------------


class BadLine(ValueError):
    """A line that is not a record; its text says why."""


def _json_to_bytes(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {BYTES_KEY} and isinstance(value[BYTES_KEY], str):
        return base64.b64decode(value[BYTES_KEY], validate=True)
    return value


def _from_json(name: str, value: Any) -> Any:
    try:
        return _rebuilt(value, _json_to_bytes)
    except binascii.Error:
        raise InvalidRequest(name, f"a {BYTES_KEY} value is not base64") from None


def _document(line: str) -> dict[str, Any]:
    """The line's JSON object, with the required fields and no unknown ones."""
    try:
        document = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadLine(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        # json's decoder recurses: a line nested about 1,000 levels stops it.
        raise BadLine("nested too deeply to read") from None
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
        "metadata": lambda value: v.metadata("metadata", _from_json("metadata", value)),
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
            "content": v.content("content", _from_json("content", document["content"])),
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
