"""One memoryd connection per process (per event loop, for the async facades).

TableRound builds a memory object per agent and one per meeting; they all
share the daemon's socket, as its agents shared one Redis pool.  An
``AsyncClient`` pipelines concurrent calls over one connection, so one per
event loop serves every facade of that loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref

from memoryd_client.aio import AsyncClient
from memoryd_client.client import Client
from memoryd_client.wire import resolve_socket_path

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncClient]] = (
    weakref.WeakKeyDictionary()
)
_clients: dict[str, Client] = {}
_lock = threading.Lock()


def shared_async_client(socket_path: str | None = None) -> AsyncClient:
    """The client of the running event loop for ``socket_path`` (default: the client's default)."""
    path = resolve_socket_path(socket_path)
    per_loop = _async_clients.setdefault(asyncio.get_running_loop(), {})
    client = per_loop.get(path)
    if client is None:
        client = per_loop[path] = AsyncClient(path)
    return client


def shared_client(socket_path: str | None = None) -> Client:
    """The blocking client of this process for ``socket_path``."""
    path = resolve_socket_path(socket_path)
    with _lock:
        client = _clients.get(path)
        if client is None:
            client = _clients[path] = Client(path)
        return client
