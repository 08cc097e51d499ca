"""``python -m bench.run [--quick] [--scenario NAME ...] [--out DIR]``

Starts its own redis-servers and memoryd daemons (tests.harness), runs every baseline side by
side, writes ``results.json`` and ``results.md`` (plus PNG charts when matplotlib is installed)
to ``bench/results/<timestamp>/`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.outage import run_outage
from bench.scale import run_scale
from bench.scenarios import SIZES, Context, run_ingest, run_latency, run_sessions
from bench.services import Services, machine_info
from bench.topology import run_topology

RESULTS_DIR = Path(__file__).resolve().parent / "results"

Scenario = Callable[[Context], dict[str, Any]]

SCENARIOS: dict[str, Scenario] = {
    "latency": run_latency,
    "ingest": run_ingest,
    "sessions": run_sessions,
    "scale": run_scale,
    "outage": run_outage,
    "topology": run_topology,
}

# How every contender reaches Redis, and how clients reach memoryd (in results.json and .md).
TRANSPORT = {
    "redis": (
        "TCP loopback (127.0.0.1, a free port per redis-server) for every contender: the"
        " direct-Redis baselines (redis-py blocking and asyncio, host/port as the original"
        " system), the ingest ceilings (raw hiredis socket and redis-py) and memoryd's store"
        " (MEMORYD_REDIS_URL=redis://127.0.0.1:<port>/0)"
    ),
    "memoryd": "Unix socket (Client, AsyncClient): the product",
}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[2])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small iteration counts (< 60 s)")
    size.add_argument("--tiny", action="store_true", help="a few iterations (the test suite)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable); default: all of them",
    )
    parser.add_argument("--out", type=Path, help="results directory (default bench/results/<ts>)")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str]) -> tuple[dict[str, Any], Path]:
    args = parse_args(argv)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    names = args.scenario or list(SCENARIOS)
    started = datetime.now()
    out: Path = args.out or RESULTS_DIR / started.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "size": size,
        "started": started.isoformat(timespec="seconds"),
        "machine": machine_info(list(argv)),
        "transport": TRANSPORT,
    }
    services = Services()
    clock = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="mdbench-", dir="/tmp") as workdir:
            ctx = Context(services, Path(workdir), SIZES[size], log)
            for name in names:
                results[name] = SCENARIOS[name](ctx)
    finally:
        services.close()
    results["seconds"] = round(time.perf_counter() - clock, 1)
    results["goals"] = report.goal_results(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out / "results.md").write_text(report.markdown(results), encoding="utf-8")
    if not args.no_charts:
        results["charts"] = report.charts(results, out)
        if not results["charts"]:
            log("matplotlib not installed: no charts (pip install -e '.[bench]')")
    return results, out


def main(argv: Sequence[str] | None = None) -> int:
    results, out = run(sys.argv[1:] if argv is None else argv)
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"results: {out}  ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
