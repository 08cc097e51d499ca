"""TableRound's memory API on memoryd: the original's text to the byte, isolation, real daemons."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memoryd_client.compat.tableround import GlobalMemory, Memory, MemoryAdapter, text
from memoryd_client.compat.tableround.meeting import timeline_entry
from tests.daemons import Env, new_agent

# 2026-11-24 09:30:05 in Shanghai, where TableRound ran.
WHEN = 1795483805.25
STAMP = "[2026-11-24 09:30:05]"


@pytest.fixture(autouse=True)
def shanghai_time() -> Iterator[None]:
    """The time prefix is local time: pin the zone so the golden strings hold anywhere."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Shanghai"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


# -- the templates, golden ------------------------------------------------------------------

GOLDEN: list[tuple[str, dict[str, Any], str]] = [
    (
        "introduction",
        {"role": "手工艺人", "content": "我是一名有二十年经验的竹编手艺人。"},
        f"{STAMP} 自我介绍 (手工艺人): 我是一名有二十年经验的竹编手艺人。",
    ),
    (
        "discussion",
        {"role": "消费者", "topic": "竹编灯具", "content": "我更在意价格和耐用性。"},
        f"{STAMP} 讨论 (消费者 关于 竹编灯具): 我更在意价格和耐用性。",
    ),
    (
        "keywords",
        {"role": "设计师", "topic": "竹编灯具", "keywords": ["轻盈", "自然", "可持续"]},
        f"{STAMP} 关键词 (设计师 关于 竹编灯具): 轻盈, 自然, 可持续",
    ),
    (
        "voting",
        {"role": "制造商", "topic": "竹编灯具", "voted_keywords": [["自然", 9], ["轻盈", 7]]},
        f"{STAMP} 投票 (制造商 关于 竹编灯具): 自然, 轻盈",
    ),
    (
        "role_switch",
        {"previous_role": "消费者", "new_role": "设计师", "topic": "自然, 轻盈"},
        f"{STAMP} 角色转换: 从 消费者 转换为 设计师",
    ),
    (
        "image_story",
        {
            "role": "手工艺人",
            "story": "山间的竹林。",
            "keywords": ["竹", "山"],
            "image_path": "a.png",
        },
        f"{STAMP} 图片故事 (手工艺人): 山间的竹林。\n关键词: 竹, 山",
    ),
    (
        "design_card",
        {"role": "设计师", "content": "一盏竹编台灯。", "keywords": ["台灯"]},
        f"{STAMP} 设计卡牌 (设计师): 一盏竹编台灯。\n关键词: 台灯",
    ),
    (
        "preference",
        {"喜好": ["竹", "木"], "预算": 300},
        f"{STAMP} preference: {{'喜好': ['竹', '木'], '预算': 300}}",
    ),
    (
        "discussion",
        {"content": "没有角色和主题的发言"},
        f"{STAMP} 讨论 (unknown 关于 unknown): 没有角色和主题的发言",
    ),
]


@pytest.mark.parametrize(("memory_type", "content", "expected"), GOLDEN)
def test_every_template_renders_as_the_original(
    memory_type: str, content: dict[str, object], expected: str
) -> None:
    assert text.memory_line(memory_type, content, WHEN) == expected


def test_the_conversation_history_format() -> None:
    discussions = [
        {"role": "消费者", "topic": "灯具", "content": "第一句"},
        {"role": "设计师", "topic": "灯具", "content": "第二句"},
    ]
    expected = "消费者 关于 灯具 的发言: 第一句\n\n设计师 关于 灯具 的发言: 第二句"
    assert text.conversation_history(discussions) == expected
    assert text.conversation_history([]) == ""


def speech(agent_id: str, name: str, kind: str, content: str) -> dict[str, object]:
    return {"agent_id": agent_id, "agent_name": name, "speech_type": kind, "content": content}


