"""The stores records live in, behind the Store protocol of memoryd.stores.base.

Each store's module is imported only when that store is used, so a daemon
on the local store never loads redis-py (a noticeable part of start-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memoryd.config import Settings
from memoryd.stores.base import (
    AgentStats,
    Store,
    StoreError,
    StoreMisconfigured,
    StoreRefusing,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from memoryd.stores.local import LocalStore
    from memoryd.stores.redis import RedisStore

__all__ = [
    "AgentStats",
    "LocalStore",
    "RedisStore",
    "Store",
    "StoreError",
    "StoreMisconfigured",
    "StoreRefusing",
    "StoreUnavailable",
    "create_store",
]


def __getattr__(name: str) -> Any:
    if name == "LocalStore":
        from memoryd.stores.local import LocalStore

        return LocalStore
    if name == "RedisStore":
        from memoryd.stores.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_store(settings: Settings) -> Store:
    """The store the settings ask for; not yet opened."""
    if settings.store_kind == "redis":
        from memoryd import redis_url
        from memoryd.stores.redis import RedisStore

        store_class = RedisStore
        if redis_url.parse(settings.redis_url).topology == "cluster":
            from memoryd.stores.redis_cluster import ClusterStore

            store_class = ClusterStore
        return store_class(
            settings.redis_url,
            key_prefix=settings.key_prefix,
            max_memories=settings.max_memories,
            pool_size=settings.redis_pool_size,
            socket_timeout_s=settings.redis_socket_timeout_s,
            connect_timeout_s=settings.redis_connect_timeout_s,
            retries=settings.redis_retries,
            min_replicas=settings.redis_min_replicas,
        )
    from memoryd.stores.local import LocalStore

    return LocalStore(settings.data_dir, max_memories=settings.max_memories)
