"""A Sentinel set's announcements: at each ``+switch-master`` for memoryd's
master, the store asks the sentinels again at once, so that its pool leaves the
old master before a write or a check finds it out.  One sentinel is listened
to at a time, the next when one fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

# The sentinels' channel for a failover done, and how they are listened to:
# a PING after this long without a message, the next sentinel this long after
# one fails.
SWITCH_MASTER = "+switch-master"
SENTINEL_HEARTBEAT_S = 5.0
SENTINEL_RETRY_S = 1.0


async def follow_failovers(
    sentinels: Sequence[dict[str, Any]],
    connection: Callable[[dict[str, Any]], Any],
    switched: Callable[[], Awaitable[None]],
    service_name: str | None,
) -> None:
    """Until cancelled: ``switched`` at each ``+switch-master`` of ``service_name``
    that one of the ``sentinels`` (redis-py's connection arguments of each)
    announces; ``connection`` makes a connection of its own from such arguments."""
    while True:
        for arguments in sentinels:
            try:
                await _listen(connection(arguments), switched, service_name)
            except (RedisError, OSError) as exc:
                where = f"{arguments.get('host')}:{arguments.get('port')}"
                logger.debug("sentinel %s: %s; listening to the next", where, exc)
            await asyncio.sleep(SENTINEL_RETRY_S)


async def _listen(
    connection: Any, switched: Callable[[], Awaitable[None]], service_name: str | None
) -> None:
    try:
        await connection.connect()
        await connection.send_command("SUBSCRIBE", SWITCH_MASTER)
        await connection.read_response()
        pinged = False
        while True:
            message = await connection.read_response(timeout=SENTINEL_HEARTBEAT_S)
            if message is None:  # quiet: make sure the sentinel is still there
                if pinged:
                    raise RedisTimeoutError("no answer to PING")
                await connection.send_command("PING")
                pinged = True
                continue
            pinged = False
            if _is_switch_of(message, service_name):
                logger.info("the sentinels announce a new master; asking them")
                await switched()
    finally:
        await connection.disconnect()


def _is_switch_of(message: Any, service_name: str | None) -> bool:
    """Whether a pub/sub message is ``+switch-master`` of ``service_name``:
    ``<name> <old ip> <old port> <new ip> <new port>``."""
    if not isinstance(message, list) or len(message) != 3 or message[0] != b"message":
        return False
    words = bytes(message[2]).split()
    return bool(words) and words[0].decode(errors="replace") == service_name
