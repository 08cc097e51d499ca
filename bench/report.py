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
    # What this run measured it on, when the run's size decides it (e.g. the scale levels).
    detail: Callable[[dict[str, Any]], str | None] = lambda results: None


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


def _scale_levels(results: dict[str, Any]) -> list[dict[str, Any]]:
    levels: list[dict[str, Any]] = results.get("scale", {}).get("levels", [])
    return levels


def _scale_latency_ratio(results: dict[str, Any]) -> float | None:
    """newest-5 p50 at the top level / at the first (1M / 1k in the full run)."""
    levels = _scale_levels(results)
    if len(levels) < 2:
        return None
    return _ratio(levels[-1]["newest"]["p50_ms"], levels[0]["newest"]["p50_ms"])


def _scale_latency_detail(results: dict[str, Any]) -> str | None:
    levels = _scale_levels(results)
    if len(levels) < 2:
        return None
    return f"this run: {_count(levels[-1]['records'])} / {_count(levels[0]['records'])}"


def _scale_overhead(results: dict[str, Any]) -> float | None:
    levels = _scale_levels(results)
    value = levels[-1]["overhead_per_record_bytes"] if levels else None
    return None if value is None else float(value)


def _scale_overhead_detail(results: dict[str, Any]) -> str | None:
    levels = _scale_levels(results)
    if not levels:
        return None
    top = levels[-1]
    return (
        f"this run: {_count(top['records'])} records, {_fmt(top['memory_per_record_bytes'], 0)}"
        f" B per record, payload {_fmt(top['payload']['mean_bytes'], 0)} B"
    )


RSS_GOAL_AGENTS = 10_000
RSS_GOAL_RECORDS_PER_AGENT = 100


def _scale_rss_mb(results: dict[str, Any]) -> float | None:
    """Daemon RSS in MB (10^6 B) at 10k agents × 100 records; None below that."""
    levels = _scale_levels(results)
    if not levels:
        return None
    top = levels[-1]
    reached = top["agents"] >= RSS_GOAL_AGENTS
    reached = reached and top["records"] >= RSS_GOAL_AGENTS * RSS_GOAL_RECORDS_PER_AGENT
    # The daemon serving the store with its default settings, restarted after the ingest:
    # the ingesting daemon's heap also holds what its backlog grew (shown in the detail).
    rss = top.get("restarted_daemon_rss_after_every_agent_bytes")
    return float(rss) / 1e6 if reached and rss is not None else None


def _scale_rss_detail(results: dict[str, Any]) -> str | None:
    levels = _scale_levels(results)
    if not levels:
        return None
    top = levels[-1]
    rss = top.get("daemon_rss_after_every_agent_bytes")
    restarted = top.get("restarted_daemon_rss_after_every_agent_bytes")
    return (
        f"this run's top level: {_count(top['agents'])} agents ×"
        f" {top['records'] // max(1, top['agents'])}; the daemon restarted over the store,"
        f" default settings, after newest-5 from every agent: {_fmt(_mb(restarted), 1)} MB;"
        f" the daemon that ingested them (read cache off), its heap holding what a peak backlog"
        f" of {top.get('ingest_peak_backlog_records')} records grew: {_fmt(_mb(rss), 1)} MB"
    )


