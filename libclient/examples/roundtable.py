"""A runnable round table: TableRound's meeting, scripted, on memoryd through the facades.

Six agents (craftsman, three consumers, manufacturer, designer) hold the
original's phases: introductions, discussion turns, keyword extraction,
voting, a role switch and one more turn.  There is no LLM: each agent's
"answer" is scripted text, but the memory calls are the ones the original
agent code makes, in its order, through ``MemoryAdapter`` and
``GlobalMemory``.  Several meetings run at once; the context one agent sees
is printed at every turn, and a consistency check of every stream ends the
run (exit status 1 if anything is off).

    python libclient/examples/roundtable.py [--meetings 3] [--turns 3] [--socket PATH]

Without ``--socket`` it starts a private memoryd on the local store in a
temporary directory and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from memoryd_client import Client
from memoryd_client.compat.tableround import GlobalMemory, MemoryAdapter

ROLES = [
    ("craftsman", "手工艺人", "竹编的结构和手感"),
    ("consumer", "消费者", "价格和日常耐用"),
    ("manufacturer", "制造商", "量产的成本和工艺"),
    ("consumer", "消费者", "外观是否好看"),
    ("designer", "设计师", "形态与文化的表达"),
    ("consumer", "消费者", "能否送礼"),
]
TOPIC = "竹编灯具的新设计"
KEYWORDS = ["轻盈", "自然", "可持续", "手作", "温暖"]


@dataclass
class Agent:
    agent_id: str
    name: str
    role: str
    concern: str
    memory: MemoryAdapter
    said: int = 0

    async def introduce(self, meeting: GlobalMemory) -> None:
        text = f"大家好，我是{self.name}，我最关心{self.concern}。"
        await self.memory.add_memory("introduction", {"role": self.role, "content": text})
        await meeting.record_speech(self.agent_id, self.name, "introduction", text, "introduction")

    async def discuss(self, meeting: GlobalMemory, turn: int) -> str:
        recalled = await self.memory.get_relevant_memories(TOPIC)
        context = await meeting.get_current_context(self.agent_id, max_context=8)
        heard = "暂无" not in context
        text = (
            f"第{turn + 1}轮，{self.name}：关于{TOPIC}，我记得自己说过{len(recalled)}件事，"
            f"{'也听了其他人的意见，' if heard else ''}我认为应该重视{self.concern}。"
        )
        await self.memory.add_memory(
            "discussion", {"role": self.role, "topic": TOPIC, "content": text}
        )
        await meeting.record_speech(self.agent_id, self.name, "discussion", text, "discussion")
        self.said += 1
        return context

    async def extract_keywords(self, meeting: GlobalMemory, stage: str) -> list[str]:
        chosen = KEYWORDS[self.said % 3 : self.said % 3 + 3]
        await self.memory.add_memory(
            "keywords", {"role": self.role, "topic": TOPIC, "keywords": chosen}
        )
        await meeting.record_speech(self.agent_id, self.name, "keywords", ", ".join(chosen), stage)
        return chosen

    async def switch_role(self, meeting: GlobalMemory, new_role: str, keywords: list[str]) -> None:
        await self.memory.get_relevant_memories(", ".join(keywords))
        await meeting.get_current_context(self.agent_id, max_context=10)
        reflection = f"从{new_role}的角度看，{keywords[0]}更重要。"
        await self.memory.add_memory(
            "role_switch",
            {
                "previous_role": self.role,
                "new_role": new_role,
                "topic": ", ".join(keywords),
                "reflection": reflection,
            },
        )
        self.role = new_role


@dataclass
class Meeting:
    number: int
    turns: int
    watch: bool
    memory: GlobalMemory = field(init=False)
    agents: list[Agent] = field(init=False)

    def __post_init__(self) -> None:
        session = f"demo-{os.getpid()}-{int(time.time())}-{self.number}"
        self.memory = GlobalMemory(session)
        self.agents = []
        counts: dict[str, int] = {}
        for role, name, concern in ROLES:
            counts[role] = counts.get(role, 0) + 1
            agent_id = f"{session}.{role}_{counts[role]}"
            label = f"{name}{counts[role]}" if role == "consumer" else name
            self.agents.append(Agent(agent_id, label, role, concern, MemoryAdapter(agent_id)))

    def show(self, what: str) -> None:
        if self.watch:
            print(what)

    async def run(self) -> None:
        for agent in self.agents:
            await self.memory.add_participant(agent.agent_id, agent.name, agent.role)
        await self.memory.update_stage("introduction")
        for agent in self.agents:
            await agent.introduce(self.memory)
        await self.memory.update_stage("discussion")
        for turn in range(self.turns):
            for agent in self.agents:
                context = await agent.discuss(self.memory, turn)
                if agent is self.agents[0]:
                    title = f"meeting {self.number}, turn {turn + 1}: what {agent.name} sees"
                    self.show(f"\n--- {title} ---\n{context}")
        await self.memory.update_stage("keywords")
        chosen = [await agent.extract_keywords(self.memory, "keywords") for agent in self.agents]
        await self.memory.update_stage("voting")
        await self.memory.update_stage("role_switch")
        roles = [agent.role for agent in self.agents]
        for agent, new_role in zip(self.agents, roles[1:] + roles[:1], strict=True):
            await agent.switch_role(self.memory, new_role, chosen[0])
        await self.memory.update_stage("discussion")
        for agent in self.agents:
            await agent.discuss(self.memory, self.turns)
        await self.memory.update_stage("keywords")
        for agent in self.agents:
            await agent.extract_keywords(self.memory, "final_keywords")


async def check(meetings: list[Meeting], turns: int) -> list[str]:
    """Every stream: the right counts, in time order, nothing from another meeting."""
    problems = []
    per_agent = {"introduction": 1, "discussion": turns + 1, "keywords": 2, "role_switch": 1}
    for meeting in meetings:
        timeline = await meeting.memory.get_meeting_timeline(limit=1000)
        expected = len(meeting.agents) * (turns + 4)
        if len(timeline) != expected:
            problems.append(
                f"meeting {meeting.number}: {len(timeline)} speeches, expected {expected}"
            )
        times = [float(speech["timestamp"]) for speech in timeline]
        if times != sorted(times, reverse=True):
            problems.append(f"meeting {meeting.number}: timeline out of order")
        ours = {agent.agent_id for agent in meeting.agents}
        strangers = {speech["agent_id"] for speech in timeline} - ours
        if strangers:
            problems.append(f"meeting {meeting.number}: speeches of {sorted(strangers)}")
        for agent in meeting.agents:
            stats = await agent.memory.get_memory_stats()
            got = {kind: stats.get(f"type_{kind}", 0) for kind in per_agent}
            if got != per_agent:
                problems.append(f"{agent.agent_id}: {got}, expected {per_agent}")
            lines = await agent.memory.get_memories_by_type("discussion")
            if any(f"{agent.name}：" not in line for line in lines):
                problems.append(f"{agent.agent_id}: a discussion not its own in its stream")
    return problems


async def main(meetings_count: int, turns: int) -> int:
    meetings = [Meeting(n + 1, turns, watch=n == 0) for n in range(meetings_count)]
    started = time.monotonic()
    await asyncio.gather(*(meeting.run() for meeting in meetings))
    elapsed = time.monotonic() - started
    problems = await check(meetings, turns)
    calls = sum(len(m.agents) for m in meetings) * (4 * turns + 13)
    print(
        f"\n{meetings_count} meetings of {len(ROLES)} agents, {turns} turns each, in {elapsed:.2f}s"
        f" (about {calls} memory calls)"
    )
    for meeting in meetings:
        stats = await meeting.memory.get_meeting_stats()
        speeches = f"{stats['total_speeches']} speeches {stats['speech_by_type']}"
        print(f"meeting {meeting.number}: {speeches}")
    for problem in problems:
        print(f"INCONSISTENT: {problem}")
    print(
        "consistency check:", "FAILED" if problems else "every stream complete, in order, isolated"
    )
    for meeting in meetings:
        await meeting.memory.clear_session()
        for agent in meeting.agents:
            await agent.memory.clear_memories()
    return 1 if problems else 0


@contextlib.contextmanager
def private_daemon() -> Iterator[str]:
    """A memoryd on the local store in a temporary directory, for the length of the demo."""
    with tempfile.TemporaryDirectory(prefix="roundtable-") as directory:
        socket_path = str(Path(directory) / "memoryd.sock")
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memoryd",
                "run",
                "--backend",
                "local",
                "--data-dir",
                str(Path(directory) / "data"),
                "--socket-path",
                socket_path,
                "--log-level",
                "WARNING",
            ],
        )
        try:
            with Client(socket_path, timeout_s=30) as client:
                client.ping()  # retries until the daemon listens
            yield socket_path
        finally:
            daemon.terminate()
            daemon.wait(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meetings", type=int, default=3, help="meetings at once (3)")
    parser.add_argument("--turns", type=int, default=3, help="discussion turns (3)")
    parser.add_argument("--socket", help="a running memoryd (default: start a private one)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        socket = args.socket or stack.enter_context(private_daemon())
        os.environ["MEMORYD_SOCKET_PATH"] = socket
        sys.exit(asyncio.run(main(args.meetings, args.turns)))
