"""The run as one PNG: the daemon's gauges, latencies and errors over time, faults shaded."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

FAULT_COLOURS = {
    "redis_restart": "tab:red",
    "redis_freeze": "tab:blue",
    "sighup": "tab:green",
    "daemon_kill": "tab:purple",
    "connection_burst": "tab:orange",
    "crash": "black",
}
MIB = 1 << 20


def _series(
    samples: list[dict[str, Any]], field: str, scale: float = 1.0
) -> tuple[list[float], list[float]]:
    points = [(s["t_s"] / 60, s[field] / scale) for s in samples if s.get(field) is not None]
    return [t for t, _ in points], [v for _, v in points]


def draw(summary: dict[str, Any], path: Path) -> None:
    """Write the chart of ``summary`` (as written to summary.json) to ``path``."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    patches: Any = importlib.import_module("matplotlib.patches")
    samples = summary["samples"]
    fig, axes = plt.subplots(5, 1, figsize=(12, 15), sharex=True)
    rss, fds, wal, latency, errors = axes

    rss.plot(*_series(samples, "rss_bytes", MIB), color="tab:blue", lw=1)
    rss.set_ylabel("daemon RSS (MiB)")
    fds.plot(*_series(samples, "fds"), color="tab:brown", lw=1)
    fds.set_ylabel("daemon open fds")
    for axis, key in ((rss, "rss"), (fds, "fds")):
        verdict = summary["leaks"][key]
        axis.set_title(
            f"fitted slope {verdict['slope_per_h']} {verdict['unit']}/h: growth "
            f"{verdict['growth']} over {verdict['fitted_span_h']} h, limit {verdict['limit']}",
            fontsize=9,
            loc="left",
        )

    wal.plot(*_series(samples, "wal_bytes", MIB), color="tab:gray", lw=1, label="WAL MiB")
    wal.set_ylabel("WAL (MiB)")
    backlog = wal.twinx()
    backlog.plot(*_series(samples, "backlog_records"), color="tab:red", lw=1, label="backlog")
    backlog.set_ylabel("backlog (records)")
    wal.legend(loc="upper left", fontsize=8)
    backlog.legend(loc="upper right", fontsize=8)

    busiest = sorted(summary["latency"].items(), key=lambda item: -item[1]["count"])[:8]
    for method, _ in busiest:
        points = [
            (s["t_s"] / 60, s["latency"][method]["p99_ms"])
            for s in samples
            if method in s.get("latency", {}) and s["latency"][method]["p99_ms"] is not None
        ]
        latency.plot([t for t, _ in points], [v for _, v in points], lw=0.8, label=method)
    latency.set_yscale("log")
    latency.set_ylabel("p99 per interval (ms)")
    latency.legend(fontsize=7, ncol=4, loc="upper left")

    times = [s["t_s"] / 60 for s in samples]
    width = summary["plan"]["sample_every_s"] / 60
    inside = [s.get("errors_in_windows", 0) for s in samples]
    outside = [s.get("errors_outside", 0) for s in samples]
    errors.bar(times, inside, width=width, color="tab:orange", label="in fault windows")
    errors.bar(times, outside, width=width, bottom=inside, color="black", label="outside")
    errors.set_ylabel("errors to agents")
    errors.set_xlabel("minutes")
    errors.legend(fontsize=8, loc="upper left")

    # Each window: its fault's action darker, the rest (until healthy + grace) lighter.
    for window in summary["faults"]["windows"]:
        colour = FAULT_COLOURS.get(window["kind"], "gray")
        start = window["started_s"]
        acted = window["ended_s"] or start
        closes = window["closes_s"] or acted
        for axis in axes:
            axis.axvspan(start / 60, max(acted, start + 0.5) / 60, color=colour, alpha=0.35, lw=0)
            axis.axvspan(acted / 60, closes / 60, color=colour, alpha=0.08, lw=0)
    seen = {window["kind"] for window in summary["faults"]["windows"]}
    handles = [
        patches.Patch(color=colour, alpha=0.35, label=kind)
        for kind, colour in FAULT_COLOURS.items()
        if kind in seen
    ]
    fig.legend(handles=handles, loc="upper center", ncol=6, fontsize=8, bbox_to_anchor=(0.5, 0.975))
    verdict_text = "PASSED" if summary["passed"] else "FAILED"
    fig.suptitle(
        f"memoryd soak, {summary['duration_s'] / 60:.1f} min: {verdict_text} "
        "(fault windows shaded: the fault darker, until healthy + grace lighter)",
        y=0.995,
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)
