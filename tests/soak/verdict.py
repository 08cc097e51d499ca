"""Pass or fail, with the reasons: the leak fits and every criterion of the run.

Leaks: the daemon's RSS and open fds are fitted with one least-squares slope
shared by all daemon lifetimes (each lifetime its own intercept, since a kill
-9 starts a fresh process), over the samples taken at least ``warmup_s`` after
the lifetime's READY and outside a fault's action (from its start until 1 s
after it was undone: a burst's sockets, a frozen Redis's backlog).  The growth
over the fitted span, slope x span, must stay below the ``GrowthBound``'s
``max(allowance, per_hour x span_h)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.soak.plan import GrowthBound
from tests.soak.services import Lifetime
from tests.soak.timeline import Timeline

SETTLE_S = 1.0
MIN_POINTS_PER_LIFETIME = 3


@dataclass(frozen=True, slots=True)
class Fit:
    slope_per_h: float | None
    span_h: float
    points: int

    def growth(self) -> float:
        return 0.0 if self.slope_per_h is None else self.slope_per_h * self.span_h


def pooled_slope(groups: Sequence[Sequence[tuple[float, float]]]) -> Fit:
    """The least-squares slope (per hour) of (t_s, value) points, one intercept per group.

    Groups with fewer than ``MIN_POINTS_PER_LIFETIME`` points are left out.  The
    span is the sum of the groups' time spans.
    """
    numerator = denominator = span_s = 0.0
    points = 0
    for group in groups:
        if len(group) < MIN_POINTS_PER_LIFETIME:
            continue
        mean_t = sum(t for t, _ in group) / len(group)
        mean_v = sum(v for _, v in group) / len(group)
        numerator += sum((t - mean_t) * (v - mean_v) for t, v in group)
        denominator += sum((t - mean_t) ** 2 for t, _ in group)
        span_s += max(t for t, _ in group) - min(t for t, _ in group)
        points += len(group)
    slope = numerator / denominator * 3600 if denominator > 0 else None
    return Fit(slope, span_s / 3600, points)


def fitted_groups(
    samples: Sequence[dict[str, Any]],
    field: str,
    scale: float,
    lifetimes: Sequence[Lifetime],
    timeline: Timeline,
    warmup_s: float,
) -> list[list[tuple[float, float]]]:
    """The points of ``field`` (divided by ``scale``) that the fit uses, per lifetime."""
    actions = [
        (timeline.offset_s(w.started), timeline.offset_s(w.ended))
        for w in timeline.windows()
        if w.ended is not None
    ]
    ready_s = {life.pid: timeline.offset_s(life.ready) or 0.0 for life in lifetimes}
    groups: dict[int, list[tuple[float, float]]] = {}
    for sample in samples:
        pid, t_s, value = sample.get("pid"), sample["t_s"], sample.get(field)
        if pid not in ready_s or value is None or t_s < ready_s[pid] + warmup_s:
            continue
        if any(a <= t_s <= b + SETTLE_S for a, b in actions if a is not None and b is not None):
            continue
        groups.setdefault(pid, []).append((t_s, value / scale))
    return list(groups.values())


def growth_verdict(name: str, unit: str, fit: Fit, bound: GrowthBound) -> dict[str, Any]:
    limit = bound.limit(fit.span_h)
    growth = fit.growth()
    return {
        "name": name,
        "unit": unit,
        "slope_per_h": None if fit.slope_per_h is None else round(fit.slope_per_h, 3),
        "fitted_span_h": round(fit.span_h, 4),
        "points": fit.points,
        "growth": round(growth, 3),
        "limit": round(limit, 3),
        "bound": {"per_hour": bound.per_hour, "allowance": bound.allowance},
        "passed": fit.slope_per_h is not None and growth <= limit,
    }


def reasons(summary: dict[str, Any]) -> list[str]:
    """Why the run failed; empty when it passed."""
    found = _oracle_reasons(summary["oracle"])
    found += [f"{count} x {kind}" for kind, count in summary["problems"]["counts"].items()]
    errors = summary["errors"]
    if errors["outside_windows_total"]:
        found.append(
            f"{errors['outside_windows_total']} errors reached agents outside fault windows: "
            f"{errors['outside_windows']}"
        )
    for leak in summary["leaks"].values():
        if not leak["passed"]:
            found.append(
                f"{leak['name']} grew {leak['growth']} {leak['unit']} over "
                f"{leak['fitted_span_h']} h fitted ({leak['points']} points), limit {leak['limit']}"
            )
    found += [f"crash: {crash}" for crash in summary["crashes"]]
    found += [f"fault: {failure}" for failure in summary["faults"]["failures"]]
    if missing := [k for k, n in summary["faults"]["count"].items() if not n]:
        found.append(f"faults never done: {missing}")
    found += _daemon_reasons(summary["daemon"])
    if len(summary["samples"]) < 3:
        found.append(f"only {len(summary['samples'])} samples")
    return found


def _oracle_reasons(oracle: dict[str, Any]) -> list[str]:
    found = [
        f"oracle: {oracle[name]} acknowledged writes {name}"
        for name in ("lost", "duplicated")
        if oracle[name]
    ]
    if oracle["unverified"]:
        found.append(f"oracle: {len(oracle['unverified'])} agents never verified")
    if oracle["uncleared"]:
        found.append(f"oracle: {len(oracle['uncleared'])} agents whose clear was never confirmed")
    if oracle["late"]:
        found.append(f"oracle: {len(oracle['late'])} agents verified later than allowed")
    if not oracle["verified"]:
        found.append("oracle: no agent was verified")
    return found


def _daemon_reasons(daemon: dict[str, Any]) -> list[str]:
    found = []
    if daemon["exit_code"] != 0:
        found.append(f"the daemon exited with {daemon['exit_code']} on SIGTERM")
    if daemon["alerts"]:
        found.append(f"the daemon raised alerts: {daemon['alerts']}")
    if not daemon["drained"]:
        found.append("the daemon's backlog did not drain at the end")
    if daemon["log_errors"]:
        found.append(f"the daemon logged {len(daemon['log_errors'])} ERROR/CRITICAL lines")
    return found
