"""The stores records live in, behind the Store protocol of memoryd.stores.base."""

from __future__ import annotations

from memoryd.config import Settings
from memoryd.stores.base import AgentStats, Store, StoreError, StoreUnavailable
from memoryd.stores.local import LocalStore
from memoryd.stores.redis import RedisStore

__all__ = [
    "AgentStats",
    "LocalStore",
    "RedisStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "create_store",
]


def create_store(settings: Settings) -> Store:
    """The store the settings ask for; not yet opened."""
    if settings.store_kind == "redis":
        return RedisStore(
            settings.redis_url,
            key_prefix=settings.key_prefix,
            max_memories=settings.max_memories,
            pool_size=settings.redis_pool_size,
            socket_timeout_s=settings.redis_socket_timeout_s,
            connect_timeout_s=settings.redis_connect_timeout_s,
            retries=settings.redis_retries,
        )
    return LocalStore(settings.data_dir, max_memories=settings.max_memories)
