"""Round-table meetings through the TableRound facades, one after another, in each thread.

Each meeting thread runs its own event loop (so its own ``AsyncClient``, as
``compat.tableround.clients`` gives one per loop) and holds meetings in turn:
six agents with ``MemoryAdapter``s and one ``GlobalMemory``, the phases and
memory calls of ``libclient/examples/roundtable.py`` (introductions,
discussion turns reading their memories and the meeting context, keywords, a
role switch, a last turn), plus the facades' other reads now and then.  With
``max_memories`` small a meeting's stream is trimmed while it runs, and with a
short default TTL what a meeting leaves behind expires: every other meeting
clears its streams at the end (``clear_session``, ``clear_memories``), the
others are left to expire.  The legacy synchronous ``Memory`` gets a thread of
its own.  Every call is timed and its errors classified by the ``Observer``;
timelines are checked (``answers.check_timeline``).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from memoryd_client.compat.tableround import GlobalMemory, Memory, MemoryAdapter
from memoryd_client.compat.tableround.clients import shared_async_client
from tests.soak.answers import check_timeline
from tests.soak.observed import Failed, Observer
from tests.soak.plan import Plan
from tests.soak.traffic import Registry

T = TypeVar("T")

ROLES = (
    ("craftsman", "手工艺人", "竹编的结构和手感"),
    ("consumer", "消费者", "价格和日常耐用"),
    ("manufacturer", "制造商", "量产的成本和工艺"),
    ("consumer", "消费者", "外观是否好看"),
    ("designer", "设计师", "形态与文化的表达"),
    ("consumer", "消费者", "能否送礼"),
)
TOPIC = "竹编灯具的新设计"
KEYWORDS = ("轻盈", "自然", "可持续", "手作", "温暖")


class _Stopped(Exception):
    """The run is over: the meeting ends where it is."""


@dataclass
class _Agent:
    agent_id: str
    name: str
    role: str
    concern: str
    memory: MemoryAdapter
    said: int = 0


@dataclass
class _Meeting:
    session_id: str
    socket_path: str
    plan: Plan
    observer: Observer
    registry: Registry
    stop: threading.Event
    memory: GlobalMemory = field(init=False)
    agents: list[_Agent] = field(init=False)

    def __post_init__(self) -> None:
        self.memory = GlobalMemory(self.session_id, socket_path=self.socket_path)
        self.agents = []
        counts: dict[str, int] = {}
        for role, name, concern in ROLES:
            counts[role] = counts.get(role, 0) + 1
            agent_id = f"{self.session_id}.{role}_{counts[role]}"
            adapter = MemoryAdapter(agent_id, socket_path=self.socket_path)
            self.agents.append(_Agent(agent_id, f"{name}{counts[role]}", role, concern, adapter))

    async def _call(self, method: str, call: Coroutine[Any, Any, T]) -> T | Failed:
        if self.stop.is_set():
            call.close()  # never started: nothing to await
            raise _Stopped
        result = await self.observer.acall(method, call)
        await asyncio.sleep(self.plan.load.meeting_pause_s)
        return result

    async def run(self, clear_at_end: bool) -> None:
        for agent in self.agents:
            await self.memory.add_participant(agent.agent_id, agent.name, agent.role)
            self.registry.add(agent.agent_id)
        self.registry.add(self.memory.stream)
        await self.memory.update_stage("introduction")
        for agent in self.agents:
            await self._introduce(agent)
        await self.memory.update_stage("discussion")
        turns = self.plan.load.meeting_turns
        for turn in range(turns):
            if self.stop.is_set():
                break
            for agent in self.agents:
                await self._discuss(agent, turn)
            await self._look_back(self.agents[turn % len(self.agents)])
        await self.memory.update_stage("keywords")
        for agent in self.agents:
            await self._keywords(agent, "keywords")
        await self.memory.update_stage("role_switch")
        roles = [agent.role for agent in self.agents]
        for agent, new_role in zip(self.agents, roles[1:] + roles[:1], strict=True):
            await self._switch_role(agent, new_role)
        await self.memory.update_stage("discussion")
        for agent in self.agents:
            await self._discuss(agent, turns)
            await self._keywords(agent, "final_keywords")
        await self._call("meeting.get_meeting_stats", self.memory.get_meeting_stats())
        if clear_at_end:
            await self._call("meeting.clear_session", self.memory.clear_session())
            for agent in self.agents:
                await self._call("adapter.clear_memories", agent.memory.clear_memories())

    async def _introduce(self, agent: _Agent) -> None:
        text = f"大家好，我是{agent.name}，我最关心{agent.concern}。"
        content = {"role": agent.role, "content": text}
        await self._call("adapter.add_memory", agent.memory.add_memory("introduction", content))
        speech = self.memory.record_speech(
            agent.agent_id, agent.name, "introduction", text, "introduction"
        )
        await self._call("meeting.record_speech", speech)

    async def _discuss(self, agent: _Agent, turn: int) -> None:
        recalled = await self._call(
            "adapter.get_relevant_memories", agent.memory.get_relevant_memories(TOPIC)
        )
        context = await self._call(
            "meeting.get_current_context",
            self.memory.get_current_context(agent.agent_id, max_context=8),
        )
        heard = isinstance(context, str) and "暂无" not in context
        count = 0 if isinstance(recalled, Failed) else len(recalled)
        text = (
            f"第{turn + 1}轮，{agent.name}：关于{TOPIC}，我记得自己说过{count}件事，"
            f"{'也听了其他人的意见，' if heard else ''}我认为应该重视{agent.concern}。"
        )
        content = {"role": agent.role, "topic": TOPIC, "content": text}
        await self._call("adapter.add_memory", agent.memory.add_memory("discussion", content))
        speech = self.memory.record_speech(
            agent.agent_id, agent.name, "discussion", text, "discussion"
        )
        await self._call("meeting.record_speech", speech)
        agent.said += 1

    async def _keywords(self, agent: _Agent, stage: str) -> None:
        chosen = list(KEYWORDS[agent.said % 3 : agent.said % 3 + 3])
        content = {"role": agent.role, "topic": TOPIC, "keywords": chosen}
        await self._call("adapter.add_memory", agent.memory.add_memory("keywords", content))
        speech = self.memory.record_speech(
            agent.agent_id, agent.name, "keywords", ", ".join(chosen), stage
        )
        await self._call("meeting.record_speech", speech)

    async def _switch_role(self, agent: _Agent, new_role: str) -> None:
        await self._call(
            "adapter.get_relevant_memories", agent.memory.get_relevant_memories("轻盈, 自然")
        )
        await self._call(
            "meeting.get_current_context",
            self.memory.get_current_context(agent.agent_id, max_context=10),
        )
        content = {
            "previous_role": agent.role,
            "new_role": new_role,
            "topic": "轻盈, 自然",
            "reflection": f"从{new_role}的角度看，轻盈更重要。",
        }
        await self._call("adapter.add_memory", agent.memory.add_memory("role_switch", content))
        agent.role = new_role

    async def _look_back(self, agent: _Agent) -> None:
        """The facades' other reads, once a turn, checked where they can be."""
        timeline = await self._call(
            "meeting.get_meeting_timeline", self.memory.get_meeting_timeline(limit=100)
        )
        if not isinstance(timeline, Failed):
            agent_ids = [a.agent_id for a in self.agents]
            check_timeline(self.observer, self.session_id, timeline, agent_ids)
        lines = await self._call(
            "adapter.get_memories_by_type", agent.memory.get_memories_by_type("discussion")
        )
        if not isinstance(lines, Failed) and any(f"{agent.name}：" not in line for line in lines):
            self.observer.problem(
                "record of another agent", f"{agent.agent_id}: a discussion not its own"
            )
        await self._call(
            "adapter.get_conversation_history", agent.memory.get_conversation_history()
        )
        await self._call("adapter.get_all_memories", agent.memory.get_all_memories())
        await self._call(
            "adapter.search_memories_by_content", agent.memory.search_memories_by_content("竹编")
        )
        await self._call("adapter.get_memory_stats", agent.memory.get_memory_stats())
        await self._call("meeting.get_stage_summary", self.memory.get_stage_summary("discussion"))


