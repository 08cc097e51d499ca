"""The legacy file store (tableround.md section 1), re-implemented from its description.

One ``Memory``-like list per agent, loaded from ``<dir>/<agent>/memory.json`` when first used
(the original loaded it in the constructor) and written back whole, as one JSON array with
``ensure_ascii=False, indent=2``, on every add: O(history) per add, no temp file, no fsync.
Reads scan and sort the in-process list on every call, newest first, as the original did.

The original kept the shared meeting stream only in Redis; here it is one more file of the same
format whose records also carry the speaker (``agent_id``), so that ``context`` can skip the
caller's own speeches.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.backends.base import Records, contains_text
from bench.workload import Rec


class FileStore:
    name = "legacy-files"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._memories: dict[str, list[dict[str, Any]]] = {}

    def _path(self, stream: str) -> Path:
        return self.directory / stream / "memory.json"

    def _list(self, stream: str) -> list[dict[str, Any]]:
        memories = self._memories.get(stream)
        if memories is None:
            path = self._path(stream)
            try:
                memories = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                memories = []
            self._memories[stream] = memories
        return memories

    def _save(self, stream: str, memories: list[dict[str, Any]]) -> None:
        path = self._path(stream)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as file:
            json.dump(memories, file, ensure_ascii=False, indent=2)

    def _append(self, stream: str, record: Rec) -> list[dict[str, Any]]:
        memories = self._list(stream)
        entry: dict[str, Any] = {
            "type": record.type,
            "content": record.content,
            "timestamp": time.time(),
        }
        if record.kind != "personal":
            entry["agent_id"] = record.author
        memories.append(entry)
        return memories

    def add(self, stream: str, record: Rec) -> str:
        memories = self._append(stream, record)
        self._save(stream, memories)
        return str(len(memories))

    def add_many(self, items: Sequence[tuple[str, Rec]]) -> int:
        """Set-up only (the original had no batch add): each file is written once at the end,
        as if the history had been on disk already."""
        streams = {stream: self._append(stream, record) for stream, record in items}
        for stream, memories in streams.items():
            self._save(stream, memories)
        return len(items)

    def _newest(self, stream: str) -> list[dict[str, Any]]:
        return sorted(self._list(stream), key=lambda m: m["timestamp"], reverse=True)

    def newest_n(self, stream: str, n: int) -> Records:
        return self._newest(stream)[:n]

    def by_type(self, stream: str, record_type: str, n: int) -> Records:
        return [m for m in self._newest(stream) if m["type"] == record_type][:n]

    def context(self, stream: str, n: int, exclude_author: str) -> Records:
        return [m for m in self._newest(stream) if m.get("agent_id") != exclude_author][:n]

    def search(self, stream: str, query: str, n: int) -> Records:
        needle = query.lower()
        return [m for m in self._newest(stream) if contains_text(m["content"], needle)][:n]

    def clear(self, stream: str, *, shared: bool = False) -> None:
        self._memories[stream] = []
        shutil.rmtree(self.directory / stream, ignore_errors=True)

    def close(self) -> None:
        self._memories.clear()