def test_the_meeting_context_truncates_and_leaves_the_requester_out() -> None:
    intro, talk, other = "介" * 120, "论" * 200, "评" * 101
    newest_first = [
        speech("consumer_1", "消费者1", "product_evaluation", other),
        speech("designer_1", "设计师", "voting", "自然, 轻盈"),
        speech("craftsman_1", "手工艺人", "discussion", "我自己说的"),
        speech("manufacturer_1", "制造商", "keywords", "成本, 工艺"),
        speech("consumer_1", "消费者1", "discussion", talk),
        speech("designer_1", "设计师", "introduction", intro),
    ]
    assert text.meeting_context(newest_first, "craftsman_1") == "\n".join(
        [
            "=== 会议上下文 ===",
            f"【设计师】自我介绍: {'介' * 100}...",
            f"【消费者1】讨论发言: {'论' * 150}...",
            "【制造商】提取关键词: 成本, 工艺",
            "【设计师】投票: 自然, 轻盈",
            f"【消费者1】product_evaluation: {'评' * 100}...",
        ]
    )


def test_the_two_empty_context_sentences() -> None:
    assert text.meeting_context([], "craftsman_1") == "会议刚开始，暂无其他发言。"
    own = [speech("craftsman_1", "手工艺人", "discussion", "只有我")]
    assert text.meeting_context(own, "craftsman_1") == "会议中其他参与者暂无相关发言。"


# What msgpack decodes, and tuples (a caller's own content may hold them).
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()
_values = st.recursive(
    _scalars,
    lambda items: (
        st.lists(items, max_size=3)
        | st.dictionaries(st.text() | st.integers(), items, max_size=3)
        | st.tuples(items)
        | st.tuples(items, items)
    ),
    max_leaves=20,
)


@given(_values)
def test_plain_text_is_what_str_gives(value: object) -> None:
    assert text.plain_text(value) == str(value)


def test_content_nested_a_thousand_levels_renders_without_recursion() -> None:
    """A record an older memoryd stored: str() of it raises RecursionError."""
    deep: object = "底"
    for _ in range(1000):
        deep = [deep]
    shown = "[" * 1000 + "'底'" + "]" * 1000
    assert text.memory_line("note", deep, WHEN) == f"{STAMP} note: {shown}"
    assert text.memory_line("discussion", {"role": deep, "content": deep}, WHEN) == (
        f"{STAMP} 讨论 ({shown} 关于 unknown): {shown}"
    )
    assert text.memory_line("keywords", {"keywords": [deep]}, WHEN).endswith(f": {shown}")
    assert text.memory_line("voting", {"voted_keywords": [[deep, 1]]}, WHEN).endswith(shown)
    assert text.conversation_history([{"content": deep}]).endswith(f"的发言: {shown}")
    entry = timeline_entry(
        {
            "id": "s1",
            "agent_id": "meeting:m",
            "type": "keywords",
            "content": {"agent_name": "设计师", "content": deep},
            "author": "designer_1",
            "importance": 0.5,
            "tags": [],
            "metadata": {},
            "created_at": WHEN,
            "expires_at": None,
        }
    )
    assert entry["content"] == shown
    assert text.meeting_context([entry], "craftsman_1").endswith(f"提取关键词: {shown}")


# -- MemoryAdapter through the daemon -------------------------------------------------------


def adapter(env: Env, agent_id: str) -> MemoryAdapter:
    return MemoryAdapter(agent_id, "redis", 4000, None, socket_path=str(env.socket_path))


async def test_the_adapter_writes_and_reads_rendered_lines(env: Env) -> None:
    memory = adapter(env, new_agent("craftsman"))
    for memory_type, content, _ in GOLDEN:
        await memory.add_memory(memory_type, content)
    everything = await memory.get_all_memories()
    assert len(everything) == len(GOLDEN)
    # Each line is its template at the time memoryd stored, oldest first.
    for line, (_, _, golden) in zip(everything, GOLDEN, strict=True):
        assert line.endswith(golden[len(STAMP) :])
        assert line.startswith("[2") and line[20] == "]"
    assert await memory.get_relevant_memories("ignored topic") == everything[::-1][:5]
    assert await memory.get_relevant_memories("x", limit=2) == everything[::-1][:2]
    assert await memory.get_recent_memories() == everything[::-1][:10]
    discussions = [line for line in everything if " 讨论 (" in line]
    assert await memory.get_memories_by_type("discussion") == discussions[::-1]
    assert await memory.get_conversation_history() == (
        "消费者 关于 竹编灯具 的发言: 我更在意价格和耐用性。\n\n"
        "unknown 关于 unknown 的发言: 没有角色和主题的发言"
    )
    assert await memory.search_memories_by_content("竹林") == [everything[5]]


