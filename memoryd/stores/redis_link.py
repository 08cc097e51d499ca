"""The Redis store's boundary: one connection pool, the Lua scripts, round
trips of packed commands, and redis-py's exceptions turned into the store's.

Everything that speaks to a Redis server goes through here, so that the
store (memoryd.stores.redis) and its eviction repair
(memoryd.stores.redis_repair) deal in replies and the store's own failures
(memoryd.stores.base) only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from memoryd import redis_url
from memoryd.stores.base import StoreError, StoreMisconfigured, StoreRefusing, StoreUnavailable
from memoryd.stores.redis_commands import NO_FRAMING, Command, Framing, pack
from memoryd.stores.redis_sentinel import follow_failovers

logger = logging.getLogger(__name__)

# Backoff between the library's retries of a command whose connection broke.
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0

SCRIPTS = ("apply", "page", "writers", "repair")


# Replies that mean "not now" rather than "never": a Redis still loading its
# dataset, busy in a script, or a replica promoted/demoted mid-failover (a
# cluster's CLUSTERDOWN and TRYAGAIN are told by their class: see translated).
_TRANSIENT_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN")
# Replies of a Redis that answers but will not take writes for now.
_REFUSING_REPLIES = ("OOM", "READONLY", "MISCONF")
# Replies of a Redis that refuses memoryd itself (credentials, ACL).
_MISCONFIGURED_REPLIES = ("NOAUTH", "WRONGPASS", "NOPERM")


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn redis-py's exceptions into the store's own, at the boundary."""
    try:
        yield
    except (AuthenticationError, NoPermissionError) as exc:
        raise StoreMisconfigured(f"redis {action}: {exc}") from exc
    except ReadOnlyError as exc:
        raise StoreRefusing("READONLY", f"redis {action}: {exc}") from exc
    except OutOfMemoryError as exc:
        raise StoreRefusing("OOM", f"redis {action}: {exc}") from exc
    except (
        BusyLoadingError,
        # Replies whose message redis-py rewrote (it lost the word): by their class.
        # MasterDownError is a ClusterDownError.
        ClusterDownError,
        TryAgainError,
        RedisConnectionError,
        RedisTimeoutError,
        TimeoutError,
        OSError,
    ) as exc:
        raise StoreUnavailable(f"redis {action}: {exc}") from exc
    except ResponseError as exc:
        raise _reply_error(action, exc) from exc
    except RedisError as exc:
        raise StoreError(f"redis {action}: {exc}") from exc
    except RedisClusterException as exc:
        # Not a RedisError: no node answered for the slot map, or a slot is not
        # covered (a failover under way).
        raise StoreUnavailable(f"redis {action}: {exc}") from exc


def _reply_error(action: str, exc: ResponseError) -> Exception:
    """The store's exception for an error reply (a script's error included)."""
    text = str(exc)
    message = f"redis {action}: {text}"
    if text.startswith(_REFUSING_REPLIES):
        return StoreRefusing(text.split(" ", 1)[0], message)
    if text.startswith(_MISCONFIGURED_REPLIES):
        return StoreMisconfigured(message)
    if text.startswith(_TRANSIENT_REPLIES):
        return StoreUnavailable(message)
    return StoreError(message)