def meeting_thread(
    index: int,
    socket_path: str,
    plan: Plan,
    stop: threading.Event,
    observer: Observer,
    registry: Registry,
) -> None:
    """Meetings one after another until ``stop``; every other one clears its streams."""

    async def main() -> None:
        try:
            for serial in itertools.count():
                if stop.is_set():
                    return
                meeting = _Meeting(
                    f"soak-m{index}-{serial}", socket_path, plan, observer, registry, stop
                )
                await meeting.run(clear_at_end=serial % 2 == 0)
        except _Stopped:
            return
        finally:
            await shared_async_client(socket_path).aclose()

    asyncio.run(main())


def legacy_thread(
    index: int, socket_path: str, plan: Plan, stop: threading.Event, observer: Observer
) -> None:
    """The legacy synchronous ``Memory``: an agent's file-store API, cleared every cycle."""
    for serial in itertools.count():
        if stop.is_set():
            return
        memory = Memory(f"soak-legacy{index}-{serial}", socket_path=socket_path)
        _legacy_cycle(memory, plan, stop, observer)


def _legacy_cycle(memory: Memory, plan: Plan, stop: threading.Event, observer: Observer) -> None:
    for turn in range(plan.load.meeting_turns * 2):
        if stop.is_set():
            break
        content = {"role": "craftsman", "topic": TOPIC, "content": f"第{turn + 1}次发言"}
        observer.call("memory.add_memory", partial(memory.add_memory, "discussion", content))
        observer.call("memory.get_relevant_memories", partial(memory.get_relevant_memories, TOPIC))
        stop.wait(plan.load.meeting_pause_s)
    by_type = partial(memory.get_memories_by_type, "discussion")
    observer.call("memory.get_memories_by_type", by_type)
    observer.call("memory.get_conversation_history", memory.get_conversation_history)
    observer.call("memory.memories", lambda: memory.memories)
    observer.call("memory.clear_memories", memory.clear_memories)