async def test_by_type_gives_the_newest_ten_newest_first(env: Env) -> None:
    memory = adapter(env, new_agent("consumer"))
    for n in range(12):
        await memory.add_memory("image_story", {"role": "消费者", "story": f"故事{n}"})
    stories = await memory.get_memories_by_type("image_story")
    assert len(stories) == 10
    assert "故事11" in stories[0] and "故事2\n" in stories[-1]


async def test_clear_removes_only_its_own_agent(env: Env) -> None:
    mine, other = adapter(env, new_agent("mine")), adapter(env, new_agent("other"))
    meeting = GlobalMemory(new_agent("session"), socket_path=str(env.socket_path))
    await mine.add_memory("discussion", {"content": "a"})
    await other.add_memory("discussion", {"content": "b"})
    await meeting.record_speech(mine.agent_id, "我", "discussion", "c", "discussion")
    await mine.clear_memories()
    assert await mine.get_all_memories() == []
    assert len(await other.get_all_memories()) == 1
    assert len(await meeting.get_meeting_timeline()) == 1


async def test_stats_count_what_is_stored_now(env: Env) -> None:
    memory = adapter(env, new_agent("stats"))
    for memory_type in ("discussion", "discussion", "keywords"):
        await memory.add_memory(memory_type, {"content": "x"})
    stats = await memory.get_memory_stats()
    assert stats["total_memories"] == stats["current_memory_count"] == 3
    assert stats["type_discussion"] == 2 and stats["type_keywords"] == 1
    assert stats["agent_id"] == memory.agent_id and stats["max_memories"] == 1000
    await memory.clear_memories()
    assert (await memory.get_memory_stats())["total_memories"] == 0


async def test_storage_info_describes_memoryd(env: Env) -> None:
    memory = adapter(env, new_agent("info"))
    info = await memory.get_storage_info()
    assert info["storage_type"] == env.kind
    assert info["redis_enabled"] is (env.kind == "redis") is memory.is_redis_enabled()
    assert info["max_tokens"] == 4000 and info["ttl"] == 7 * 86400
    if env.kind == "redis":
        assert info["redis_db"] == 0
    health = await memory.health_check()
    assert health["status"] == "healthy" and health["stats"]["total_memories"] == 0


# -- GlobalMemory through the daemon --------------------------------------------------------

SIX = [
    ("craftsman_1", "手工艺人"),
    ("consumer_1", "消费者1"),
    ("manufacturer_1", "制造商"),
    ("consumer_2", "消费者2"),
    ("designer_1", "设计师"),
    ("consumer_3", "消费者3"),
]


async def hold_meeting(meeting: GlobalMemory, turns: int) -> None:
    for agent_id, name in SIX:
        await meeting.add_participant(agent_id, name, name)
        await meeting.record_speech(agent_id, name, "introduction", f"{name}的介绍", "introduction")
    for turn in range(turns):
        for agent_id, name in SIX:
            context = await meeting.get_current_context(agent_id, max_context=8)
            assert f"【{name}】" not in context
            content = f"{meeting.session_id} {name} 第{turn}轮"
            await meeting.record_speech(agent_id, name, "discussion", content, "discussion")


async def test_meetings_in_parallel_stay_apart(env: Env) -> None:
    meetings = [GlobalMemory(new_agent("s"), socket_path=str(env.socket_path)) for _ in range(3)]
    await asyncio.gather(*(hold_meeting(m, 2) for m in meetings))
    for meeting in meetings:
        timeline = await meeting.get_meeting_timeline(limit=100)
        assert len(timeline) == 6 * 3
        discussions = [s for s in timeline if s["speech_type"] == "discussion"]
        assert all(s["content"].startswith(meeting.session_id) for s in discussions)
        assert [float(s["timestamp"]) for s in timeline] == sorted(
            (float(s["timestamp"]) for s in timeline), reverse=True
        )
        stats = await meeting.get_meeting_stats()
        assert stats["total_speeches"] == 18 and stats["participants_count"] == 6
        assert stats["speech_by_type"] == {"introduction": 6, "discussion": 12}
    await meetings[0].clear_session()
    assert await meetings[0].get_meeting_timeline() == []
    assert len(await meetings[1].get_meeting_timeline(limit=100)) == 18


