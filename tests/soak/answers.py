"""The guarantees every read answer keeps, whatever the faults: checked on each answer.

- no id twice in one answer (a duplicate);
- the order asked for (newest or oldest first, by ``created_at``);
- no record of another agent;
- no record whose ``expires_at`` had passed when the call started (the daemon
  and the soak share the clock; a tolerance covers float rounding);
- a meeting timeline holds only its own participants' speeches.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from memoryd_client.types import Record
from tests.soak.observed import Observer

EXPIRY_TOLERANCE_S = 0.5


def check_records(
    observer: Observer,
    where: str,
    agent_id: str,
    records: Sequence[Record],
    *,
    newest_first: bool = True,
    asked_at: float | None = None,
) -> None:
    """Report every broken guarantee of one ``recent``/``search`` answer."""
    asked_at = time.time() if asked_at is None else asked_at
    ids = [r["id"] for r in records]
    twice = [i for i, n in Counter(ids).items() if n > 1]
    if twice:
        observer.problem("duplicate id in an answer", f"{where} {agent_id}: {twice[:5]}")
    times = [r["created_at"] for r in records]
    wanted = sorted(times, reverse=newest_first)
    if times != wanted:
        order = "newest" if newest_first else "oldest"
        observer.problem("answer out of order", f"{where} {agent_id}: not {order} first")
    strangers = {r["agent_id"] for r in records} - {agent_id}
    if strangers:
        observer.problem("record of another agent", f"{where} {agent_id}: {sorted(strangers)}")
    expired = [
        r["id"]
        for r in records
        if r["expires_at"] is not None and r["expires_at"] < asked_at - EXPIRY_TOLERANCE_S
    ]
    if expired:
        observer.problem("expired record returned", f"{where} {agent_id}: {expired[:5]}")


def check_timeline(
    observer: Observer,
    session_id: str,
    timeline: Sequence[Mapping[str, Any]],
    agents: Iterable[str],
) -> None:
    """A ``GlobalMemory.get_meeting_timeline`` answer: unique, newest first, its own agents."""
    ids = [speech["speech_id"] for speech in timeline]
    twice = [i for i, n in Counter(ids).items() if n > 1]
    if twice:
        observer.problem("duplicate id in an answer", f"timeline {session_id}: {twice[:5]}")
    times = [float(speech["timestamp"]) for speech in timeline]
    if times != sorted(times, reverse=True):
        observer.problem("answer out of order", f"timeline {session_id}: not newest first")
    strangers = {speech["agent_id"] for speech in timeline} - set(agents)
    if strangers:
        observer.problem(
            "record of another agent", f"timeline {session_id}: speeches of {sorted(strangers)}"
        )
