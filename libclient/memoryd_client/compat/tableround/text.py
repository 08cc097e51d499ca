"""The text TableRound rendered from its memories, reproduced to the byte.

Prompts embed these strings verbatim, so every template, separator and
truncation is the original's: the per-type lines of its file-based
``Memory`` (a local-time ``[%Y-%m-%d %H:%M:%S]`` prefix, then a Chinese label
per type), the conversation history, and the meeting context of
``GlobalMemory``.  Content is whatever the agent stored; a field that is
missing, or content that is not a map at all, renders as the original's
defaults did (``unknown``, empty text, no keywords) instead of failing.
Values are rendered as ``str()`` renders them, but without recursion
(``plain_text``): a record an older memoryd stored may nest a thousand levels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

# What get_current_context answers when there is nothing to show: no speech
# at all, or only the requester's own.  Agent code tests for "暂无".
CONTEXT_EMPTY = "会议刚开始，暂无其他发言。"
CONTEXT_ONLY_OWN = "会议中其他参与者暂无相关发言。"
CONTEXT_HEADER = "=== 会议上下文 ==="


def plain_text(value: Any) -> str:
    """``str(value)`` for what msgpack decodes (maps, arrays, scalars), built
    without recursion: ``str()`` of a list nested about 1,000 levels raises
    RecursionError."""
    if not isinstance(value, dict | list | tuple):
        return str(value)
    parts: list[str] = []
    # What is left to write, last first: (True, text as it is) or (False, a value).
    pending: list[tuple[bool, Any]] = [(False, value)]
    while pending:
        literal, item = pending.pop()
        if literal:
            parts.append(item)
        elif isinstance(item, dict):
            pending.extend(reversed(_map_parts(item)))
        elif isinstance(item, list | tuple):
            pending.extend(reversed(_sequence_parts(item)))
        else:
            parts.append(repr(item))
    return "".join(parts)


def _map_parts(items: dict[Any, Any]) -> list[tuple[bool, Any]]:
    parts: list[tuple[bool, Any]] = [(True, "{")]
    for index, (key, value) in enumerate(items.items()):
        # Keys are strings or numbers: their repr cannot nest.
        parts += [(True, (", " if index else "") + repr(key) + ": "), (False, value)]
    return [*parts, (True, "}")]


def _sequence_parts(items: list[Any] | tuple[Any, ...]) -> list[tuple[bool, Any]]:
    if isinstance(items, list):
        opening, closing = "[", "]"
    else:
        opening, closing = "(", ",)" if len(items) == 1 else ")"
    parts: list[tuple[bool, Any]] = [(True, opening)]
    for index, value in enumerate(items):
        if index:
            parts.append((True, ", "))
        parts.append((False, value))
    return [*parts, (True, closing)]


def _field(content: Any, name: str, default: Any) -> Any:
    return content.get(name, default) if isinstance(content, Mapping) else default


def _text_field(content: Any, name: str, default: str) -> str:
    return plain_text(_field(content, name, default))


def _joined(items: Any) -> str:
    return ", ".join(plain_text(item) for item in items) if isinstance(items, list | tuple) else ""


def _first_of_each(pairs: Any) -> str:
    """Voting stores ``[[keyword, score], ...]``; the line shows the keywords."""
    if not isinstance(pairs, list | tuple):
        return ""
    return ", ".join(
        plain_text(pair[0]) if isinstance(pair, list | tuple) and pair else plain_text(pair)
        for pair in pairs
    )


def local_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def memory_line(memory_type: str, content: Any, timestamp: float) -> str:
    """One personal memory as the original rendered it."""
    when = f"[{local_time(timestamp)}]"
    role = _text_field(content, "role", "unknown")
    topic = _text_field(content, "topic", "unknown")
    if memory_type == "introduction":
        return f"{when} 自我介绍 ({role}): {_text_field(content, 'content', '')}"
    if memory_type == "discussion":
        return f"{when} 讨论 ({role} 关于 {topic}): {_text_field(content, 'content', '')}"
    if memory_type == "keywords":
        return f"{when} 关键词 ({role} 关于 {topic}): {_joined(_field(content, 'keywords', []))}"
    if memory_type == "voting":
        voted = _first_of_each(_field(content, "voted_keywords", []))
        return f"{when} 投票 ({role} 关于 {topic}): {voted}"
    if memory_type == "role_switch":
        previous = _text_field(content, "previous_role", "unknown")
        new = _text_field(content, "new_role", "unknown")
        return f"{when} 角色转换: 从 {previous} 转换为 {new}"
    if memory_type == "image_story":
        story = _text_field(content, "story", "")
        keywords = _joined(_field(content, "keywords", []))
        return f"{when} 图片故事 ({role}): {story}\n关键词: {keywords}"
    if memory_type == "design_card":
        design = _text_field(content, "content", "")
        keywords = _joined(_field(content, "keywords", []))
        return f"{when} 设计卡牌 ({role}): {design}\n关键词: {keywords}"
    return f"{when} {memory_type}: {plain_text(content)}"


def conversation_history(discussions: Iterable[Any]) -> str:
    """Discussion contents, oldest first: ``role 关于 topic 的发言: text``, blank-line separated."""
    return "\n\n".join(
        f"{_text_field(c, 'role', 'unknown')} 关于 {_text_field(c, 'topic', 'unknown')} 的发言: "
        f"{_text_field(c, 'content', '')}"
        for c in discussions
    )


def speech_line(agent_name: str, speech_type: str, content: str) -> str:
    """One entry of the meeting context, truncated as the original did."""
    if speech_type == "introduction":
        return f"【{agent_name}】自我介绍: {content[:100]}..."
    if speech_type == "discussion":
        return f"【{agent_name}】讨论发言: {content[:150]}..."
    if speech_type == "keywords":
        return f"【{agent_name}】提取关键词: {content}"
    if speech_type == "voting":
        return f"【{agent_name}】投票: {content}"
    return f"【{agent_name}】{speech_type}: {content[:100]}..."


def meeting_context(newest_first: Sequence[Mapping[str, Any]], requesting_agent_id: str) -> str:
    """The context text from the newest speeches (timeline dicts), shown oldest first,
    the requester's own left out."""
    if not newest_first:
        return CONTEXT_EMPTY
    lines = [CONTEXT_HEADER]
    for speech in reversed(newest_first):
        if speech.get("agent_id") == requesting_agent_id:
            continue
        lines.append(
            speech_line(
                plain_text(speech.get("agent_name", "Unknown")),
                plain_text(speech.get("speech_type", "unknown")),
                plain_text(speech.get("content", "")),
            )
        )
    return CONTEXT_ONLY_OWN if len(lines) == 1 else "\n".join(lines)
