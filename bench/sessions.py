"""The sessions scenario: whole meetings (tableround.md §6) run in parallel.

Each session is one process running one meeting of six agents strictly in
order, as the original system did; sessions run side by side to load the
backend.  Every process connects (and, for long histories, prefills) first,
then all wait at one barrier, so the meetings really run at the same time.
Reported per backend and parallelism: aggregate operations per second over
the wall time from the barrier to the last finish, and p50/p99 per operation.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import workload
from bench.backends.base import Backend, execute
from bench.backends.direct import DirectRedis
from bench.backends.files import FileStore
from bench.backends.memoryd import Memoryd
from bench.services import DaemonConfig
from bench.stats import summarize

# What each session process needs to reach its backend (picklable).
Target = tuple[str, str, str]  # (kind, name, where: directory, redis:// URL or daemon socket)

BARRIER_TIMEOUT_S = 600.0
SETTLE_TIMEOUT_S = 600.0
SESSION_TIMEOUT_S = 1800.0

SESSION_DAEMONS: tuple[DaemonConfig, ...] = (
    DaemonConfig("redis", "always"),
    DaemonConfig("redis", "everysec"),
    DaemonConfig("local", "everysec"),
)


def _connect(target: Target) -> Backend:
    kind, name, where = target
    if kind == "files":
        return FileStore(Path(where))
    if kind == "direct":
        return DirectRedis(where)
    return Memoryd(name, Path(where))


def _prefill(backend: Backend, session: workload.Session, history: int, seed: int) -> None:
    """Give every agent ``history`` older records (the long-history case), all of them in the
    store before the meeting starts: a history is what is already there."""
    if not history:
        return
    rng = random.Random(seed)
    for agent in session.agents:
        items = [(agent, workload.personal_record(rng, agent)) for _ in range(history)]
        for start in range(0, len(items), 500):
            backend.add_many(items[start : start + 500])
    if isinstance(backend, Memoryd):
        # The flusher applies in order: once this is in the store, so is the history.
        backend.client.add(
            f"{session.name}.settled", "barrier", {}, durability="store", timeout_s=SETTLE_TIMEOUT_S
        )


def run_session(
    target: Target, session_name: str, seed: int, history: int, start: Any = None
) -> dict[str, Any]:
    """One meeting in this process, after ``start`` (a barrier) when given; its timings."""
    # A long history is kept: the meeting then clears only its own shared stream.
    session = workload.session_script(seed, session_name, clear_agents=not history)
    backend = _connect(target)
    try:
        _prefill(backend, session, history, seed + 1)
        latencies: dict[str, list[int]] = {}
        if start is not None:
            start.wait(BARRIER_TIMEOUT_S)
        started = time.time()
        for op in session.ops:
            began = time.perf_counter_ns()
            execute(backend, op)
            latencies.setdefault(op.name, []).append(time.perf_counter_ns() - began)
        finished = time.time()
    finally:
        backend.close()
    return {"started": started, "finished": finished, "latencies": latencies}


def _session_process(
    results: Any, start: Any, target: Target, name: str, seed: int, history: int
) -> None:
    try:
        results.put(run_session(target, name, seed, history, start))
    except BaseException as exc:  # reported to the parent, which raises
        start.abort()
        results.put({"error": repr(exc)})


def run_parallel(
    target: Target | Sequence[Target], parallel: int, history: int, seed: int, tag: str
) -> dict[str, Any]:
    """``parallel`` meetings at once, one process each; with several targets (daemons
    sharing one store), meeting ``i`` goes to target ``i`` modulo their number."""
    targets = [target] if isinstance(target, tuple) else list(target)
    context = multiprocessing.get_context("fork")
    start = context.Barrier(parallel)
    results_queue: Any = context.Queue()
    processes = [
        context.Process(
            target=_session_process,
            args=(
                results_queue,
                start,
                targets[i % len(targets)],
                f"{tag}-p{parallel}-s{i}",
                seed + i,
                history,
            ),
        )
        for i in range(parallel)
    ]
    for process in processes:
        process.start()
    results = [results_queue.get(timeout=SESSION_TIMEOUT_S) for _ in processes]
    for process in processes:
        process.join()
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        raise RuntimeError(f"{len(failed)} sessions failed; first: {failed[0]}")
    wall_s = max(r["finished"] for r in results) - min(r["started"] for r in results)
    merged: dict[str, list[int]] = {}
    for result in results:
        for name, values in result["latencies"].items():
            merged.setdefault(name, []).extend(values)
    operations = sum(len(values) for values in merged.values())
    return {
        "parallel": parallel,
        "history": history,
        "operations": operations,
        "wall_s": round(wall_s, 3),
        "ops_per_s": round(operations / wall_s, 1) if wall_s > 0 else None,
        "per_op": {name: dict(summarize(v)) for name, v in sorted(merged.items())},
    }
