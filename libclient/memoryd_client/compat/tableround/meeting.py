"""A meeting's shared memory: ``GlobalMemory``, served by memoryd.

A meeting is one memoryd stream, ``meeting:<session_id>``, shared by its
agents: a speech is a record whose type is the speech type, whose author is
the speaking agent and whose tags hold the stage, so the timeline's agent
and stage filters run in the daemon.  The participants and the current stage
stay in the object, as the original's reads did (it also wrote them to
Redis, where nothing read them back).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from memoryd_client import wire
from memoryd_client.aio import AsyncClient
from memoryd_client.compat.tableround import text
from memoryd_client.compat.tableround.clients import shared_async_client
from memoryd_client.types import Record

STREAM_PREFIX = "meeting:"
STATS_LIMIT = wire.MAX_READ_LIMIT
STAGE_SUMMARY_LIMIT = 100


def stream_of(session_id: str) -> str:
    return STREAM_PREFIX + session_id


def timeline_entry(record: Record) -> dict[str, Any]:
    """A speech as the original's timeline gave it: strings, but ``additional_data`` parsed."""
    content = record["content"] if isinstance(record["content"], dict) else {}
    created_at = record["created_at"]
    return {
        "speech_id": record["id"],
        "agent_id": record["author"] or "",
        "agent_name": text.plain_text(content.get("agent_name", "")),
        "speech_type": record["type"],
        "content": text.plain_text(content.get("content", "")),
        "stage": text.plain_text(content.get("stage", "")),
        "timestamp": str(created_at),
        "datetime": datetime.fromtimestamp(created_at).isoformat(),
        "additional_data": content.get("additional_data") or {},
    }


class GlobalMemory:
    """The shared memory of one meeting (TableRound's ``GlobalMemory``).

    ``storage_type`` is accepted and ignored, as it was.  ``socket_path`` (an
    addition) picks the daemon.
    """

    def __init__(
        self, session_id: str, storage_type: str = "redis", *, socket_path: str | None = None
    ) -> None:
        self.session_id = session_id
        self.storage_type = storage_type
        self.socket_path = socket_path
        self.stream = stream_of(session_id)
        self.meeting_start_time = time.time()
        self.current_stage = "init"
        self.participants: set[str] = set()
        self.logger = logging.getLogger(f"global_memory.{session_id}")

    @property
    def _client(self) -> AsyncClient:
        return shared_async_client(self.socket_path)

    async def add_participant(self, agent_id: str, agent_name: str, agent_role: str) -> None:
        self.participants.add(agent_id)
        self.logger.info("参与者加入会议: %s (%s)", agent_name, agent_role)

    async def record_speech(
        self,
        agent_id: str,
        agent_name: str,
        speech_type: str,
        content: str,
        stage: str,
        additional_data: dict[str, Any] | None = None,
    ) -> str:
        """Store a speech; its id."""
        speech = {
            "agent_name": agent_name,
            "content": content,
            "stage": stage,
            "additional_data": additional_data or {},
        }
        added = await self._client.add(
            self.stream, speech_type, speech, author=agent_id, tags=[stage] if stage else []
        )
        return added["id"]

    async def get_meeting_timeline(
        self, limit: int = 50, stage_filter: str | None = None, agent_filter: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` speeches that pass the filters, newest first."""
        records = await self._client.recent(
            self.stream,
            limit=limit,
            author=agent_filter or None,
            tags=[stage_filter] if stage_filter else None,
        )
        return [timeline_entry(r) for r in records]

    async def get_current_context(self, requesting_agent_id: str, max_context: int = 10) -> str:
        """The newest ``max_context`` speeches, oldest first, without the requester's own."""
        timeline = await self.get_meeting_timeline(limit=max_context)
        return text.meeting_context(timeline, requesting_agent_id)

    async def get_stage_summary(self, stage: str) -> dict[str, Any]:
        timeline = await self.get_meeting_timeline(limit=STAGE_SUMMARY_LIMIT, stage_filter=stage)
        speech_types: dict[str, int] = {}
        for speech in timeline:
            speech_types[speech["speech_type"]] = speech_types.get(speech["speech_type"], 0) + 1
        times = [float(speech["timestamp"]) for speech in timeline]
        return {
            "stage": stage,
            "speech_count": len(timeline),
            "participants": sorted({speech["agent_name"] for speech in timeline}),
            "speech_types": speech_types,
            "start_time": min(times, default=None),
            "end_time": max(times, default=None),
        }

    async def update_stage(self, new_stage: str) -> None:
        self.current_stage = new_stage
        self.logger.info("会议阶段更新: %s", new_stage)

    async def clear_session(self) -> None:
        """Remove this meeting's speeches, and nothing else."""
        await self._client.clear(self.stream)

    async def get_meeting_stats(self) -> dict[str, Any]:
        timeline = await self.get_meeting_timeline(limit=STATS_LIMIT)
        by_type: dict[str, int] = {}
        by_agent: dict[str, int] = {}
        for speech in timeline:
            by_type[speech["speech_type"]] = by_type.get(speech["speech_type"], 0) + 1
            by_agent[speech["agent_name"]] = by_agent.get(speech["agent_name"], 0) + 1
        return {
            "session_id": self.session_id,
            "start_time": self.meeting_start_time,
            "current_stage": self.current_stage,
            "total_speeches": len(timeline),
            "participants_count": len(self.participants),
            "participants": sorted(self.participants),
            "speech_by_type": by_type,
            "speech_by_agent": by_agent,
            "duration_minutes": (time.time() - self.meeting_start_time) / 60,
        }
