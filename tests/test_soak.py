"""The soak (``make soak``): a 60-second run in CI, and the checks that make a run fail.

The 60-second run has every fault at least once (``plan_for(60)``: a fault every
6 s, the daemon kill at 30 s).  The other tests show that each pass criterion
can fail: the leak fit, the window rule for errors, and the oracle against a
real Redis whose data is damaged behind the daemon's back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from memoryd_client import Client, errors
from tests.harness import Daemon, RedisServer
from tests.soak import oracle, verdict
from tests.soak.observed import Failed, Observer
from tests.soak.plan import FAULT_KINDS, GrowthBound, parse_duration_s, plan_for
from tests.soak.run import soak
from tests.soak.services import REDIS_ARGS
from tests.soak.timeline import Timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(240)
def test_a_60_second_soak_passes_and_writes_its_figures(tmp_path: Path) -> None:
    summary = soak(plan_for(60), tmp_path)

    assert summary["passed"], summary["reasons"]
    assert all(summary["faults"]["count"][kind] >= 1 for kind in FAULT_KINDS), summary["faults"]
    assert summary["oracle"]["verified"] > 20
    assert summary["oracle"]["acknowledged"] > 500
    assert summary["oracle"]["lost"] == summary["oracle"]["duplicated"] == 0
    assert summary["calls"] > 2000
    for method in ("add", "async add_many", "recent", "adapter.add_memory", "memory.add_memory"):
        assert summary["latency"][method]["count"] > 0, method
    assert summary["leaks"]["rss"]["points"] >= 6 and summary["leaks"]["fds"]["points"] >= 6

    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["passed"] is True
    samples = written["samples"]
    assert len(samples) >= 40  # one a second
    healthy = [s for s in samples if s.get("state") == "healthy"]
    assert len(healthy) >= 20
    for sample in healthy:
        assert sample["rss_bytes"] > 10 << 20 and sample["fds"] > 5, sample
        assert sample["wal_bytes"] > 0 and sample["backlog_records"] >= 0, sample
    assert any(sample["latency"].get("add", {}).get("count") for sample in samples)
    assert len({s["pid"] for s in samples if s.get("pid")}) == 2  # the kill -9 made a second
    chart = tmp_path / "soak.png"
    assert chart.read_bytes()[:8] == PNG_MAGIC and chart.stat().st_size > 20_000


# --------------------------------------------------------------------- the plan


def test_durations_parse_and_bad_ones_name_the_problem() -> None:
    assert parse_duration_s("60s") == 60
    assert parse_duration_s("90m") == 5400
    assert parse_duration_s("2h") == 7200
    assert parse_duration_s("1h30m") == 5400
    assert parse_duration_s("45") == 45
    for bad in ("", "0s", "2 days", "h", "-5m", "10x"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration_s(bad)


def test_a_day_has_hundreds_of_each_fault_and_a_minute_every_kind() -> None:
    day = plan_for(24 * 3600).schedule()
    kinds = [kind for _, kind in day]
    assert kinds.count("daemon_kill") == 47  # every 30 min, none in the last minute
    assert all(kinds.count(kind) >= 150 for kind in FAULT_KINDS if kind != "daemon_kill")
    minute = plan_for(60).schedule()
    assert {kind for _, kind in minute} == set(FAULT_KINDS)
    assert all(at_s <= 57 for at_s, _ in minute)


# --------------------------------------------------------------------- leaks


def test_the_pooled_slope_ignores_the_drop_of_a_restart_and_finds_a_leak() -> None:
    # Two lifetimes, each flat at its own level: a restart is not a slope.
    flat = [[(t, 50.0) for t in range(0, 600, 5)], [(t, 70.0) for t in range(600, 1200, 5)]]
    assert verdict.pooled_slope(flat).slope_per_h == pytest.approx(0.0)
    # The same lifetimes growing 1 MiB a minute each: 60 MiB/h, whatever the drop between.
    leaking = [
        [(t, 50 + t / 60) for t in range(0, 600, 5)],
        [(t, 40 + (t - 600) / 60) for t in range(600, 1200, 5)],
    ]
    fit = verdict.pooled_slope(leaking)
    assert fit.slope_per_h == pytest.approx(60.0)
    assert fit.span_h == pytest.approx(2 * 595 / 3600)
    bound = GrowthBound(per_hour=4.0, allowance=5.0)
    assert not verdict.growth_verdict("rss", "MiB", fit, bound)["passed"]
    assert verdict.growth_verdict("rss", "MiB", verdict.pooled_slope(flat), bound)["passed"]


def test_a_growth_bound_is_the_allowance_in_short_runs_and_the_slope_in_long_ones() -> None:
    bound = GrowthBound(per_hour=4.0, allowance=32.0)
    assert bound.limit(0.01) == 32.0
    assert bound.limit(24.0) == 96.0


def test_no_points_to_fit_is_a_failure_not_a_pass() -> None:
    fit = verdict.pooled_slope([[(0.0, 1.0), (1.0, 2.0)]])  # too few points
    assert fit.slope_per_h is None
    assert not verdict.growth_verdict("fds", "fds", fit, GrowthBound(2.0, 40.0))["passed"]


# --------------------------------------------------------------------- windows and errors


def test_an_error_outside_every_fault_window_is_counted_against_the_run() -> None:
    timeline = Timeline(grace_s=5.0)
    observer = Observer(timeline)
    window = timeline.open("redis_restart")
    window.ended = window.started + 2
    window.healthy = window.started + 3  # closes at +8

    def fail() -> None:
        raise errors.BackendUnavailable("store down")

    assert isinstance(observer.call("stats", fail), Failed)  # during the fault
    window.started -= 100  # the same fault, long ago: the window closed at -92
    window.ended -= 100
    window.healthy -= 100
    assert isinstance(observer.call("stats", fail), Failed)
    assert observer.errors_in_windows == {"stats: BackendUnavailable": 1}
    assert observer.errors_outside == {"stats: BackendUnavailable": 1}
    assert observer.outside_details[0]["error"] == "BackendUnavailable"


def test_a_call_that_started_before_a_fault_and_failed_in_it_is_the_faults() -> None:
    timeline = Timeline(grace_s=5.0)
    started = time.monotonic() - 3
    window = timeline.open("daemon_kill")
    assert timeline.covering(started, time.monotonic()) is window  # still open
    window.ended = window.healthy = window.started + 1
    assert timeline.covering(started, started + 1) is None  # over before the fault
    assert timeline.covering(window.started + 5.5, window.started + 6) is window  # in the grace
    assert timeline.covering(window.started + 6.5, window.started + 7) is None


def test_expected_answers_like_not_found_are_not_errors() -> None:
    observer = Observer(Timeline(grace_s=5.0))

    def gone() -> None:
        raise errors.NotFound("trimmed")

    outcome = observer.call("get", gone, expected=(errors.NotFound,))
    assert isinstance(outcome, Failed) and isinstance(outcome.error, errors.NotFound)
    assert not observer.errors_outside and not observer.errors_in_windows
    assert observer.latency_summary()["get"]["count"] == 1


# --------------------------------------------------------------------- the oracle


@pytest.fixture
def oracle_agent() -> Iterator[tuple[Client, redis.Redis, oracle.OracleAgent]]:
    """An oracle agent of 10 records, written through a daemon on a Redis of its own."""
    server = RedisServer().start(*REDIS_ARGS)
    daemon = Daemon(env_overrides={"MEMORYD_REDIS_URL": server.url})
    try:
        daemon.start()
        agent = oracle.OracleAgent("soak-oracle-test")
        with (
            Client(daemon.socket_path) as client,
            redis.Redis(unix_socket_path=str(server.socket_path)) as conn,
        ):
            records = oracle._new_records(agent.agent_id, [f"r{i}" for i in range(10)], 3600)
            agent.issued = agent.acked = {f"r{i}" for i in range(10)}
            assert client.add_many(records) == [f"r{i}" for i in range(10)]
            yield client, conn, agent
    finally:
        daemon.cleanup()
        server.cleanup()


def _problems(client: Client, conn: redis.Redis, agent: oracle.OracleAgent) -> dict[str, list[str]]:
    stats = client.stats(agent.agent_id)  # waits until the agent's writes are applied
    answer = [r["id"] for r in client.recent(agent.agent_id, limit=1000)]
    return oracle.compare(agent, oracle.read_stored(conn, agent.agent_id), stats["count"], answer)


def test_the_oracle_finds_nothing_wrong_with_what_the_daemon_stored(
    oracle_agent: tuple[Client, redis.Redis, oracle.OracleAgent],
) -> None:
    client, conn, agent = oracle_agent
    assert _problems(client, conn, agent) == {}
    assert client.clear(agent.agent_id) == 10
    assert client.stats(agent.agent_id)["count"] == 0
    assert oracle.keys_left(conn, agent) == []


def test_the_oracle_reports_a_record_removed_behind_the_daemons_back_as_lost(
    oracle_agent: tuple[Client, redis.Redis, oracle.OracleAgent],
) -> None:
    client, conn, agent = oracle_agent
    client.stats(agent.agent_id)
    keys = oracle.KEYSPACE.agent(agent.agent_id)
    conn.zrem(keys.list, "r3")
    conn.delete(keys.memory("r3"))
    problems = _problems(client, conn, agent)
    assert "acknowledged write lost" in problems, problems
    assert "1 ids ['r3']" in problems["acknowledged write lost"][0]


def test_the_oracle_reports_a_count_above_the_ids_stored_as_a_duplicate(
    oracle_agent: tuple[Client, redis.Redis, oracle.OracleAgent],
) -> None:
    client, conn, agent = oracle_agent
    client.stats(agent.agent_id)
    conn.hincrby(oracle.KEYSPACE.agent(agent.agent_id).stats, "count", 1)
    problems = _problems(client, conn, agent)
    assert any("11 > 10" in detail for detail in problems["duplicated write"]), problems


def test_the_oracle_reports_damaged_content_and_ids_nobody_wrote(
    oracle_agent: tuple[Client, redis.Redis, oracle.OracleAgent],
) -> None:
    client, conn, agent = oracle_agent
    client.stats(agent.agent_id)
    keys = oracle.KEYSPACE.agent(agent.agent_id)
    conn.hset(keys.memory("r5"), "data", b"\xc1 not msgpack")
    agent.issued = agent.acked = agent.issued - {"r7"}
    problems = _problems(client, conn, agent)
    assert "r5: undecodable data" in " ".join(problems["damaged record"]), problems
    assert "['r7']" in problems["id nobody wrote"][0]


def test_a_failing_run_lists_its_reasons() -> None:
    summary = {
        "oracle": {
            "lost": 2,
            "duplicated": 0,
            "unverified": [],
            "uncleared": [],
            "late": [],
            "verified": 5,
        },
        "problems": {"counts": {"answer out of order": 1}},
        "errors": {"outside_windows_total": 1, "outside_windows": {"add: MemorydTimeoutError": 1}},
        "leaks": {},
        "crashes": [],
        "faults": {"failures": [], "count": dict.fromkeys(FAULT_KINDS, 1)},
        "daemon": {"exit_code": 0, "alerts": [], "drained": True, "log_errors": []},
        "samples": [{}] * 10,
    }
    found = verdict.reasons(summary)
    assert found == [
        "oracle: 2 acknowledged writes lost",
        "1 x answer out of order",
        "1 errors reached agents outside fault windows: {'add: MemorydTimeoutError': 1}",
    ]
