"""Results as markdown, the goal ratios of issue 4, and optional PNG charts."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.workload import LATENCY_OPS

OP_TITLES = {
    "add": "add",
    "newest": "newest-5",
    "by_type": "by type",
    "context": "context 8",
    "search": "search",
}
PERCENTILE_KEYS = (("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p99_9_ms"))


@dataclass(frozen=True, slots=True)
class Goal:
    measure: str
    goal: str
    compare: Callable[[float], bool]
    value: Callable[[dict[str, Any]], float | None]


def _latency(results: dict[str, Any], backend: str, op: str) -> float | None:
    try:
        value = results["latency"]["backends"][backend]["ops"][op]["p50_ms"]
    except KeyError:
        return None
    return float(value)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0 or math.isnan(denominator):
        return None
    return numerator / denominator


def _latency_ratio(
    backend: str, op: str, baseline: str
) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: _ratio(_latency(r, backend, op), _latency(r, baseline, op))


def _ingest_ratio(run: str) -> Callable[[dict[str, Any]], float | None]:
    def value(results: dict[str, Any]) -> float | None:
        try:
            return float(results["ingest"]["runs"][run]["stored_vs_ceiling"])
        except KeyError:
            return None

    return value


def _sessions_rate(
    results: dict[str, Any], backend: str, parallel: int, long: bool
) -> float | None:
    try:
        runs = results["sessions"]["backends"][backend]
    except KeyError:
        return None
    for run in runs:
        if run["parallel"] == parallel and bool(run["history"]) == long:
            return float(run["ops_per_s"])
    return None


def _sessions_ratio(
    backend: str, baseline: str, long: bool
) -> Callable[[dict[str, Any]], float | None]:
    def ratio(results: dict[str, Any]) -> float | None:
        params = results.get("sessions", {}).get("params", {})
        parallel = params.get("long_parallel" if long else "session_parallel", [0])
        wanted = parallel if long else max(p for p in parallel if p <= 32)
        return _ratio(
            _sessions_rate(results, backend, wanted, long),
            _sessions_rate(results, baseline, wanted, long),
        )

    return ratio


def _at_most(limit: float) -> Callable[[float], bool]:
    return lambda v: v <= limit


def _at_least(limit: float) -> Callable[[float], bool]:
    return lambda v: v >= limit


# The goals of issue 4 that the implemented scenarios measure.  memoryd with the Redis store and
# the blocking Client against the original code path with the blocking redis-py client.
GOALS: tuple[Goal, ...] = (
    Goal(
        "add p50, memoryd (redis, fsync everysec) / direct Redis (blocking)",
        "≤ 0.5",
        _at_most(0.5),
        _latency_ratio("memoryd-redis-everysec", "add", "direct-redis"),
    ),
    Goal(
        "add p50, memoryd (redis, fsync always) / direct Redis (blocking)",
        "≤ 1.5",
        _at_most(1.5),
        _latency_ratio("memoryd-redis-always", "add", "direct-redis"),
    ),
    Goal(
        "newest-5 p50, memoryd (redis, fsync always) / direct Redis (blocking)",
        "≤ 0.7",
        _at_most(0.7),
        _latency_ratio("memoryd-redis-always", "newest", "direct-redis"),
    ),
    Goal(
        "newest-5 p50, memoryd (redis, fsync everysec) / direct Redis (blocking)",
        "≤ 0.7",
        _at_most(0.7),
        _latency_ratio("memoryd-redis-everysec", "newest", "direct-redis"),
    ),
    Goal(
        "parallel sessions (32 in the full run), aggregate ops/s, memoryd (redis, always) / "
        "direct Redis",
        "≥ 2",
        _at_least(2.0),
        _sessions_ratio("memoryd-redis-always", "direct-redis", long=False),
    ),
    Goal(
        "parallel sessions at long histories (32 × 1000 in the full run), memoryd (redis, "
        "always) / legacy files",
        "≥ 20",
        _at_least(20.0),
        _sessions_ratio("memoryd-redis-always", "legacy-files", long=True),
    ),
    Goal(
        "ingest records/s to the store, memoryd (redis, always, batch 1000) / ceiling",
        "≥ 0.7",
        _at_least(0.7),
        _ingest_ratio("memoryd-redis-always b1000"),
    ),
    Goal(
        "ingest records/s to the store, memoryd (redis, everysec, batch 1000) / ceiling",
        "≥ 0.7",
        _at_least(0.7),
        _ingest_ratio("memoryd-redis-everysec b1000"),
    ),
)


def goal_results(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for goal in GOALS:
        value = goal.value(results)
        verdict = "n/a" if value is None else "pass" if goal.compare(value) else "miss"
        rows.append(
            {
                "measure": goal.measure,
                "goal": goal.goal,
                "value": None if value is None else round(value, 3),
                "verdict": verdict,
            }
        )
    return rows


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def latency_markdown(latency: dict[str, Any]) -> list[str]:
    p = latency["params"]
    lines = [
        "## latency (ms; one agent, sequential)",
        "",
        f"{p['iterations']} iterations after {p['warmup']} warm-up, history prefilled with"
        f" {p['history']} records, meeting stream with {p['speeches']} speeches.",
    ]
    for title, key in PERCENTILE_KEYS:
        rows = [
            [name, *(_fmt(data["ops"][op][key]) for op in LATENCY_OPS)]
            for name, data in latency["backends"].items()
        ]
        lines += ["", f"### {title}", ""]
        lines += _table(["backend", *(OP_TITLES[op] for op in LATENCY_OPS)], rows)
    return lines


def ingest_markdown(ingest: dict[str, Any]) -> list[str]:
    ceiling = ingest["ceiling"]
    lines = [
        "## ingest (records/s)",
        "",
        f"{ingest['params']['records']} records per run. Ceiling: {ingest['params']['ceiling']}:"
        f" **{_fmt(ceiling['records_per_s'], 0)} records/s** (client CPU"
        f" {_fmt(ceiling['client_cpu_s'], 2)} s, redis CPU {_fmt(ceiling['redis_cpu_s'], 2)} s);"
        f" through redis-py: {_fmt(ingest['ceiling_redis_py']['records_per_s'], 0)} records/s.",
        "",
    ]
    rows = [
        [
            run["backend"],
            str(run["batch"]),
            _fmt(run["acked_per_s"], 0),
            _fmt(run["stored_per_s"], 0),
            _fmt(run["stored_vs_ceiling"], 2),
            _fmt(run["client_cpu_s"], 2),
            _fmt(run["daemon_cpu_s"], 2),
            _fmt(run["redis_cpu_s"], 2),
        ]
        for run in ingest["runs"].values()
    ]
    header = ["backend", "batch", "acked/s", "stored/s", "stored / ceiling", "client CPU s",
              "daemon CPU s", "redis CPU s"]  # fmt: skip
    return lines + _table(header, rows)


def sessions_markdown(sessions: dict[str, Any]) -> list[str]:
    lines = [
        "## sessions (meetings of tableround.md §6, one process each, side by side)",
        "",
        *_table(
            [
                "backend",
                "sessions",
                "history",
                "ops",
                "wall s",
                "ops/s",
                "add p50",
                "add p99",
                "newest p50",
                "context p50",
            ],
            [
                [
                    name,
                    str(run["parallel"]),
                    str(run["history"]),
                    str(run["operations"]),
                    _fmt(run["wall_s"]),
                    _fmt(run["ops_per_s"], 1),
                    _fmt(run["per_op"].get("add", {}).get("p50_ms")),
                    _fmt(run["per_op"].get("add", {}).get("p99_ms")),
                    _fmt(run["per_op"].get("newest", {}).get("p50_ms")),
                    _fmt(run["per_op"].get("context", {}).get("p50_ms")),
                ]
                for name, runs in sessions["backends"].items()
                for run in runs
            ],
        ),
    ]
    return lines


def goals_markdown(goals: list[dict[str, Any]]) -> list[str]:
    rows = [[g["measure"], g["goal"], _fmt(g["value"]), g["verdict"]] for g in goals]
    return ["## goals (issue 4)", "", *_table(["measure", "goal", "value", "verdict"], rows)]


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    lines = [
        f"# memoryd benchmark ({results['size']}, {results['started']})",
        "",
        f"`{machine['command']}`",
        "",
        f"{machine['cores_logical']} cores, {machine['memory_total_bytes'] / 2**30:.1f} GiB,"
        f" Python {machine['python']}, {machine['redis_server'].split(' sha=')[0]};"
        f" {packages}. Load average at start: {machine['load_average'][0]:.2f}.",
    ]
    if "latency" in results:
        lines += ["", *latency_markdown(results["latency"])]
    if "ingest" in results:
        lines += ["", *ingest_markdown(results["ingest"])]
    if "sessions" in results:
        lines += ["", *sessions_markdown(results["sessions"])]
    lines += ["", *goals_markdown(results["goals"])]
    if results.get("not_run"):
        lines += ["", "Not implemented yet: " + ", ".join(results["not_run"]) + "."]
    return "\n".join(lines) + "\n"


def charts(results: dict[str, Any], out: Path) -> list[str]:
    """PNG charts when matplotlib is importable; the file names written."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return []
    written = []
    if "latency" in results:
        backends = results["latency"]["backends"]
        fig, ax = plt.subplots(figsize=(12, 5))
        width = 0.8 / max(1, len(backends))
        for i, (name, data) in enumerate(backends.items()):
            values = [data["ops"][op]["p50_ms"] for op in LATENCY_OPS]
            positions = [j + i * width for j in range(len(LATENCY_OPS))]
            ax.bar(positions, values, width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(LATENCY_OPS))])
        ax.set_xticklabels([OP_TITLES[op] for op in LATENCY_OPS])
        ax.set_yscale("log")
        ax.set_ylabel("p50 latency (ms, log scale)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "latency_p50.png", dpi=120)
        plt.close(fig)
        written.append("latency_p50.png")
    if "ingest" in results:
        ingest = results["ingest"]
        labels = ["ceiling", *ingest["runs"].keys()]
        values = [ingest["ceiling"]["records_per_s"]]
        values += [run["stored_per_s"] for run in ingest["runs"].values()]
        fig, ax = plt.subplots(figsize=(12, 5))
        ax.barh(labels, values)
        ax.set_xlabel("records/s applied to the store")
        fig.tight_layout()
        fig.savefig(out / "ingest.png", dpi=120)
        plt.close(fig)
        written.append("ingest.png")
    return written