async def exchange(connection: Any, packed: list[bytes]) -> list[Any]:
    """Write ``packed`` on ``connection`` and read a reply for each (an error
    reply as its ResponseError, not raised)."""
    await connection.send_packed_command(packed, check_health=False)
    replies: list[Any] = []
    for _ in packed:
        try:
            replies.append(await connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


def script_text(name: str) -> str:
    return resources.files("memoryd.stores").joinpath(f"{name}.lua").read_text(encoding="utf-8")


def connection_arguments(url: redis_url.RedisUrl) -> dict[str, Any]:
    """redis-py's connection arguments for a parsed URL (standalone: its one server)."""
    common: dict[str, Any] = {"db": url.db, "username": url.username, "password": url.password}
    if url.scheme == "unix":
        return {**common, "connection_class": aioredis.UnixDomainSocketConnection, "path": url.path}
    common.update(host=url.host, port=url.port)
    if url.tls:
        common["connection_class"] = aioredis.SSLConnection
        common.update(tls_arguments(url))
    return common


def tls_arguments(url: redis_url.RedisUrl) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for name, value in url.tls_options.items():
        is_flag = name == "ssl_check_hostname"
        arguments[name] = value.lower() in ("1", "true", "yes") if is_flag else value
    return arguments


class RedisLink:
    """A pool of connections to one Redis server, and the scripts loaded on it."""

    def __init__(
        self,
        url: redis_url.RedisUrl,
        *,
        pool_size: int,
        socket_timeout_s: float,
        connect_timeout_s: float,
        retries: int,
    ) -> None:
        self._url = url
        self._pool_size = pool_size
        self._socket_timeout_s = socket_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._retries = retries
        self._client: aioredis.Redis | None = None
        self._sentinel: Sentinel | None = None
        self._scripts: dict[str, AsyncScript] = {}

    def connect(self) -> None:
        """Make the pool (no connection yet: they are made as commands need them)."""
        if self._client is not None:
            return
        # Library retries (resending a command after a broken connection or a
        # timeout) are safe here: every apply is idempotent, and the only
        # effects of reads are repairs, which are idempotent too.
        retry = Retry(
            ExponentialWithJitterBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), self._retries
        )
        client = self._sentinel_client(retry) if self._url.topology == "sentinel" else None
        if client is None:
            # Built from the parsed parts, never from the text: redis-py reads a
            # malformed URL loosely (a missing host as localhost, db "zz" as 0).
            pool = aioredis.BlockingConnectionPool(
                **connection_arguments(self._url),
                max_connections=self._pool_size,
                # Waiting longer than one command may take for a free connection
                # only hides an overload; better to fail and let the caller back off.
                timeout=self._connect_timeout_s + self._socket_timeout_s,
                socket_timeout=self._socket_timeout_s,
                socket_connect_timeout=self._connect_timeout_s,
                retry=retry,
                decode_responses=False,
            )
            client = aioredis.Redis(connection_pool=pool)
        self._scripts = {name: client.register_script(script_text(name)) for name in SCRIPTS}
        self._client = client

    def _sentinel_client(self, retry: Retry) -> aioredis.Redis:
        """A client of the master the sentinels name: redis-py's pool asks them
        on every new connection, and drops a connection that finds itself on a
        demoted master (READONLY), so that the next one goes to the new master."""
        url = self._url
        timeouts: dict[str, Any] = {
            "socket_timeout": self._socket_timeout_s,
            "socket_connect_timeout": self._connect_timeout_s,
        }
        tls = {"ssl": True, **tls_arguments(url)} if url.tls else {}
        sentinel_kwargs = {
            "username": url.sentinel_username,
            "password": url.sentinel_password,
            **timeouts,
            **tls,
        }
        # redis-py's Sentinel is not annotated (mypy before 2 says so).
        self._sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(url.hosts),
            sentinel_kwargs=sentinel_kwargs,
            db=url.db,
            username=url.username,
            password=url.password,
            retry=retry,
            decode_responses=False,
            **timeouts,
            **tls,
        )
        assert url.service_name is not None  # redis_url.parse makes sure
        master = self._sentinel.master_for(
            url.service_name, redis_class=aioredis.Redis, max_connections=self._pool_size
        )
        return cast(aioredis.Redis, master)

    @property
    def master_address(self) -> str | None:
        """The master a Sentinel set named last ("host:port"); None for one server."""
        if self._client is None or self._sentinel is None:
            return None
        address = getattr(self._client.connection_pool, "master_address", None)
        return None if address is None else f"{address[0]}:{address[1]}"

    async def refresh_master(self) -> None:
        """Ask the sentinels which master to use now (nothing for one server).

        redis-py's pool asks them only for a new connection: while its
        connections work, a master the sentinels replaced (a split brain after a
        partition, an old master not yet demoted) would keep taking writes that
        Redis drops when it is demoted.  On a change the pool drops its idle
        connections, and ``round_trip`` refuses the replies of the others.
        """
        if self._sentinel is not None:
            await self.client.connection_pool.get_master_address()  # type: ignore[attr-defined]

    async def follow_failovers(self) -> None:
        """Until cancelled (a Sentinel set only): ask the sentinels again at each
        ``+switch-master`` they announce (memoryd.stores.redis_sentinel)."""
        if self._sentinel is None:
            return
        url = self._url
        sentinels = []
        for host, port in url.hosts:
            # The sentinels' own credentials, TLS as for the master, no database.
            arguments = connection_arguments(url)
            arguments.pop("db", None)
            arguments.update(
                host=host, port=port, username=url.sentinel_username, password=url.sentinel_password
            )
            sentinels.append(arguments)
        await follow_failovers(
            sentinels, self.own_connection, self.refresh_master, url.service_name
        )

    async def reset(self) -> None:
        """Drop every pooled connection; the next command makes a new one."""
        if self._client is not None:
            await self._client.connection_pool.disconnect()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose(close_connection_pool=True)
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            for sentinel_client in sentinel.sentinels:
                await sentinel_client.aclose()

    @property
    def client(self) -> aioredis.Redis:
        """redis-py's client, for the commands it runs well on its own (SCAN, INFO, SET)."""
        if self._client is None:
            raise StoreUnavailable("redis store is not open")
        return self._client

    def script(self, name: str) -> AsyncScript:
        """A Lua script by name (``SCRIPTS``), loaded at ``load_scripts``."""
        if self._client is None:
            raise StoreUnavailable("redis store is not open")
        return self._scripts[name]

    async def load_scripts(self) -> None:
        for script in self._scripts.values():
            script.sha = await self.client.script_load(script.script)

    def evalsha(
        self, name: str, keys: tuple[str, ...] | list[str], *args: str | bytes | int
    ) -> Command:
        """An EVALSHA of the script ``name``, on the slot of its first key.

        Packed by hiredis: a Script object would cost a SCRIPT EXISTS round
        trip per call; NOSCRIPT is handled in ``run_batch`` instead.
        """
        packed = pack("EVALSHA", self.script(name).sha, len(keys), *keys, *args)
        return Command(packed, keys[0] if keys else None)

    async def run_batch(
        self,
        action: str,
        commands: Callable[[], list[Command]],
        framing: Framing = NO_FRAMING,
    ) -> list[Any]:
        """The replies to ``commands``, sent in one write: one round trip per batch
        (``framing`` around them).  The commands are packed again after
        the scripts are reloaded (Redis restarted or flushed them): sending
        them all again is safe, each script call is idempotent.
        """
        with translated(action):
            for attempt in range(2):
                async with framing.serial or contextlib.nullcontext():
                    replies = await self.send_batch(commands(), framing)
                if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                    logger.info("redis does not know the scripts any more; loading them again")
                    await self.load_scripts()
                    continue
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
                return replies
        raise AssertionError("unreachable")  # pragma: no cover

    async def send_batch(self, commands: list[Command], framing: Framing) -> list[Any]:
        """The replies to ``commands``, framed, in one write.  A change notice
        refused fails the batch, to be sent again whole: a notice lost would
        leave the other daemons' views of its agents stale."""
        first, last = framing.before(""), framing.after("", commands)
        replies = await self.round_trip(first + commands + last)
        for reply in replies[len(first) + len(commands) :]:
            if isinstance(reply, Exception):
                raise reply
        return replies[len(first) : len(first) + len(commands)]

    async def round_trip(self, commands: Sequence[Command]) -> list[Any]:
        """Write ``commands`` on a pooled connection and read a reply for each
        (an error reply as its ResponseError, not raised).

        redis-py's Pipeline would do the same with several times the CPU per
        call (it runs on the event loop, between the requests of the agents).
        A connection that failed half-way is closed, never handed on.
        """
        packed = [command.packed for command in commands]
        for _ in range(2):
            replies = await self._round_trip_once(packed)
            if replies is not None:
                return replies
        raise StoreUnavailable("redis: the sentinels name another master at every try")

    async def _round_trip_once(self, packed: list[bytes]) -> list[Any] | None:
        """The replies; None if they came from a master the sentinels no longer
        name (its connection dropped): the caller sends them again, to the new one."""
        pool = self.client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            replies = await exchange(connection, packed)
            if not self._on_named_master(connection):
                logger.info(
                    "a reply came from %s:%s, which the sentinels no longer name master: "
                    "sending again to the new one",
                    connection.host,
                    connection.port,
                )
                await connection.disconnect()
                return None
            return replies
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    def _on_named_master(self, connection: Any) -> bool:
        """Whether ``connection`` is to the master the sentinels named last (always,
        for one server).  What such a master took can be lost when it is demoted,
        and nothing it confirms holds: memoryd writes to one master at a time."""
        if self._sentinel is None:
            return True
        named = getattr(self.client.connection_pool, "master_address", None)
        return named is None or (connection.host, connection.port) == tuple(named)

    async def master_to_follow(self) -> tuple[Any, Callable[[], bool]]:
        """A connection of its own (not yet made) to the master, for following a
        stream (memoryd.stores.redis_changes.follow_stream), and whether that
        master is still the one to follow.

        Without the pool's retries: they would reconnect behind our back, and a
        broken link is the very event to see.
        """
        arguments = connection_arguments(self._url)
        followed: str | None = None  # the master followed, on a Sentinel set
        if self._sentinel is not None and self._url.service_name is not None:
            with translated("watch"):
                host, port = await self._sentinel.discover_master(self._url.service_name)
            arguments.update(host=host, port=port)
            followed = f"{host}:{port}"

        def current() -> bool:
            # Another master named (a split brain: the old one still answers):
            # the notices go to the new one.
            return followed is None or self.master_address in (None, followed)

        return self.own_connection(arguments), current

    def own_connection(self, arguments: dict[str, Any]) -> Any:
        """A connection of its own made with ``arguments`` (connection_arguments),
        RESP2, without retries: a caller that waits on it sees it break."""
        arguments = dict(arguments)
        connection_class = arguments.pop("connection_class", aioredis.Connection)
        return connection_class(
            **arguments,
            protocol=2,
            socket_timeout=self._socket_timeout_s,
            socket_connect_timeout=self._connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )

    @property
    def socket_timeout_s(self) -> float:
        return self._socket_timeout_s
