"""Change notices: how the daemons sharing one Redis tell each other which
agents they wrote, so that each keeps answering from memory what the others
did not touch.

Every write batch ends, in the same round trip to each shard, with one entry
in that shard's changes stream (``memoryd:changes``; ``memoryd:{T}:changes``
on a cluster): the writing daemon, its own count of the notices it sent to the
shard, and the agents the batch wrote.  Each daemon follows the streams on a
connection of its own (``XREAD BLOCK``) and drops its views of the agents the
others wrote.  A count that skips (an entry trimmed away before it was read,
a daemon that lost a reply) means a notice may be missing: the reader then
stops trusting what it holds, as when its link breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from memoryd.stores.base import ChangeListener
from memoryd.stores.keys import KeySpace
from memoryd.stores.redis_commands import Command, key_command, text
from memoryd.stores.redis_link import translated

# Entries kept per stream (about): far more than a reader falls behind by
# while its link holds; a reader that does fall behind sees the count skip.
CHANGES_KEPT = 10_000
# An agent id never holds a space (memoryd.validation).
_SEPARATOR = " "


class ChangesMissed(Exception):
    """A notice may have been missed: what the views hold cannot be trusted.
    Never leaves Store.watch, which returns instead."""


class NoticeWriter:
    """The notices one daemon appends to its write batches."""

    def __init__(self, keys: KeySpace) -> None:
        self._keys = keys
        self._sent: dict[tuple[str, str], int] = {}  # (shard tag, writer) -> notices sent
        # The batches that carry notices (the flusher's, the sweep's) go one at a
        # time, so that their counts reach each shard in order: a reader takes a
        # count out of order for a missed one.
        self.serial = asyncio.Lock()

    def notice(self, shard_tag: str, commands: Sequence[Command], writer_id: str) -> list[Command]:
        """The entry that says which agents ``commands`` wrote; none if none."""
        agents = sorted({agent for command in commands if (agent := self._agent_of(command))})
        if not agents:
            return []
        sent = (shard_tag, writer_id)
        count = self._sent[sent] = self._sent.get(sent, 0) + 1
        return [
            key_command(
                "XADD",
                self._keys.changes_of(shard_tag),
                "MAXLEN",
                "~",
                CHANGES_KEPT,
                "*",
                "w",
                writer_id,
                "n",
                count,
                "a",
                _SEPARATOR.join(agents),
            )
        ]

    def _agent_of(self, command: Command) -> str | None:
        if command.key is None:
            return None
        key = self._keys.parse_agent_key(command.key)
        return None if key is None else key.agent_id


class NoticeReader:
    """Follows the notices for one daemon: tells ``listener`` what the others wrote."""

    def __init__(self, daemon_id: str, listener: ChangeListener) -> None:
        self._daemon_id = daemon_id
        self._listener = listener
        self._counts: dict[tuple[str, str], int] = {}  # (stream, writer) -> last count seen

    def read(self, stream: str, entries: Sequence[Any]) -> None:
        """Take the entries XREAD returned for ``stream``; raises ChangesMissed."""
        for _entry_id, fields in entries:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            writer = text(values.get(b"w", b""))
            if writer == self._daemon_id:
                continue
            count = int(values.get(b"n", 0))
            last = self._counts.get((stream, writer))
            self._counts[(stream, writer)] = count
            # "": a daemon writing without a lease (its last drain, say), whose
            # counts several may share: only its agents are told.
            if writer and last is not None and count != last + 1:
                raise ChangesMissed(f"{writer}'s notices on {stream} went from {last} to {count}")
            agents = text(values.get(b"a", b"")).split(_SEPARATOR)
            self._listener.changed([agent for agent in agents if agent])


# How long one XREAD of a followed stream waits for new entries.
FOLLOW_BLOCK_S = 1.0

# What takes the entries read from a stream.
Take = Callable[[str, Sequence[Any]], None]


async def follow_stream(
    connection: Any,
    stream: str,
    take: Take,
    following: Callable[[], None],
    current: Callable[[], bool],
    *,
    socket_timeout_s: float,
) -> None:
    """Read every entry appended to ``stream`` from now on, on ``connection``
    (of its own, not yet made), handing them to ``take``; return when the link
    breaks, or once ``current`` (asked every FOLLOW_BLOCK_S) says no.
    ``following`` is called once nothing appended from then on can be missed.
    Raises what ``take`` raises, and StoreUnavailable if the link cannot be made."""
    try:
        with translated("watch"):
            await connection.connect()
            # Read on from the newest entry there is: what comes after it is
            # delivered, however soon after this it is appended.
            await connection.send_command("XREVRANGE", stream, "+", "-", "COUNT", 1)
            newest = await connection.read_response()
        last_id = newest[0][0] if newest else b"0-0"
        following()
        # A bounded wait: a server that stops answering without closing the
        # connection (frozen, or cut off by a firewall that drops the idle
        # connection) is noticed within one more socket timeout.
        answer_within_s = FOLLOW_BLOCK_S + socket_timeout_s
        block_ms = int(FOLLOW_BLOCK_S * 1000)
        with contextlib.suppress(RedisError, OSError):
            while current():
                await connection.send_command(
                    "XREAD", "BLOCK", block_ms, "STREAMS", stream, last_id
                )
                asked_at = time.monotonic()
                reply = await connection.read_response(timeout=answer_within_s)
                if reply is None and time.monotonic() - asked_at >= answer_within_s:
                    return  # no answer, not even "nothing new"
                for _stream, entries in reply or []:
                    if entries:
                        last_id = entries[-1][0]
                        take(stream, entries)
    finally:
        await connection.disconnect()
