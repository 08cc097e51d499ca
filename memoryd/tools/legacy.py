"""Reading TableRound's file store, for ``memoryd import-legacy``.

The original kept each agent's memory under ``data/memories/<agent_id>/``:
``memory.json``, a JSON array of ``{type, content, timestamp}`` rewritten
whole on every add (so a crash could leave it truncated), and, in an older
layout, one ``<int_ts>_<type>.json`` file per record.  A file is the unit of
import: it is read and checked whole, and either all its records go to
memoryd or none does (a truncated or invalid file is reported and skipped).

Every record gets an id made of its time, its place in its file and a digest
of the agent, the file and the record, so a second import of the same files
adds nothing, and records with one timestamp keep their order.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from memoryd import validation as v
from memoryd.errors import InvalidRequest
from memoryd_client import Client

MEMORY_FILE = "memory.json"
MEMORIES_DIR = "memories"


@dataclass(frozen=True, slots=True)
class LegacyRecord:
    type: str
    content: Any
    timestamp: float


@dataclass(slots=True)
class LegacyFile:
    """One file of the store: its records, or why it is skipped."""

    agent_id: str
    path: Path
    records: list[LegacyRecord] = field(default_factory=list)
    problem: str | None = None


def memories_root(path: Path) -> Path:
    """``path`` itself, or its ``memories`` directory (``data/`` was given)."""
    nested = path / MEMORIES_DIR
    return nested if nested.is_dir() and not (path / MEMORY_FILE).exists() else path


def agent_dirs(root: Path) -> list[Path]:
    return sorted(entry for entry in root.iterdir() if entry.is_dir())


def record_files(agent_dir: Path) -> list[Path]:
    """``memory.json`` first, then the one-record files in name (time) order."""
    singles = sorted(p for p in agent_dir.glob("*.json") if p.name != MEMORY_FILE and p.is_file())
    whole = agent_dir / MEMORY_FILE
    return ([whole] if whole.is_file() else []) + singles


def read_agent(agent_dir: Path, now_s: float, max_content_bytes: int) -> Iterator[LegacyFile]:
    agent_id = agent_dir.name
    try:
        v.agent_id("agent_id", agent_id)
    except InvalidRequest as exc:
        yield LegacyFile(agent_id, agent_dir, problem=f"directory name: {exc}")
        return
    for path in record_files(agent_dir):
        yield read_file(agent_id, path, now_s, max_content_bytes)


def read_file(agent_id: str, path: Path, now_s: float, max_content_bytes: int) -> LegacyFile:
    legacy = LegacyFile(agent_id, path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        legacy.problem = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        return legacy
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        legacy.problem = f"invalid or truncated JSON ({exc.msg} at {where})"
        return legacy
    except RecursionError:
        # json's decoder recurses: a file nested about 1,000 levels stops it.
        legacy.problem = "JSON nested too deeply to read"
        return legacy
    except OSError as exc:
        legacy.problem = f"unreadable ({exc.strerror})"
        return legacy
    items = document if path.name == MEMORY_FILE else [document]
    if not isinstance(items, list):
        legacy.problem = "memory.json must hold a JSON array of records"
        return legacy
    for index, item in enumerate(items):
        where = f"record {index}" if path.name == MEMORY_FILE else "the record"
        try:
            legacy.records.append(_record(item, now_s, max_content_bytes))
        except InvalidRequest as exc:
            legacy.problem = f"{where}: {exc}"
            legacy.records.clear()
            return legacy
    return legacy


def _record(item: Any, now_s: float, max_content_bytes: int) -> LegacyRecord:
    if not isinstance(item, dict):
        raise InvalidRequest("record", "must be an object {type, content, timestamp}")
    if item.get("content") is None:
        raise InvalidRequest("content", "is missing or null")
    # Checked first: what follows (msgpack, the id's digest) recurses into it.
    v.content("content", item["content"])
    if len(msgpack.packb(item["content"], use_bin_type=True)) > max_content_bytes:
        raise InvalidRequest("content", "larger than the daemon's max_record_bytes")
    memory_type = v.type_token("type", item.get("type"))
    timestamp = item.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise InvalidRequest("timestamp", "must be a number of seconds since the epoch")
    if not math.isfinite(timestamp):
        raise InvalidRequest("timestamp", "must be finite")
    return LegacyRecord(memory_type, item["content"], v.timestamp("timestamp", timestamp, now_s))


def record_id(agent_id: str, path: Path, index: int, record: LegacyRecord) -> str:
    """Deterministic, and in time order (then file order) like memoryd's own ids."""
    digest = hashlib.sha256(
        json.dumps(
            [agent_id, path.name, index, record.type, record.content, record.timestamp],
            ensure_ascii=False,
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:12]
    return f"legacy-{round(record.timestamp * 1000):014d}-{index:06d}-{digest}"


def add_requests(legacy: LegacyFile, ttl_s: float | None) -> list[dict[str, Any]]:
    """The file's records as ``add_many`` items."""
    items = []
    for index, record in enumerate(legacy.records):
        item: dict[str, Any] = {
            "agent_id": legacy.agent_id,
            "id": record_id(legacy.agent_id, legacy.path, index, record),
            "type": record.type,
            "content": record.content,
            "created_at": record.timestamp,
        }
        if ttl_s is not None:
            item["ttl_s"] = ttl_s
        items.append(item)
    return items


# What is left of max_record_bytes once the fields around the content are in.
RECORD_FIELDS_BYTES = 512


@dataclass(slots=True)
class LegacyImport:
    """What ``import_files`` did: files and records sent, agents seen, files skipped."""

    files: int = 0
    records: int = 0
    agents: set[str] = field(default_factory=set)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def import_files(
    client: Client,
    root: Path,
    report: LegacyImport,
    *,
    now_s: float,
    ttl_s: float | None,
    batch: int,
    dry_run: bool = False,
    on_agent: Callable[[str, int], None] = lambda agent_id, records: None,
    on_skip: Callable[[Path, str], None] = lambda path, problem: None,
) -> None:
    """Send every readable file under ``root`` to the daemon, one agent after another.

    Raises the client's errors (a second run after one adds nothing twice);
    ``report`` holds what was done until then.
    """
    max_content_bytes = client.status()["limits"]["max_record_bytes"] - RECORD_FIELDS_BYTES
    for agent_dir in agent_dirs(root):
        agent_records = 0
        for found in read_agent(agent_dir, now_s, max_content_bytes):
            if found.problem is not None:
                report.skipped.append((found.path, found.problem))
                on_skip(found.path, found.problem)
                continue
            items = add_requests(found, ttl_s)
            for first in range(0, len(items), batch):
                if not dry_run:
                    client.add_many(items[first : first + batch])
            report.files += 1
            agent_records += len(items)
        if agent_records:
            report.agents.add(agent_dir.name)
            report.records += agent_records
            on_agent(agent_dir.name, agent_records)
