"""Shapes of what the daemon returns, for type checkers.

Records and stats arrive as plain dicts, exactly as the server sends them; the
TypedDicts below only describe them.  ``RecordList`` is the one real class: a
list of records that also carries the ``degraded`` flag of ``recent`` and
``search``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, NotRequired, Required, TypedDict

Order = Literal["newest", "oldest"]
Durability = Literal["local", "store"]


class Record(TypedDict):
    """One memory, as ``get``, ``update``, ``recent`` and ``search`` return it."""

    id: str
    agent_id: str
    type: str
    content: Any
    author: str | None
    importance: float
    tags: list[str]
    metadata: dict[str, Any]
    created_at: float
    expires_at: float | None


class NewRecord(TypedDict, total=False):
    """One element of ``add_many``: the fields of ``add``, with ``agent_id``."""

    agent_id: Required[str]
    type: Required[str]
    content: Required[Any]
    author: str | None
    importance: float
    tags: list[str]
    metadata: dict[str, Any]
    ttl_s: float
    id: str
    created_at: float
    durability: Durability


class AddResult(TypedDict):
    """What ``add`` returns: the id and creation time the record was stored with."""

    id: str
    created_at: float


class Stats(TypedDict):
    """Counts of what is stored for one agent now (never "ever added")."""

    count: int
    by_type: dict[str, int]
    bytes: int
    oldest: float | None
    newest: float | None


class Peer(TypedDict):
    pid: int
    uid: int
    gid: int


class HelloResult(TypedDict):
    server: str
    version: str
    protocol: int
    peer: NotRequired[Peer]


class RecordList(list[Record]):
    """The records of ``recent`` or ``search``, in the order the server sent them.

    ``degraded`` is True when the daemon answered from what it holds locally
    because the store was unreachable: the list may miss records that only the
    store has.
    """

    degraded: bool

    def __init__(self, records: Iterable[Record] = (), *, degraded: bool = False) -> None:
        super().__init__(records)
        self.degraded = degraded

    def __repr__(self) -> str:
        return f"RecordList({list.__repr__(self)}, degraded={self.degraded})"


class Cleared(int):
    """How many records ``clear`` deleted, an ``int`` with ``.degraded``.

    ``degraded`` is True when the store was unreachable: the count is then of
    the agent's writes still held by the daemon, and the store's own records
    are deleted once it returns.
    """

    degraded: bool

    def __new__(cls, deleted: int, *, degraded: bool = False) -> Cleared:
        cleared = super().__new__(cls, deleted)
        cleared.degraded = degraded
        return cleared

    def __repr__(self) -> str:
        return f"Cleared({int(self)}, degraded={self.degraded})"


class AgentList(list[str]):
    """The agent ids of ``agents``, with ``.degraded``: True when the store was
    unreachable and the list holds only the agents with writes still held by
    the daemon."""

    degraded: bool

    def __init__(self, agent_ids: Iterable[str] = (), *, degraded: bool = False) -> None:
        super().__init__(agent_ids)
        self.degraded = degraded

    def __repr__(self) -> str:
        return f"AgentList({list.__repr__(self)}, degraded={self.degraded})"
