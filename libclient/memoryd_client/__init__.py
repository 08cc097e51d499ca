"""Client for memoryd, the memory daemon for multi-agent LLM systems.

``Client`` is the blocking client, ``AsyncClient`` the asyncio one; both have
one method per protocol method, reconnect after a daemon restart and retry
within a per-call deadline.  Errors are in ``memoryd_client.errors``.
"""

from __future__ import annotations

from memoryd_client import errors
from memoryd_client.aio import AsyncClient
from memoryd_client.calls import UNSET
from memoryd_client.client import Client
from memoryd_client.ids import new_id
from memoryd_client.retry import RetryPolicy
from memoryd_client.types import (
    AddResult,
    AgentList,
    Cleared,
    NewRecord,
    Record,
    RecordList,
    Stats,
)

__all__ = [
    "UNSET",
    "AddResult",
    "AgentList",
    "AsyncClient",
    "Cleared",
    "Client",
    "NewRecord",
    "Record",
    "RecordList",
    "RetryPolicy",
    "Stats",
    "errors",
    "new_id",
]
