"""How far one Redis server keeps the writes memoryd applied to it.

Replicated, else persisted.  With replicas (as many as ``min_replicas``, else
every one the master reports), a write is durable once they have it: a small
write, then ``WAIT``, confirms everything applied before that write.  A
``WAIT`` that times out confirms nothing and fails nothing.  Without replicas,
persistence decides (redis_commands.durable_until); never where a replica can
take over by itself (Sentinel, Cluster): one that lacks the writes may, however
well the master persists them.  A restarted server (another ``run_id``), or
one whose data was replaced or that was promoted (another ``master_replid``),
says nothing of what was applied before.

Each reading is one round trip on one connection, so that every figure is of
the same server.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memoryd.stores.base import Durability
from memoryd.stores.redis_commands import (
    Command,
    appendfsync_of,
    durable_until,
    key_command,
    parsed_info,
    server_command,
)

logger = logging.getLogger(__name__)

# How long a WAIT for replicas may take before the writes stay unconfirmed for now.
WAIT_TIMEOUT_S = 0.5

RoundTrip = Callable[[Sequence[Command]], Awaitable[list[Any]]]


@dataclass(frozen=True, slots=True)
class Reading:
    durability: Durability
    replication: dict[str, str]  # INFO replication, as read


def raised(replies: list[Any]) -> list[Any]:
    """``replies``, once none is an error reply (else it is raised)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def server_run(server: dict[str, Any], replication: dict[str, Any]) -> str:
    # A replica that resynced, or was promoted, has another replication id:
    # what it holds is not what this run of it held before.
    return f"{server.get('run_id', '')} {replication.get('master_replid', '')}"


class ServerDurability:
    """Reads one server's durability; remembers how many replicas to wait for."""

    def __init__(self, confirm_key: str, *, min_replicas: int | None, failover: bool) -> None:
        self._confirm_key = confirm_key
        self._min_replicas = min_replicas  # None: every replica the master reports
        self._failover = failover  # replicas take over by themselves: only they confirm
        self._replicas_to_wait = 0  # from the last reading
        self._unreplicated = False  # as the last reading found: warned of

    async def read(self, round_trip: RoundTrip) -> Reading:
        """Call inside ``translated``."""
        reading, wanted = await self._read_waiting_for(round_trip, self._replicas_to_wait)
        if wanted > self._replicas_to_wait:  # more replicas than last time: wait for them
            reading, wanted = await self._read_waiting_for(round_trip, wanted)
        self._replicas_to_wait = wanted
        self._tell_if_unreplicated(reading.replication)
        return reading

    def _tell_if_unreplicated(self, replication: dict[str, str]) -> None:
        """Warn once when a master that only replicas can confirm has none."""
        unreplicated = (
            self._failover
            and self._min_replicas != 0
            and replication.get("role") == "master"
            and int(replication.get("connected_slaves", 0)) == 0
        )
        if unreplicated and not self._unreplicated:
            logger.warning(
                "the master holding %s has no replica: what is applied to it stays "
                "unconfirmed, kept in the WAL up to wal_retain_s / wal_retain_bytes and then "
                "let go, until a replica is back",
                self._confirm_key,
            )
        elif self._unreplicated and not unreplicated:
            logger.info("the master holding %s has a replica again", self._confirm_key)
        self._unreplicated = unreplicated

    async def _read_waiting_for(self, round_trip: RoundTrip, wait_for: int) -> tuple[Reading, int]:
        asked_at = time.time()
        commands = [
            server_command("INFO", "server"),
            server_command("INFO", "replication"),
            server_command("INFO", "persistence"),
            server_command("CONFIG", "GET", "appendfsync"),
        ]
        if wait_for:
            # WAIT counts the replicas that have this connection's last write,
            # and replication is in order: all writes before it too.
            commands += [
                key_command("SET", self._confirm_key, repr(asked_at)),
                server_command("WAIT", wait_for, int(WAIT_TIMEOUT_S * 1000)),
            ]
        replies = await round_trip(commands)
        server, replication, persistence = map(parsed_info, raised(replies[:3]))
        run = server_run(server, replication)
        wanted = self._wanted(replication)
        if replication.get("role") != "master":
            return Reading(Durability(run, -math.inf), replication), wanted
        waited = raised(replies[4:])
        if wanted:
            acked = int(waited[1]) if wait_for else 0
            until_s = asked_at if acked >= wanted else -math.inf
            return Reading(Durability(run, until_s), replication), wanted
        aof = int(persistence.get("aof_enabled", 0))
        fsync = appendfsync_of(replies[3]) if aof else None
        until_s = durable_until(persistence, fsync, time.time())
        return Reading(Durability(run, until_s), replication), wanted

    def _wanted(self, replication: dict[str, str]) -> int:
        if self._min_replicas is not None:
            return self._min_replicas
        reported = int(replication.get("connected_slaves", 0))
        return max(1, reported) if self._failover else reported
