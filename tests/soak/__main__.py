"""``python -m tests.soak``: one soak run; exit status 1 when it failed, with the reasons."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from tests.soak.plan import parse_duration_s, plan_for
from tests.soak.run import soak

DEFAULT_RESULTS = Path("soak-results")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument(
        "--duration", default="10m", help="how long the traffic runs: 60s, 90m, 2h, 1h30m (10m)"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        help=f"where summary.json and soak.png go (default {DEFAULT_RESULTS}/<timestamp>/)",
    )
    args = parser.parse_args()
    try:
        duration_s = parse_duration_s(args.duration)
    except ValueError as exc:
        parser.error(f"--duration: {exc}")
    results_dir = args.results_dir or DEFAULT_RESULTS / datetime.now().strftime("%Y%m%d-%H%M%S")
    summary = soak(plan_for(duration_s), results_dir)
    print(json.dumps(_headline(summary), indent=2, ensure_ascii=False))
    print(f"summary: {results_dir / 'summary.json'}  chart: {results_dir / 'soak.png'}")
    if summary["passed"]:
        print("SOAK PASSED")
        return 0
    print("SOAK FAILED:")
    for reason in summary["reasons"]:
        print(f"  - {reason}")
    return 1


def _headline(summary: dict[str, object]) -> dict[str, object]:
    """The figures worth a glance; everything else is in summary.json."""
    keys = ("duration_s", "calls", "oracle", "errors", "problems", "leaks")
    headline = {key: summary[key] for key in keys}
    errors = dict(headline["errors"])  # type: ignore[call-overload]
    errors.pop("outside_details", None)
    headline["errors"] = errors
    headline["faults"] = summary["faults"]["count"]  # type: ignore[index]
    return headline


if __name__ == "__main__":
    sys.exit(main())
