"""The synthetic TableRound workload: records and the operations that use them.

Everything is deterministic for a given seed.  Record text is real multi-byte CJK (3 bytes a
character in UTF-8) drawn from the fixed sentences below, and the personal records follow the
type and size mix of tableround.md section 6: discussion 50 % (lognormal, median about 700 B of
content), keywords 25 % (a list of short strings, about 150 B), introduction 12.5 % and
role_switch 12.5 % (about 1 KB), capped at 4 KB.

Operations are abstract (``Append``, ``Newest``, ``ByType``, ``Context``, ``Search``, ``Clear``):
every backend in ``bench.backends`` executes them, so each scenario is written once.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# Sentences about craftsmanship, design and materials, written for this benchmark.
SENTENCES: tuple[str, ...] = (
    "好的家具首先要尊重木材本身的纹理和性格。",
    "榫卯结构不用一颗钉子，却能让桌椅使用上百年。",
    "胡桃木颜色沉稳，适合做桌面，橡木更硬，适合做框架。",
    "设计师应该先理解使用者的日常习惯，再决定造型。",
    "手工打磨的表面摸起来更温润，机器很难完全替代。",
    "竹子生长快、韧性好，是非常环保的可再生材料。",
    "陶瓷的釉色取决于窑温和烧制时间，每一窑都不一样。",
    "我们可以把传统漆器工艺和现代极简风格结合起来。",
    "消费者更关心产品是否耐用，以及维修是否方便。",
    "批量生产时必须控制公差，否则榫头会装不进去。",
    "天然植物油涂层比化学漆更安全，但需要定期保养。",
    "一把好椅子的关键在于靠背角度和座面高度。",
    "铜件会随着时间氧化，形成独特的包浆和光泽。",
    "设计不仅是外观，更是材料、结构和工艺的平衡。",
    "年轻人喜欢模块化的家具，可以随着搬家重新组合。",
    "老匠人常说，慢工出细活，急不得。",
    "如果成本太高，可以把复杂的雕花改成简洁的线条。",
    "亚麻和棉布透气性好，适合做坐垫和靠枕的面料。",
    "制造商需要评估每道工序的良品率和人工成本。",
    "我建议在抽屉滑轨上使用阻尼装置，关闭时更安静。",
    "木材必须充分干燥，含水率过高会导致开裂变形。",
    "好的设计会让人一眼看懂怎么使用，不需要说明书。",
    "传统工艺需要年轻一代传承，也需要新的市场。",
    "我们可以用回收木料做小件产品，讲述材料的故事。",
    "桌腿的收分让整体看起来更轻盈，也更稳定。",
    "消费者反馈说，圆角设计对有孩子的家庭更友好。",
    "金属和木材的连接处要考虑热胀冷缩。",
    "大漆需要在潮湿的环境中阴干，工期往往很长。",
    "从用户的角度看，价格、质量和审美缺一不可。",
    "设计卡牌上应该写清楚目标人群、材料和核心卖点。",
    "手工编织的藤椅夏天坐着很凉爽，很受欢迎。",
    "生产线可以先做小批量试产，再根据反馈调整。",
    "颜色搭配要克制，一件作品里主色不宜超过三种。",
    "木工刨子的刃口角度会直接影响刨花和表面质量。",
    "我更倾向于保留木材的天然节疤，体现真实感。",
    "可持续设计意味着产品在报废后也能被拆解回收。",
)

KEYWORDS: tuple[str, ...] = (
    "榫卯", "胡桃木", "橡木", "竹材", "大漆", "陶瓷", "釉色", "极简", "模块化", "耐用",
    "环保", "手工", "传承", "包浆", "藤编", "亚麻", "圆角", "收分", "阻尼", "回收木料",
    "可持续", "性价比", "小批量", "工艺", "质感", "温润", "轻盈", "稳定", "节疤", "铜件",
)  # fmt: skip

ROLES: tuple[str, ...] = ("手工艺人", "消费者", "制造商", "设计师")
TOPICS: tuple[str, ...] = ("传统家具的现代化", "可持续材料", "茶室家具设计", "儿童友好的餐椅")
STAGES: tuple[str, ...] = ("introduction", "discussion", "voting", "role_switch")

# The six participants of a meeting, in TableRound's speaking order (tableround.md section 3).
AGENT_KINDS: tuple[str, ...] = (
    "craftsman_1",
    "consumer_1",
    "manufacturer_1",
    "consumer_2",
    "designer_1",
    "consumer_3",
)
SEARCH_QUERY = "榫卯"

# Size model, bytes of the content dict as compact UTF-8 JSON.
_MEDIAN_BYTES = {"discussion": 700, "introduction": 1000, "role_switch": 1100}
_SIGMA = 0.5  # lognormal sigma: p95/median = exp(1.645 * 0.5), about 2.3
MIN_TEXT_BYTES = 150
MAX_RECORD_BYTES = 4096
PERSONAL_MIX: tuple[tuple[str, float], ...] = (
    ("discussion", 0.5),
    ("keywords", 0.25),
    ("introduction", 0.125),
    ("role_switch", 0.125),
)

RecordKind = Literal["personal", "speech", "meta"]


@dataclass(frozen=True, slots=True)
class Rec:
    """One record to store.

    ``kind`` says what the original system did with it: a personal memory (RedisMemory), a
    speech in the shared meeting stream (GlobalMemory.record_speech), or meeting metadata
    (participants, stage).
    """

    type: str
    content: dict[str, Any]
    author: str
    kind: RecordKind = "personal"

    def size(self) -> int:
        return content_bytes(self.content)


def content_bytes(content: dict[str, Any]) -> int:
    return len(json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode())


# Operations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Append:
    stream: str
    record: Rec
    name: str = "add"


@dataclass(frozen=True, slots=True)
class Newest:
    stream: str
    n: int
    name: str = "newest"


@dataclass(frozen=True, slots=True)
class ByType:
    stream: str
    type: str
    n: int
    name: str = "by_type"


@dataclass(frozen=True, slots=True)
class Context:
    """The meeting context: the newest ``n`` speeches of ``stream`` not by ``exclude_author``."""

    stream: str
    n: int
    exclude_author: str
    name: str = "context"


@dataclass(frozen=True, slots=True)
class Search:
    stream: str
    query: str
    n: int
    name: str = "search"


@dataclass(frozen=True, slots=True)
class Clear:
    stream: str
    shared: bool = False
    name: str = "clear"


Op = Append | Newest | ByType | Context | Search | Clear


# Text and records ------------------------------------------------------------------------


def cjk_text(rng: random.Random, target_bytes: int) -> str:
    """Sentences in random order up to about ``target_bytes`` of UTF-8, cut at a character."""
    parts: list[str] = []
    size = 0
    while size < target_bytes:
        sentence = rng.choice(SENTENCES)
        parts.append(sentence)
        size += len(sentence.encode())
    text = "".join(parts)
    return text[: max(1, target_bytes // 3)]


def _lognormal_bytes(rng: random.Random, median: int) -> int:
    size = int(rng.lognormvariate(math.log(median), _SIGMA))
    return min(max(size, MIN_TEXT_BYTES), MAX_RECORD_BYTES)


def _fit(rng: random.Random, target: int, build: Any) -> dict[str, Any]:
    """``build(text)`` with the text sized so that the whole content is about ``target`` bytes."""
    overhead = content_bytes(build(""))
    content: dict[str, Any] = build(cjk_text(rng, max(30, target - overhead)))
    return content


def personal_content(rng: random.Random, record_type: str, role: str) -> dict[str, Any]:
    topic = rng.choice(TOPICS)
    if record_type == "keywords":
        count = rng.randint(5, 10)
        return {"role": role, "topic": topic, "keywords": rng.sample(KEYWORDS, count)}
    target = _lognormal_bytes(rng, _MEDIAN_BYTES[record_type])
    if record_type == "introduction":
        return _fit(rng, target, lambda text: {"role": role, "content": text})
    if record_type == "role_switch":
        new_role = rng.choice([r for r in ROLES if r != role])
        return _fit(
            rng,
            target,
            lambda text: {
                "previous_role": role,
                "new_role": new_role,
                "topic": topic,
                "reflection": text,
            },
        )
    return _fit(rng, target, lambda text: {"role": role, "topic": topic, "content": text})


def role_of(agent: str) -> str:
    for kind, role in zip(
        ("craftsman", "consumer", "manufacturer", "designer"), ROLES, strict=True
    ):
        if kind in agent:
            return role
    return ROLES[0]


def personal_record(rng: random.Random, agent: str, record_type: str | None = None) -> Rec:
    if record_type is None:
        record_type = rng.choices(
            [t for t, _ in PERSONAL_MIX], weights=[w for _, w in PERSONAL_MIX]
        )[0]
    return Rec(record_type, personal_content(rng, record_type, role_of(agent)), agent)


def speech_record(rng: random.Random, agent: str, speech_type: str, stage: str, text: str) -> Rec:
    """A speech as GlobalMemory.record_speech stores it: name, type, text, stage, extra dict."""
    content = {
        "agent_name": role_of(agent),
        "speech_type": speech_type,
        "content": text,
        "stage": stage,
        "additional_data": {"turn": rng.randint(1, 10)},
    }
    return Rec(speech_type, content, agent, kind="speech")


def text_of(record: Rec) -> str:
    """The spoken text of a personal record (what the agent then says in the meeting)."""
    content = record.content
    if "keywords" in content:
        return "，".join(content["keywords"])
    return str(content.get("content") or content.get("reflection") or "")


def personal_records(seed: int, agent: str, count: int) -> list[Rec]:
    rng = random.Random(seed)
    return [personal_record(rng, agent) for _ in range(count)]


def size_summary(records: Sequence[Rec]) -> dict[str, Any]:
    sizes = sorted(r.size() for r in records)
    if not sizes:
        return {}
    by_type: dict[str, int] = {}
    for record in records:
        by_type[record.type] = by_type.get(record.type, 0) + 1
    return {
        "count": len(sizes),
        "median_bytes": sizes[len(sizes) // 2],
        "p95_bytes": sizes[min(len(sizes) - 1, int(len(sizes) * 0.95))],
        "max_bytes": sizes[-1],
        "share_by_type": {t: round(n / len(sizes), 3) for t, n in sorted(by_type.items())},
    }


# The meeting session script (tableround.md sections 3 and 6) -------------------------------


@dataclass(slots=True)
class Session:
    """One meeting: its stream names and its operations, strictly sequential."""

    name: str
    agents: list[str]
    meeting: str
    ops: list[Op] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            key = f"{op.name}:{op.record.kind}" if isinstance(op, Append) else op.name
            counts[key] = counts.get(key, 0) + 1
        return counts


def meeting_stream(session: str) -> str:
    return f"{session}.meeting"


def meta_stream(meeting: str) -> str:
    return f"{meeting}.meta"


class _Script:
    def __init__(self, rng: random.Random, session: Session) -> None:
        self.rng = rng
        self.session = session

    def emit(self, op: Op) -> None:
        self.session.ops.append(op)

    def meta(self, record_type: str, content: dict[str, Any], author: str) -> None:
        record = Rec(record_type, content, author, kind="meta")
        self.emit(Append(self.session.meeting, record))

    def personal(self, agent: str, record_type: str) -> Rec:
        record = personal_record(self.rng, agent, record_type)
        self.emit(Append(agent, record))
        return record

    def speak(self, agent: str, record: Rec, stage: str) -> None:
        speech = speech_record(self.rng, agent, record.type, stage, text_of(record))
        self.emit(Append(self.session.meeting, speech))

    def turn(self, agent: str, stage: str, context_n: int = 8) -> None:
        """The unit to replay: context, recent 5, (think), append personal, append shared."""
        self.emit(Context(self.session.meeting, context_n, agent))
        self.emit(Newest(agent, 5))
        self.speak(agent, self.personal(agent, "discussion"), stage)


def session_script(
    seed: int, session: str = "s0", turns: int = 3, *, clear_agents: bool = True
) -> Session:
    """The operations of one meeting of six agents and ``turns`` discussion turns.

    With turns=3: 48 personal appends, 42 speeches, 30 newest-5 reads and 30 context reads,
    plus the setup (7 clears, 6 participants, 4 stage updates).  Without ``clear_agents`` the
    agents keep the memory they have (the original's cleaner with preserve_agent_memories)
    and only the meeting's stream is cleared.
    """
    agents = [f"{session}.{kind}" for kind in AGENT_KINDS]
    s = Session(session, agents, meeting_stream(session))
    script = _Script(random.Random(seed), s)
    for stream in agents if clear_agents else []:
        script.emit(Clear(stream))
    script.emit(Clear(s.meeting, shared=True))
    for agent in agents:
        script.meta("participant", {"agent_id": agent, "agent_role": role_of(agent)}, agent)
    script.meta("stage", {"current_stage": "introduction"}, "host")
    for agent in agents:
        script.speak(agent, script.personal(agent, "introduction"), "introduction")
    script.meta("stage", {"current_stage": "discussion"}, "host")
    for _ in range(turns):
        for agent in agents:
            script.turn(agent, "discussion")
    for agent in agents:
        script.speak(agent, script.personal(agent, "keywords"), "keywords")
    script.meta("stage", {"current_stage": "voting"}, "host")
    script.meta("stage", {"current_stage": "role_switch"}, "host")
    for agent in agents:
        script.emit(Newest(agent, 5))
        script.personal(agent, "role_switch")
        script.emit(Context(s.meeting, 10, agent))
    for agent in agents:
        script.turn(agent, "post_switch")
    for agent in agents:
        script.speak(agent, script.personal(agent, "keywords"), "keywords")
    return s


# The latency scenario's plan -------------------------------------------------------------

LATENCY_OPS: tuple[str, ...] = ("add", "newest", "by_type", "context", "search")


@dataclass(slots=True)
class LatencyPlan:
    """One agent, sequential: prefill, then iterations of the five operations."""

    agent: str
    meeting: str
    setup: list[Op]
    iterations: list[list[Op]]


def latency_plan(
    seed: int, prefix: str, iterations: int, history: int, speeches: int
) -> LatencyPlan:
    """The caller is the first of six agents; the meeting stream holds speeches of all six."""
    rng = random.Random(seed)
    agents = [f"{prefix}.{kind}" for kind in AGENT_KINDS]
    agent, meeting = agents[0], meeting_stream(prefix)
    setup: list[Op] = [Clear(agent), Clear(meeting, shared=True)]
    setup += [Append(agent, personal_record(rng, agent)) for _ in range(history)]
    for i in range(speeches):
        speaker = agents[i % len(agents)]
        spoken = personal_record(rng, speaker, "discussion")
        setup.append(
            Append(
                meeting, speech_record(rng, speaker, "discussion", "discussion", text_of(spoken))
            )
        )
    plan: list[list[Op]] = []
    for _ in range(iterations):
        plan.append(
            [
                Append(agent, personal_record(rng, agent)),
                Newest(agent, 5),
                ByType(agent, "discussion", 10),
                Context(meeting, 8, agent),
                Search(agent, SEARCH_QUERY, 10),
            ]
        )
    return LatencyPlan(agent, meeting, setup, plan)


def ingest_records(
    seed: int, prefix: str, count: int, agents: int, first_agent: int = 0
) -> Iterator[tuple[str, Rec]]:
    """``count`` personal records spread round-robin over ``agents`` agent ids, numbered from
    ``first_agent`` (``<prefix>.agent<i>``)."""
    rng = random.Random(seed)
    names = [agent_name(prefix, i) for i in range(first_agent, first_agent + agents)]
    for i in range(count):
        agent = names[i % agents]
        yield agent, personal_record(rng, agent)


def agent_name(prefix: str, index: int) -> str:
    return f"{prefix}.agent{index}"