def _count(n: int) -> str:
    """1000 -> 1k, 1000000 -> 1M."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def _mb(value: float | None) -> float | None:
    return None if value is None else value / 1e6


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
    Goal(
        "newest-5 p50 at the top scale level / at the first (1M / 1k stored records in the full"
        " run), memoryd (redis, everysec)",
        "≤ 1.2",
        _at_most(1.2),
        _scale_latency_ratio,
        _scale_latency_detail,
    ),
    Goal(
        "Redis memory per stored record − mean encoded payload (bytes), at the top scale level",
        "≤ 250",
        _at_most(250.0),
        _scale_overhead,
        _scale_overhead_detail,
    ),
    Goal(
        "daemon RSS (MB) with 10k agents × 100 records, after newest-5 from every agent",
        "≤ 150",
        _at_most(150.0),
        _scale_rss_mb,
        _scale_rss_detail,
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
                "detail": goal.detail(results),
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


def topology_markdown(topology: dict[str, Any]) -> list[str]:
    """The sessions on one standalone Redis and on a 3-master cluster, 1 and 3 daemons."""

    def cache(run: dict[str, Any]) -> str:
        hits = sum(c["hits"] or 0 for c in run["read_cache"])
        misses = sum(c["misses"] or 0 for c in run["read_cache"])
        rate = hits / (hits + misses) if hits + misses else None
        return f"{_fmt(rate, 2)} ({hits}/{hits + misses})"

    rows = [
        [
            run["store"],
            str(run["daemons"]),
            str(run["parallel"]),
            _fmt(run["ops_per_s"], 1),
            _fmt(run["per_op"].get("add", {}).get("p50_ms")),
            _fmt(run["per_op"].get("newest", {}).get("p50_ms")),
            _fmt(run["per_op"].get("context", {}).get("p50_ms")),
            cache(run),
            _fmt(run["daemon_cpu_s"], 2),
        ]
        for run in topology["runs"]
    ]
    header = ["store", "daemons", "sessions", "ops/s", "add p50", "newest p50", "context p50",
              "read-cache hit rate", "daemons' CPU s"]  # fmt: skip
    return [
        f"## topology (the sessions through memoryd ({topology['config']}) on one standalone"
        " Redis and on a 3-master Redis Cluster, 1 and 3 daemons sharing the store)",
        "",
        *_table(header, rows),
    ]


def _mib(value: float | None) -> str:
    return _fmt(None if value is None else value / 2**20, 1)


def _cached(cache: dict[str, Any] | None) -> str:
    return _fmt((cache or {}).get("records"))


def scale_markdown(scale: dict[str, Any]) -> list[str]:
    p = scale["params"]
    lines = [
        "## scale (one daemon, redis everysec; newest-5 ms, memory in MiB or bytes)",
        "",
        f"{p['method']}. {p['reads_per_level']} reads per level after {p['warmup_reads']}"
        f" warm-up. Empty server: used_memory {_mib(scale['empty']['used_memory'])} MiB.",
        "",
    ]
    rows = [
        [
            _count(level["records"]),
            str(level["agents"]),
            _fmt(level["newest"]["p50_ms"]),
            _fmt(level["newest"]["p99_ms"]),
            _fmt(level["newest"]["p99_9_ms"]),
            _fmt(level.get("read_cache_hit_share"), 2),
            _mib(level["redis"]["used_memory"]),
            _mib(level["redis"]["used_memory_dataset"]),
            _fmt(level["memory_per_record_bytes"], 0),
            _fmt(level["payload"]["mean_bytes"], 0),
            _fmt(level["overhead_per_record_bytes"], 0),
            _mib(level["daemon_rss_bytes"]),
            _fmt(level["ingest_stored_per_s"], 0),
            str(level["ingest_peak_backlog_records"]),
        ]
        for level in scale["levels"]
    ]
    header = ["records", "agents", "p50", "p99", "p99.9", "read cache hits", "used_memory MiB",
              "dataset MiB", "B/record", "payload B", "B/record − payload", "daemon RSS MiB",
              "ingest stored/s", "peak ingest backlog"]  # fmt: skip
    lines += _table(header, rows)
    top = scale["levels"][-1] if scale["levels"] else None
    if top is not None and "daemon_rss_after_every_agent_bytes" in top:
        rss = _mib(top["daemon_rss_after_every_agent_bytes"])
        lines += [
            "",
            f"After newest-5 from each of the {top['agents']} agents"
            f" ({_fmt(top['read_every_agent_s'])} s): daemon RSS {rss} MiB,"
            f" {_cached(top.get('daemon_read_cache'))} records in its read cache. The daemon"
            f" restarted over the same store: {_mib(top.get('restarted_daemon_rss_bytes'))} MiB at"
            f" start, {_mib(top.get('restarted_daemon_rss_after_every_agent_bytes'))} MiB after"
            f" newest-5 from every agent ({_cached(top.get('restarted_daemon_read_cache'))}"
            " records cached). The RSS of the daemon that ingested keeps the heap its backlog grew"
            " (acknowledged, not yet applied: peak per level in the table).",
        ]
    return lines


def _outage_row(name: str, run: dict[str, Any]) -> list[str]:
    drain = run["drain"]
    return [
        name,
        _fmt(run["add_up"]["p50_ms"]),
        _fmt(run["add_up"]["p99_ms"]),
        _fmt(run["add_up"]["p99_9_ms"]),
        _fmt(run["add_down"]["p50_ms"]),
        _fmt(run["add_down"]["p99_ms"]),
        _fmt(run["add_down"]["p99_9_ms"]),
        _fmt(run["backlog_write"]["acked_per_s"], 0),
        str(drain["backlog_at_restart"]),
        _fmt(drain["noticed_s"], 2),
        _fmt(drain["first_apply_s"], 2),
        _fmt(drain["drained_s"], 2),
        _fmt(drain["healthy_s"], 2),
        _fmt(drain["drain_records_per_s"], 0),
        _fmt(drain["status_drain_rate_per_s_max"], 0),
    ]


def _readback(run: dict[str, Any]) -> str:
    checks = run["correctness"]
    parts = [
        f"{c['found']}/{c['checked']}"
        for c in (checks["sequential_adds_while_down"], checks["backlog_sample"])
    ]
    return (
        f"written while down and read back: {parts[0]} sequential adds, {parts[1]} of a backlog"
        f" sample; records from before the kill still readable:"
        f" {checks['records_from_before_the_kill_readable']}; alerts:"
        f" {', '.join(run['alerts']) or 'none'}; degraded {_fmt(run['degraded_after_kill_s'], 2)} s"
        f" after the kill; states after the restart: {' → '.join(run['drain']['states'])}"
    )


def outage_markdown(outage: dict[str, Any]) -> list[str]:
    p = outage["params"]
    lines = [
        "## outage (add ms with Redis up and down; seconds after Redis listens again)",
        "",
        f"{p['method']}. {p['adds']} adds each way after {p['warmup_adds']} warm-up.",
        "",
    ]
    header = ["backend", "up p50", "up p99", "up p99.9", "down p50", "down p99", "down p99.9",
              "backlog acked/s", "backlog", "noticed s", "first apply s", "drained s",
              "healthy s", "drain records/s", "status drain_rate_per_s max"]  # fmt: skip
    runs = outage["runs"]
    lines += _table(header, [_outage_row(name, run) for name, run in runs.items()])
    lines += [""] + [f"- {name}: {_readback(run)}." for name, run in runs.items()]
    return lines


def goals_markdown(goals: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            g["measure"] + (f" ({g['detail']})" if g.get("detail") else ""),
            g["goal"],
            _fmt(g["value"]),
            g["verdict"],
        ]
        for g in goals
    ]
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
    transport = results.get("transport")
    if transport:
        lines += ["", f"Redis: {transport['redis']}. memoryd: {transport['memoryd']}."]
    if "latency" in results:
        lines += ["", *latency_markdown(results["latency"])]
    if "ingest" in results:
        lines += ["", *ingest_markdown(results["ingest"])]
    if "sessions" in results:
        lines += ["", *sessions_markdown(results["sessions"])]
    if "scale" in results:
        lines += ["", *scale_markdown(results["scale"])]
    if "outage" in results:
        lines += ["", *outage_markdown(results["outage"])]
    if "topology" in results:
        lines += ["", *topology_markdown(results["topology"])]
    lines += ["", *goals_markdown(results["goals"])]
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
    if _scale_levels(results):
        written.append(_scale_chart(plt, _scale_levels(results), out))
    return written


def _scale_chart(plt: Any, levels: list[dict[str, Any]], out: Path) -> str:
    """newest-5 latency and Redis memory per record against stored records."""
    records = [level["records"] for level in levels]
    fig, (latency, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    for title, key in PERCENTILE_KEYS:
        latency.plot(records, [level["newest"][key] for level in levels], marker="o", label=title)
    latency.set_ylabel("newest-5 latency (ms)")
    memory.plot(
        records, [level["memory_per_record_bytes"] for level in levels], marker="o",
        label="Redis memory per record",
    )  # fmt: skip
    memory.plot(
        records, [level["payload"]["mean_bytes"] for level in levels], marker="o",
        label="encoded payload (mean)",
    )  # fmt: skip
    memory.plot(
        records, [level["payload"]["mean_bytes"] + 250 for level in levels], linestyle="--",
        label="goal: payload + 250",
    )  # fmt: skip
    memory.set_ylabel("bytes")
    for ax in (latency, memory):
        ax.set_xscale("log")
        ax.set_xlabel("stored records")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=120)
    plt.close(fig)
    return "scale.png"
