"""Typed reads of a real Redis for the tests' oracles (redis-py types its
replies as a union of every shape a command could answer)."""

from __future__ import annotations

from typing import cast

import redis


def text(value: object) -> str:
    """A reply member as text (redis-py answers bytes unless decoding was asked)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"expected bytes or str from Redis, got {type(value).__name__}")


def members(conn: redis.Redis, key: str) -> list[str]:
    """The members of a sorted set, lowest score first."""
    return [text(member) for member in cast(list[object], conn.zrange(key, 0, -1))]


def scored(conn: redis.Redis, key: str) -> list[tuple[str, float]]:
    """The members of a sorted set with their scores, lowest first."""
    pairs = cast(list[tuple[object, float]], conn.zrange(key, 0, -1, withscores=True))
    return [(text(member), float(score)) for member, score in pairs]


def hash_text(conn: redis.Redis, key: str) -> dict[str, str]:
    """A HASH, fields and values as text."""
    fields = cast(dict[object, object], conn.hgetall(key))
    return {text(name): text(value) for name, value in fields.items()}


def field_bytes(conn: redis.Redis, key: str, name: str) -> bytes | None:
    """One field of a HASH, as stored."""
    return cast(bytes | None, conn.hget(key, name))
