"""An agent's own memory: ``MemoryAdapter`` (awaitable) and the legacy synchronous ``Memory``.

Each agent id is its own memoryd stream; a record keeps the memory type as
its type, the content as it was given and the time it was added as its
``created_at``.  Every call goes to the daemon: nothing is cached here, so
several processes of one agent see the same memory.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from memoryd_client.aio import AsyncClient
from memoryd_client.client import Client
from memoryd_client.compat.tableround import text
from memoryd_client.compat.tableround.clients import shared_async_client, shared_client
from memoryd_client.paging import all_records, all_records_sync
from memoryd_client.types import Record

# get_memories_by_type and get_recent_memories of the Redis-backed original,
# which its agent code relies on ("the first is the latest").
BY_TYPE_LIMIT = 10
RECENT_LIMIT = 10


def render(record: Record) -> str:
    return text.memory_line(record["type"], record["content"], record["created_at"])


def legacy_dict(record: Record) -> dict[str, Any]:
    """A record as the original kept it in memory and in ``memory.json``."""
    return {"type": record["type"], "content": record["content"], "timestamp": record["created_at"]}


def storage_info(status: dict[str, Any]) -> dict[str, Any]:
    """What memoryd's status says about its store, in the original's terms."""
    store = status.get("store", {})
    limits = status.get("limits", {})
    info: dict[str, Any] = {
        "storage_type": store.get("kind"),
        "redis_enabled": redis_in_use(status),
        "max_memories": limits.get("max_memories"),
        "ttl": limits.get("default_ttl_s"),
        "memoryd_state": status.get("state"),
    }
    info.update(redis_host=None, redis_port=None, redis_db=None)
    if store.get("kind") == "redis":
        info.update(_redis_address(str(store.get("address") or "")))
    return info


def _redis_address(url: str) -> dict[str, Any]:
    """Host, port and db of a Redis URL; for a Unix socket the host is its path."""
    parts = urlsplit(url)
    query_db = parse_qs(parts.query).get("db", ["0"])[0]
    if parts.scheme == "unix":
        return {"redis_host": parts.path, "redis_port": None, "redis_db": _number(query_db)}
    path_db = parts.path.lstrip("/") or query_db
    return {
        "redis_host": parts.hostname,
        "redis_port": parts.port or 6379,
        "redis_db": _number(path_db),
    }


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def redis_in_use(status: dict[str, Any]) -> bool:
    """Whether memoryd keeps the memory in Redis and reaches it now."""
    kind = status.get("store", {}).get("kind")
    return kind == "redis" and status.get("state") in ("healthy", "recovering")


class _AgentMemory:
    """What both personal facades keep, as the originals did: ``storage_type``,
    ``max_tokens`` and ``settings`` are accepted and kept, the storage is
    whatever memoryd runs on.  ``socket_path`` (an addition) picks the daemon;
    by default the client's (``MEMORYD_SOCKET_PATH``, else the standard path)."""

    default_storage_type: str
    logger_prefix: str

    def __init__(
        self,
        agent_id: str,
        storage_type: str | None = None,
        max_tokens: int = 4000,
        settings: Any = None,
        *,
        socket_path: str | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.storage_type = self.default_storage_type if storage_type is None else storage_type
        self.max_tokens = max_tokens
        self.settings = settings
        self.socket_path = socket_path
        self.logger = logging.getLogger(f"{self.logger_prefix}.{agent_id}")


class MemoryAdapter(_AgentMemory):
    """The per-agent memory of TableRound's agents (storage_type "auto"), served by memoryd."""

    default_storage_type = "auto"
    logger_prefix = "memory_adapter"

    @property
    def _client(self) -> AsyncClient:
        return shared_async_client(self.socket_path)

    async def add_memory(self, memory_type: str, content: dict[str, Any]) -> str:
        """Store a memory; its id (the original returned None, its Redis backend the id)."""
        return (await self._client.add(self.agent_id, memory_type, content))["id"]

    async def get_relevant_memories(self, topic: str, limit: int = 5) -> list[str]:
        """The newest ``limit`` memories, newest first (``topic`` is ignored, as it was)."""
        return [render(r) for r in await self._client.recent(self.agent_id, limit=limit)]

    async def get_recent_memories(self, limit: int = RECENT_LIMIT) -> list[str]:
        return [render(r) for r in await self._client.recent(self.agent_id, limit=limit)]

    async def get_all_memories(self) -> list[str]:
        """Every memory, oldest first."""
        return [render(r) async for r in all_records(self._client, self.agent_id)]

    async def get_memories_by_type(self, memory_type: str) -> list[str]:
        """The newest ten of one type, newest first."""
        found = await self._client.recent(self.agent_id, limit=BY_TYPE_LIMIT, types=[memory_type])
        return [render(r) for r in found]

    async def get_conversation_history(self) -> str:
        """Every discussion, oldest first, as ``role 关于 topic 的发言: text``."""
        records = all_records(self._client, self.agent_id, ["discussion"])
        return text.conversation_history([r["content"] async for r in records])

    async def search_memories_by_content(self, keyword: str, limit: int = 10) -> list[str]:
        """Memories whose text contains ``keyword`` (case-insensitive), newest first."""
        return [render(r) for r in await self._client.search(self.agent_id, keyword, limit=limit)]

    async def clear_memories(self) -> None:
        """Remove this agent's memories, and nothing else."""
        await self._client.clear(self.agent_id)

    async def get_memory_stats(self) -> dict[str, Any]:
        """What is stored now (never "ever added")."""
        stats = await self._client.stats(self.agent_id)
        info = storage_info(await self._client.status())
        result: dict[str, Any] = {
            "agent_id": self.agent_id,
            "total_memories": stats["count"],
            "current_memory_count": stats["count"],
            "last_update": stats["newest"],
            "storage_type": info["storage_type"],
            "max_memories": info["max_memories"],
            "ttl_seconds": info["ttl"],
        }
        result.update({f"type_{name}": count for name, count in stats["by_type"].items()})
        return result

    async def get_storage_info(self) -> dict[str, Any]:
        info = storage_info(await self._client.status())
        return {"agent_id": self.agent_id, "max_tokens": self.max_tokens, **info}

    async def health_check(self) -> dict[str, Any]:
        status = await self._client.status()
        return {
            "status": status["state"],
            "agent_id": self.agent_id,
            "redis_enabled": redis_in_use(status),
            "stats": await self.get_memory_stats(),
        }

    def is_redis_enabled(self) -> bool:
        """Whether memoryd keeps the memory in Redis and reaches it now (a blocking call)."""
        return redis_in_use(shared_client(self.socket_path).status())


class Memory(_AgentMemory):
    """The legacy synchronous ``Memory`` of TableRound, with its file-store semantics
    (``get_memories_by_type`` gives every record of the type, oldest first), served
    by memoryd whatever ``storage_type`` says."""

    default_storage_type = "memory"
    logger_prefix = "memory"

    @property
    def _client(self) -> Client:
        return shared_client(self.socket_path)

    @property
    def memories(self) -> list[dict[str, Any]]:
        """Every memory as ``{type, content, timestamp}``, oldest first."""
        return [legacy_dict(r) for r in all_records_sync(self._client, self.agent_id)]

    def add_memory(self, memory_type: str, content: dict[str, Any]) -> None:
        self._client.add(self.agent_id, memory_type, content)

    def get_relevant_memories(self, topic: str, limit: int = 5) -> list[str]:
        return [render(r) for r in self._client.recent(self.agent_id, limit=limit)]

    def get_all_memories(self) -> list[str]:
        return [render(r) for r in all_records_sync(self._client, self.agent_id)]

    def get_memories_by_type(self, memory_type: str) -> list[str]:
        return [render(r) for r in all_records_sync(self._client, self.agent_id, [memory_type])]

    def get_conversation_history(self) -> str:
        records = all_records_sync(self._client, self.agent_id, ["discussion"])
        return text.conversation_history(r["content"] for r in records)

    def clear_memories(self) -> None:
        self._client.clear(self.agent_id)

    def _format_memory_as_text(self, memory: dict[str, Any]) -> str:
        return text.memory_line(
            text.plain_text(memory.get("type", "")),
            memory.get("content", {}),
            memory.get("timestamp", 0),
        )
