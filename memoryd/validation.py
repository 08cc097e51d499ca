"""Argument checking: every argument typed, bounded, and named in the error.

A request is checked whole before anything is written, so a rejected
request leaves no trace.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

from memoryd.errors import InvalidRequest
from memoryd_client import wire

AGENT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
RECORD_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")
TYPE_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
PREFIX_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:@-]{0,128}")

MAX_AUTHOR_CHARS: Final = 128
MAX_TAGS: Final = 64
MAX_TAG_CHARS: Final = 128
MAX_FILTER_TYPES: Final = 64
MAX_LIMIT: Final = wire.MAX_READ_LIMIT
MAX_QUERY_CHARS: Final = 1024
MAX_TTL_S: Final = 10 * 365 * 86400
MAX_EXPIRES_AT_S: Final = 2**34  # the year 2514: far beyond any ttl_s from now
# Client clocks drift; a creation time far in the future is a bug, not drift.
MAX_CLOCK_AHEAD_S: Final = 86400.0
# How deeply maps and arrays may nest in content and metadata ("x": 0, ["x"]: 1).
# Far more than any memory needs, and far below the limits of msgpack (about
# 1,000), json and Python's recursion, which a stored record must never reach:
# every reader of it (search, export, a client rendering it) stays safe.
MAX_NESTING_DEPTH: Final = 32


class Args:
    """The named arguments of one request, consumed as they are checked."""

    def __init__(self, values: Mapping[str, Any], allowed: frozenset[str], where: str = "") -> None:
        for name in values:
            if name not in allowed:
                raise InvalidRequest(where + name, "unknown argument")
        self.values = values
        self.where = where

    def name(self, argument: str) -> str:
        return self.where + argument

    def has(self, argument: str) -> bool:
        return argument in self.values and self.values[argument] is not None

    def required(self, argument: str) -> Any:
        if argument not in self.values or self.values[argument] is None:
            raise InvalidRequest(self.name(argument), "required")
        return self.values[argument]

    def optional(self, argument: str, default: Any = None) -> Any:
        value = self.values.get(argument)
        return default if value is None else value


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(name, f"must be a string, not {_type_name(value)}")
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "nil"
    return {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        bytes: "binary",
        list: "array",
        dict: "map",
    }.get(type(value), type(value).__name__)


def token(name: str, value: Any, pattern: re.Pattern[str], what: str) -> str:
    text = _string(name, value)
    if not pattern.fullmatch(text):
        raise InvalidRequest(name, f"{text[:80]!r} is not {what}")
    return text


def agent_id(name: str, value: Any) -> str:
    return token(
        name,
        value,
        AGENT_ID_PATTERN,
        "a valid agent id (1-128 of A-Z a-z 0-9 _ . : @ -, starting with a letter or digit)",
    )


def record_id(name: str, value: Any) -> str:
    return token(
        name,
        value,
        RECORD_ID_PATTERN,
        "a valid record id (1-64 of A-Z a-z 0-9 _ . : @ -, starting with a letter or digit)",
    )


def type_token(name: str, value: Any) -> str:
    return token(
        name,
        value,
        TYPE_PATTERN,
        "a valid type (1-64 of A-Z a-z 0-9 _ . : -, starting with a letter or digit)",
    )


def number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(name, f"must be a number, not {_type_name(value)}")
    result = float(value)
    if not math.isfinite(result) or not low <= result <= high:
        raise InvalidRequest(name, f"must be between {low:g} and {high:g}")
    return result


def integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, f"must be an integer, not {_type_name(value)}")
    if not low <= value <= high:
        raise InvalidRequest(name, f"must be between {low} and {high}")
    return value


def choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise InvalidRequest(name, f"must be one of {', '.join(options)}")
    return str(value)


def author(name: str, value: Any) -> str | None:
    return None if value is None else text(name, value, max_chars=MAX_AUTHOR_CHARS)


def tags(name: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise InvalidRequest(name, f"must be an array of strings, not {_type_name(value)}")
    if len(value) > MAX_TAGS:
        raise InvalidRequest(name, f"at most {MAX_TAGS} tags")
    for index, tag in enumerate(value):
        text(f"{name}[{index}]", tag, max_chars=MAX_TAG_CHARS)
    return list(value)


def type_list(name: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest(name, "must be a non-empty array of types")
    if len(value) > MAX_FILTER_TYPES:
        raise InvalidRequest(name, f"at most {MAX_FILTER_TYPES} types")
    return frozenset(type_token(f"{name}[{i}]", item) for i, item in enumerate(value))


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply maps and arrays nest in ``value`` (a scalar: 0, ``[[1]]``: 2).

    Walked without recursion, and no further than ``limit + 1`` levels: the
    answer is exact up to ``limit``, and ``limit + 1`` for anything deeper.
    """
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        depth += 1
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        pending.extend((child, depth) for child in children)
    return deepest


def _shallow(name: str, value: Any) -> None:
    if nesting_depth(value, MAX_NESTING_DEPTH) > MAX_NESTING_DEPTH:
        raise InvalidRequest(
            name, f"maps and arrays nested more than {MAX_NESTING_DEPTH} levels deep"
        )


def metadata(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(name, f"must be a map, not {_type_name(value)}")
    _shallow(name, value)
    return value


def content(name: str, value: Any) -> Any:
    if value is None:
        raise InvalidRequest(name, "required")
    _shallow(name, value)
    return value


def ttl_s(name: str, value: Any) -> float:
    return number(name, value, 0, MAX_TTL_S)


def expiry(name: str, value: Any) -> float:
    """An absolute expiry time in unix seconds (a record restored as it was exported)."""
    return number(name, value, 0, MAX_EXPIRES_AT_S)


def timestamp(name: str, value: Any, now_s: float) -> float:
    return number(name, value, 0, now_s + MAX_CLOCK_AHEAD_S)


def limit(name: str, value: Any) -> int:
    return integer(name, value, 1, MAX_LIMIT)


def text(name: str, value: Any, *, max_chars: int) -> str:
    """A non-empty string of at most ``max_chars`` characters."""
    result = _string(name, value)
    if not 0 < len(result) <= max_chars:
        raise InvalidRequest(name, f"must be 1-{max_chars} characters")
    return result


def query_text(name: str, value: Any) -> str:
    return text(name, value, max_chars=MAX_QUERY_CHARS)


def prefix(name: str, value: Any) -> str:
    return token(name, value, PREFIX_PATTERN, "a valid agent id prefix")
