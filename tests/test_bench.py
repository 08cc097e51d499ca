"""A tiny run of the benchmark suite, so that it never rots.  No timing assertions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run, workload
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


def test_todo_scenarios_say_so(tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match="scale"):
        run.run(["--tiny", "--scenario", "scale", "--no-charts", "--out", str(tmp_path)])


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
    per_session = len(workload.session_script(1).ops)
    for name, runs in sessions.items():
        for run_result in runs:
            assert run_result["operations"] == per_session * run_result["parallel"], name
            assert run_result["per_op"]["add"]["count"] > 0, name

    assert {g["verdict"] for g in results["goals"]} <= {"pass", "miss"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["machine"]["cores_logical"] >= 1
    assert set(saved["latency"]["backends"]) == set(latency)
    markdown = (out / "results.md").read_text()
    assert "## latency" in markdown and "## ingest" in markdown and "## goals" in markdown
    assert "## sessions" in markdown
