"""One soak run, start to end: services up, traffic on, faults on schedule, then the verdict.

The end of a run: the traffic stops, the daemon must come back healthy and
drain its backlog, the verifier checks every oracle agent still waiting, the
daemon is stopped with SIGTERM (it must exit 0), and ``summary.json``, the
chart and the daemon's and Redis's logs go to the results directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from memoryd_client import Client, errors
from tests.soak import chart, meetings, oracle, traffic, verdict
from tests.soak.faults import Faults
from tests.soak.observed import Observer
from tests.soak.plan import FAULT_KINDS, Plan
from tests.soak.sampler import Sampler
from tests.soak.services import Services
from tests.soak.timeline import Timeline

DRAIN_TIMEOUT_S = 120.0
VERIFY_TIMEOUT_S = 180.0
JOIN_TIMEOUT_S = 60.0
LOG_PROBLEM = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) |^Traceback ")
KEPT_LOG_LINES = 20
LOG_COPY_MAX_BYTES = 64 << 20


def log(message: str, timeline: Timeline | None = None) -> None:
    offset = f"[{time.monotonic() - timeline.started:7.1f}s] " if timeline else ""
    print(f"{offset}{message}", flush=True)


class Run:
    def __init__(self, plan: Plan, results_dir: Path) -> None:
        self.plan = plan
        self.results_dir = results_dir
        self.timeline = Timeline(plan.grace_s)
        self.observer = Observer(self.timeline)
        self.services = Services(plan)
        self.ledger = oracle.Ledger()
        self.registry = traffic.Registry()
        self.stop_traffic = threading.Event()
        self.faults = Faults(plan, self.services, self.timeline)
        self.sampler = Sampler(plan, self.services, self.observer, self.timeline)
        self.verifier: oracle.Verifier | None = None
        self.sampler_thread: threading.Thread | None = None
        self.verifier_thread: threading.Thread | None = None
        self.traffic_threads: list[threading.Thread] = []
        self.done: list[tuple[float, str]] = []

    # ----------------------------------------------------------------- phases

    def start(self) -> None:
        self.services.start()
        self.timeline.started = time.monotonic()
        self.services.lifetimes[0].ready = self.timeline.started
        socket_path = self.services.socket_path
        self.verifier = oracle.Verifier(
            socket_path,
            self.services.redis_socket_path,
            self.plan,
            self.ledger,
            self.observer,
            self.timeline,
        )
        self.sampler_thread = self._thread("sampler", self.sampler.run)
        self.verifier_thread = self._thread("verifier", self.verifier.run)
        load, stop, observer, plan = self.plan.load, self.stop_traffic, self.observer, self.plan
        bodies: list[tuple[str, Callable[[], None]]] = []
        for i in range(load.meetings):
            body = partial(
                meetings.meeting_thread, i, socket_path, plan, stop, observer, self.registry
            )
            bodies.append((f"meeting-{i}", body))
        for i in range(load.legacy_agents):
            body = partial(meetings.legacy_thread, i, socket_path, plan, stop, observer)
            bodies.append((f"legacy-{i}", body))
        for i in range(load.oracle_writers):
            body = partial(oracle.sync_writer, i, socket_path, plan, stop, observer, self.ledger)
            bodies.append((f"oracle-{i}", body))
        bodies.append(
            (
                "oracle-async",
                partial(oracle.async_writer, socket_path, plan, stop, observer, self.ledger),
            )
        )
        bodies.append(("noise", partial(traffic.noise_writer, socket_path, plan, stop, observer)))
        bodies.append(
            ("reader", partial(traffic.reader, socket_path, plan, stop, observer, self.registry))
        )
        self.traffic_threads = [self._thread(name, body) for name, body in bodies]

    def _thread(self, name: str, body: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=self.observer.guarded(name, body), name=name, daemon=True)
        thread.start()
        return thread

    def faults_on_schedule(self) -> None:
        end = self.timeline.started + self.plan.duration_s
        for at_s, kind in self.plan.schedule():
            due = self.timeline.started + at_s
            if due >= end:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            if time.monotonic() >= end:
                break
            log(f"fault: {kind}", self.timeline)
            window = self.faults.run(kind)
            healthy_after = (window.healthy or 0) - (window.ended or 0)
            log(f"  done; healthy {healthy_after:.1f}s after it", self.timeline)
            self.done.append((at_s, kind))
        time.sleep(max(0.0, end - time.monotonic()))

    def finish(self) -> dict[str, Any]:
        log("traffic stops; waiting for the drain and the verifier", self.timeline)
        self.stop_traffic.set()
        stuck = _join(self.traffic_threads, JOIN_TIMEOUT_S)
        drained = self._wait_drained()
        assert self.verifier is not None
        assert self.verifier_thread is not None and self.sampler_thread is not None
        self.verifier.finish.set()
        if _join([self.verifier_thread], VERIFY_TIMEOUT_S):
            self.verifier.abandon.set()
            _join([self.verifier_thread], 10)
        final_status = self._status()
        self.sampler.stop.set()
        _join([self.sampler_thread], 10)
        exit_code = self.services.stop_daemon()
        log(f"daemon stopped with exit code {exit_code}", self.timeline)
        return self.summary(drained, final_status, exit_code, stuck)

    def _wait_drained(self) -> bool:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        with Client(self.services.socket_path, timeout_s=5) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(errors.MemorydError):
                    status = client.status()
                    if status["state"] == "healthy" and status["wal"]["backlog_records"] == 0:
                        return True
                time.sleep(0.2)
        return False

    def _status(self) -> dict[str, Any]:
        with Client(self.services.socket_path, timeout_s=10) as client:
            try:
                return client.status()
            except errors.MemorydError as exc:
                return {"error": str(exc)}

    # ----------------------------------------------------------------- results

    def summary(
        self, drained: bool, final_status: dict[str, Any], exit_code: int | None, stuck: list[str]
    ) -> dict[str, Any]:
        plan, timeline, observer = self.plan, self.timeline, self.observer
        samples = self.sampler.samples
        lifetimes = self.services.lifetimes
        leaks = {}
        for key, field, scale, unit, bound in (
            ("rss", "rss_bytes", float(1 << 20), "MiB", plan.rss_mib),
            ("fds", "fds", 1.0, "fds", plan.fds),
        ):
            groups = verdict.fitted_groups(
                samples, field, scale, lifetimes, timeline, plan.warmup_s
            )
            leaks[key] = verdict.growth_verdict(key, unit, verdict.pooled_slope(groups), bound)
        assert self.verifier is not None
        waiting = self.ledger.waiting()
        totals = self.ledger.totals
        count = {kind: sum(1 for _, k in self.done if k == kind) for kind in FAULT_KINDS}
        summary: dict[str, Any] = {
            "duration_s": plan.duration_s,
            "plan": dataclasses.asdict(plan),
            "calls": observer.calls_total(),
            "oracle": {
                "agents": totals["agents"],
                "verified": totals["verified"],
                "cleared": totals["cleared"],
                "acknowledged": totals["acknowledged"],
                "in_doubt": totals["in_doubt"],
                "in_doubt_stored": totals["in_doubt_stored"],
                "stored": totals["stored"],
                "lost": totals["lost"],
                "duplicated": totals["duplicated"],
                "unverified": [a.agent_id for a in waiting if not a.verified],
                "uncleared": [a.agent_id for a in waiting if a.verified],
                "late": self.verifier.late,
            },
            "errors": {
                "in_windows_total": sum(observer.errors_in_windows.values()),
                "in_windows": dict(observer.errors_in_windows.most_common()),
                "in_windows_by_fault": dict(observer.errors_in_windows_by_fault),
                "outside_windows_total": sum(observer.errors_outside.values()),
                "outside_windows": dict(observer.errors_outside.most_common()),
                "outside_details": observer.outside_details,
            },
            "problems": {
                "counts": dict(observer.problems),
                "details": observer.problem_details,
            },
            "latency": observer.latency_summary(),
            "leaks": leaks,
            "faults": {
                "count": count,
                "failures": self.faults.failures,
                "recovery_s": {
                    kind: {"max": max(v), "mean": round(sum(v) / len(v), 3)} if v else None
                    for kind, v in self.faults.recovery_s.items()
                },
                "windows": timeline.describe(),
            },
            "crashes": self.services.crashes + observer.crashes + [f"{n} stuck" for n in stuck],
            "daemon": {
                "lifetimes": [
                    {"pid": life.pid, "ready_s": timeline.offset_s(life.ready)}
                    for life in lifetimes
                ],
                "exit_code": exit_code,
                "drained": drained,
                "alerts": final_status.get("alerts", ["status unavailable"]),
                "final_status": final_status,
                "log_errors": self._log_problems(),
            },
            "samples": samples,
        }
        summary["reasons"] = verdict.reasons(summary)
        summary["passed"] = not summary["reasons"]
        return summary

    def _log_problems(self) -> list[str]:
        found: list[str] = []
        with (
            contextlib.suppress(OSError),
            self.services.daemon.log_path.open(errors="replace") as f,
        ):
            for line in f:
                if LOG_PROBLEM.search(line) and len(found) < KEPT_LOG_LINES:
                    found.append(line.rstrip()[:500])
        return found

    def write(self, summary: dict[str, Any]) -> None:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        (self.results_dir / "summary.json").write_text(summary_json(summary))
        chart.draw(summary, self.results_dir / "soak.png")
        for source, name in (
            (self.services.daemon.log_path, "daemon.log"),
            (self.services.redis.directory / "redis.log", "redis.log"),
        ):
            with contextlib.suppress(OSError):
                if source.stat().st_size <= LOG_COPY_MAX_BYTES:
                    shutil.copyfile(source, self.results_dir / name)


def summary_json(summary: dict[str, Any]) -> str:
    """``summary`` as JSON, indented, but one line per sample: a day has 17,280 of them."""
    head = {key: value for key, value in summary.items() if key != "samples"}
    lines = ",\n".join(json.dumps(sample, separators=(",", ":")) for sample in summary["samples"])
    return f'{json.dumps(head, indent=1)[:-2]},\n "samples": [\n{lines}\n ]\n}}\n'


def _join(threads: list[threading.Thread], timeout_s: float) -> list[str]:
    """Join ``threads`` within ``timeout_s`` in all; the names of those still running."""
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread.name for thread in threads if thread.is_alive()]


def soak(plan: Plan, results_dir: Path) -> dict[str, Any]:
    """Run the soak of ``plan``; its summary (``summary["passed"]``), also written to disk."""
    run = Run(plan, results_dir)
    try:
        run.start()
        log(
            f"soak: {plan.duration_s:.0f}s, {len(plan.schedule())} faults scheduled, "
            f"daemon {run.services.socket_path}, redis {run.services.redis.url}, "
            f"results in {results_dir}",
            run.timeline,
        )
        run.faults_on_schedule()
        summary = run.finish()
        run.write(summary)
        return summary
    finally:
        run.stop_traffic.set()
        run.sampler.stop.set()
        if run.verifier is not None:
            run.verifier.abandon.set()
        run.services.cleanup()
