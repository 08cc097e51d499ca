"""A tiny run of the benchmark suite, so that it never rots.  No timing assertions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import outage, report, run, scale, workload
from bench.scenarios import LATENCY_BACKENDS, SIZES, memoryd_specs


def test_session_script_has_the_tableround_mix() -> None:
    counts = workload.session_script(seed=1).counts()
    assert counts["add:personal"] == 48
    assert counts["add:speech"] == 42
    assert counts["newest"] == 30
    assert counts["context"] == 30


def test_records_are_deterministic_cjk_of_the_right_mix() -> None:
    records = workload.personal_records(7, "s0.craftsman_1", 2000)
    assert records == workload.personal_records(7, "s0.craftsman_1", 2000)
    summary = workload.size_summary(records)
    assert 0.2 < summary["share_by_type"]["keywords"] < 0.3
    assert summary["max_bytes"] <= workload.MAX_RECORD_BYTES + 64
    text = workload.text_of(next(r for r in records if r.type == "discussion"))
    assert len(text.encode()) > 2 * len(text)  # multi-byte CJK


def test_every_scenario_is_there() -> None:
    assert set(run.SCENARIOS) == {"latency", "ingest", "sessions", "scale", "outage", "topology"}
    for params in SIZES.values():
        levels = params.scale_levels
        assert list(levels) == sorted(levels) and len(levels) >= 2
        assert all(level % scale.RECORDS_PER_AGENT == 0 for level in levels)


def test_the_rss_goal_is_not_judged_below_10k_agents() -> None:
    level = {
        "agents": 100,
        "records": 10_000,
        "restarted_daemon_rss_after_every_agent_bytes": 10**9,
    }
    assert report._scale_rss_mb({"scale": {"levels": [level]}}) is None
    level |= {"agents": 10_000, "records": 1_000_000}
    assert report._scale_rss_mb({"scale": {"levels": [level]}}) == 1000.0


@pytest.mark.timeout(300)
def test_tiny_run_measures_every_backend_and_operation(tmp_path: Path) -> None:
    results, out = run.run(["--tiny", "--no-charts", "--out", str(tmp_path)])

    latency = results["latency"]["backends"]
    assert set(latency) == {spec.name for spec in LATENCY_BACKENDS}
    iterations = SIZES["tiny"].latency_iterations
    for name, data in latency.items():
        for op in workload.LATENCY_OPS:
            assert data["ops"][op]["count"] == iterations, (name, op)
        assert data["returned"]["newest"] == 5, name
        assert data["returned"]["context"] > 0, name

    ingest = results["ingest"]
    assert ingest["ceiling"]["records_per_s"] > 0
    expected = {f"{s.name} b{b}" for s in memoryd_specs() for b in SIZES["tiny"].ingest_batches}
    assert set(ingest["runs"]) == expected
    for run_result in ingest["runs"].values():
        assert run_result["stored_per_s"] > 0

    sessions = results["sessions"]["backends"]
    assert set(sessions) == {
        "legacy-files",
        "direct-redis",
        "memoryd-redis-always",
        "memoryd-redis-everysec",
        "memoryd-local-everysec",
    }
    for name, runs in sessions.items():
        for run_result in runs:
            # Long histories are kept: the meeting then clears only its own stream.
            script = workload.session_script(1, clear_agents=not run_result["history"])
            assert run_result["operations"] == len(script.ops) * run_result["parallel"], name
            assert run_result["per_op"]["add"]["count"] > 0, name

    check_scale(results["scale"])
    check_outage(results["outage"])
    check_topology(results["topology"])

    verdicts = {g["measure"]: g["verdict"] for g in results["goals"]}
    rss_goal = next(m for m in verdicts if m.startswith("daemon RSS"))
    assert verdicts.pop(rss_goal) == "n/a"  # the tiny run stops far below 10k agents
    assert set(verdicts.values()) <= {"pass", "miss"}, verdicts
    saved = json.loads((out / "results.json").read_text())
    assert saved["machine"]["cores_logical"] >= 1
    assert "TCP" in saved["transport"]["redis"]
    assert set(saved["latency"]["backends"]) == set(latency)
    markdown = (out / "results.md").read_text()
    for section in ("latency", "ingest", "sessions", "scale", "outage", "topology", "goals"):
        assert f"## {section}" in markdown, section


def check_topology(result: dict[str, Any]) -> None:
    runs = {(r["store"], r["daemons"]): r for r in result["runs"]}
    assert set(runs) == {(store, n) for store in ("standalone", "cluster") for n in (1, 3)}
    script = workload.session_script(1, clear_agents=True)
    for (store, daemons), run_result in runs.items():
        parallel = max(SIZES["tiny"].session_parallel)
        assert run_result["operations"] == len(script.ops) * parallel, store
        assert len(run_result["read_cache"]) == daemons
        assert run_result["daemon_cpu_s"] > 0


def check_scale(result: dict[str, Any]) -> None:
    params = SIZES["tiny"]
    levels = result["levels"]
    assert [level["records"] for level in levels] == list(params.scale_levels)
    ingested = [level["ingested"] for level in levels]
    assert sum(ingested) == params.scale_levels[-1]  # each level ingests the difference
    for level in levels:
        assert level["agents"] * scale.RECORDS_PER_AGENT == level["records"]
        assert level["newest"]["count"] == params.scale_reads
        assert level["newest"]["short_answers"] == 0
        assert level["redis"]["used_memory"] > result["empty"]["used_memory"]
        assert level["memory_per_record_bytes"] > 0
        assert level["payload"]["sampled_records"] > 0 and level["payload"]["mean_bytes"] > 0
        assert level["daemon_rss_bytes"] > 0
    assert levels[-1]["daemon_rss_after_every_agent_bytes"] > 0
    assert levels[-1]["restarted_daemon_rss_after_every_agent_bytes"] > 0
    assert levels[-1]["restarted_daemon_read_cache"]["records"] > 0


def check_outage(result: dict[str, Any]) -> None:
    params = SIZES["tiny"]
    assert set(result["runs"]) == {f"memoryd-{config.label}" for config in outage.CONFIGS}
    for name, run_result in result["runs"].items():
        assert run_result["add_up"]["count"] == params.outage_adds, name
        assert run_result["add_down"]["count"] == params.outage_adds, name
        assert run_result["state_before_restart"] == "degraded", name
        drain = run_result["drain"]
        assert drain["backlog_at_restart"] >= params.outage_backlog, name
        assert drain["drained_s"] is not None and drain["noticed_s"] is not None, name
        assert drain["states"][-1] == "healthy", name
        # Correctness, not timing: what was written while Redis was down is there.
        for check in run_result["correctness"].values():
            if isinstance(check, dict):
                assert check["checked"] > 0 and check["found"] == check["checked"], (name, check)