async def test_context_and_timeline_through_the_daemon(env: Env) -> None:
    meeting = GlobalMemory(new_agent("ctx"), socket_path=str(env.socket_path))
    assert await meeting.get_current_context("craftsman_1") == "会议刚开始，暂无其他发言。"
    await meeting.record_speech("craftsman_1", "手工艺人", "discussion", "我先说", "discussion")
    assert await meeting.get_current_context("craftsman_1") == "会议中其他参与者暂无相关发言。"
    speech_id = await meeting.record_speech(
        "designer_1", "设计师", "voting", "自然, 轻盈", "voting", {"scores": [["自然", 9]]}
    )
    assert await meeting.get_current_context("craftsman_1") == (
        "=== 会议上下文 ===\n【设计师】投票: 自然, 轻盈"
    )
    assert await meeting.get_current_context("designer_1") == (
        "=== 会议上下文 ===\n【手工艺人】讨论发言: 我先说..."
    )
    # The original's selection: the newest max_context, then the requester's left out.
    assert await meeting.get_current_context("craftsman_1", max_context=1) == (
        "=== 会议上下文 ===\n【设计师】投票: 自然, 轻盈"
    )
    assert await meeting.get_current_context("designer_1", max_context=1) == (
        "会议中其他参与者暂无相关发言。"
    )
    (voting,) = await meeting.get_meeting_timeline(stage_filter="voting")
    assert voting["speech_id"] == speech_id and voting["agent_id"] == "designer_1"
    assert voting["additional_data"] == {"scores": [["自然", 9]]}
    assert voting["stage"] == "voting" and isinstance(voting["timestamp"], str)
    (first,) = await meeting.get_meeting_timeline(agent_filter="craftsman_1")
    assert first["content"] == "我先说"
    summary = await meeting.get_stage_summary("discussion")
    assert summary["speech_count"] == 1 and summary["participants"] == ["手工艺人"]
    await meeting.update_stage("voting")
    assert (await meeting.get_meeting_stats())["current_stage"] == "voting"


# -- the legacy synchronous Memory ----------------------------------------------------------


def test_the_legacy_memory_keeps_file_semantics(env: Env) -> None:
    memory = Memory(new_agent("legacy"), "file", socket_path=str(env.socket_path))
    for n in range(12):
        memory.add_memory("discussion", {"role": "r", "topic": "t", "content": f"第{n}句"})
    memory.add_memory("keywords", {"role": "r", "topic": "t", "keywords": ["k"]})
    by_type = memory.get_memories_by_type("discussion")
    assert len(by_type) == 12 and "第0句" in by_type[0]  # all of them, oldest first
    assert len(memory.get_all_memories()) == 13
    assert memory.get_relevant_memories("t", limit=1)[0].endswith("关键词 (r 关于 t): k")
    assert memory.get_conversation_history().startswith("r 关于 t 的发言: 第0句\n\nr 关于 t")
    stored = memory.memories
    assert [m["type"] for m in stored] == ["discussion"] * 12 + ["keywords"]
    assert set(stored[0]) == {"type", "content", "timestamp"}
    assert memory._format_memory_as_text(stored[-1]) == memory.get_all_memories()[-1]
    memory.clear_memories()
    assert memory.memories == []


# -- the runnable round table ---------------------------------------------------------------

DEMO = Path(__file__).resolve().parents[1] / "libclient" / "examples" / "roundtable.py"


def test_the_round_table_demo_runs_and_checks_out(env: Env) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(DEMO),
            "--meetings",
            "2",
            "--turns",
            "2",
            "--socket",
            str(env.socket_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "consistency check: every stream complete, in order, isolated" in done.stdout
    assert "meeting 1, turn 1: what 手工艺人 sees" in done.stdout
    assert "=== 会议上下文 ===" in done.stdout
    assert "meeting 2: 36 speeches" in done.stdout
