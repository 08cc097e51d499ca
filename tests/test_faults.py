"""Fault injection end to end: no acknowledged write is ever lost, none is applied twice.

Real processes only: a redis-server of each test's own (never the machine's
Redis, never a fake), the daemon as ``python -m memoryd run``, the real
client.  Writer threads add records with ids they choose and content derived
from the id (``tests.oracle``); faults are injected while they write; at the
end the oracle reads Redis directly and checks that every acknowledged id is
there exactly once and intact, that nothing else is, and that every index
and count agrees with the records.

The random choices (moments of the kills, fsync policies) come from one seed,
printed in every failure message; ``MEMORYD_FAULT_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from memoryd_client import Client
from tests.harness import Daemon, RedisServer
from tests.oracle import (
    Ledger,
    Writers,
    check_redis,
    content_for,
    poll,
    type_for,
    wait_drained,
)

AGENTS = ("craftsman_1", "consumer_2", "designer_3", "meeting:m1")
# Room for everything the writers add: trimming would remove acknowledged records.
NO_TRIM = "10000000"

KILL_ITERATIONS = 20
FSYNC_POLICIES = ("always", "everysec", "no")
# The kill falls at a uniformly random moment of this window, which opens
# once the writers are being acknowledged by the restarted daemon.
KILL_WINDOW_S = 0.5
# A behaviour bound, not a benchmark: an ack never waits for a hung store.
MAX_ACK_LATENCY_S = 5.0


def fault_seed() -> int:
    return int(os.environ.get("MEMORYD_FAULT_SEED") or random.SystemRandom().randrange(2**32))


@pytest.fixture
def redis_servers() -> Iterator[list[RedisServer]]:
    """Redis servers a test starts itself (with its own arguments); all cleaned up."""
    servers: list[RedisServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            if server.process is not None and server.process.poll() is None:
                server.process.send_signal(signal.SIGCONT)  # a frozen one cannot die
            server.cleanup()


def start_redis(servers: list[RedisServer], *args: str) -> RedisServer:
    server = RedisServer()
    servers.append(server)
    return server.start(*args)


def connect(server: RedisServer, timeout_s: float = 10.0) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(server.socket_path), socket_timeout=timeout_s)


def redis_env(server: RedisServer, **extra: str) -> dict[str, str]:
    return {
        "MEMORYD_REDIS_URL": server.url,
        "MEMORYD_MAX_MEMORIES": NO_TRIM,
        "MEMORYD_LOG_LEVEL": "INFO",
        **extra,
    }


def assert_store_matches(
    server: RedisServer, daemon: Daemon, ledger: Ledger, context: str
) -> dict[str, int]:
    """Drained, the oracle finds nothing wrong, the daemon's stats agree; the counts."""
    with Client(daemon.socket_path, timeout_s=20) as client:
        wait_drained(client)
        with connect(server) as conn:
            problems = check_redis(conn, ledger)
            assert not problems, f"{context}\n" + "\n".join(problems) + f"\n{ledger.summary()}"
            listed = {
                agent: [i.decode() for i in conn.zrange(list_key(agent), 0, -1)] for agent in AGENTS
            }
        for agent, ids in listed.items():
            # What the daemon reports is what Redis holds, per type too.
            stats = client.stats(agent)
            by_type = dict(Counter(type_for(i) for i in ids))
            assert (stats["count"], stats["by_type"]) == (len(ids), by_type), (
                f"{context}: {agent}: stats {stats}, ZCARD {len(ids)}, types {by_type}"
            )
    return {agent: len(ids) for agent, ids in listed.items()}


def assert_alive(server: RedisServer, daemon: Daemon, context: str) -> None:
    """A fresh write is acknowledged, applied and read back."""
    fresh = f"fresh{random.randrange(10**9)}"
    with Client(daemon.socket_path, timeout_s=20) as client:
        client.add("liveness", "note", content_for(fresh), id=fresh, durability="store")
        assert client.get("liveness", fresh)["content"] == content_for(fresh), context
    with connect(server) as conn:
        assert conn.exists(f"agent:{{liveness}}:memory:{fresh}") == 1, context


# --------------------------------------------------------------------- kill -9


def test_kill_9_under_concurrent_writers_loses_no_acknowledged_write(
    redis_servers: list[RedisServer], daemon_dir: Daemon
) -> None:
    seed = fault_seed()
    rng = random.Random(seed)
    context = f"seed {seed} (MEMORYD_FAULT_SEED={seed} replays it)"
    server = start_redis(redis_servers)
    daemon = daemon_dir
    env = redis_env(
        server,
        # Small segments and frequent checkpoints: kills land on segment
        # rolls, checkpoint renames and segment deletions too.
        MEMORYD_WAL_SEGMENT_BYTES=str(64 * 1024),
        MEMORYD_CHECKPOINT_INTERVAL_S="0.2",
        # Twenty-one starts: every bit of CPU the daemon does not spend helps.
        MEMORYD_LOG_LEVEL="WARNING",
    )
    ledger = Ledger()
    killed_mid_write = 0
    policies: Counter[str] = Counter()
    max_segments = 0
    started = time.monotonic()

    with Writers(daemon.socket_path, ledger, AGENTS, seed=seed, threads=3, timeout_s=5):
        for iteration in range(KILL_ITERATIONS + 1):
            policy = FSYNC_POLICIES[iteration % len(FSYNC_POLICIES)]
            daemon.env_overrides = {**env, "MEMORYD_WAL_FSYNC": policy}
            daemon.start()
            with Client(daemon.socket_path, timeout_s=10) as client:
                wal = client.status()["wal"]
            # kill -9 never tears a write the kernel accepted: nothing to repair.
            damage = {k: wal[k] for k in ("corrupt_records", "quarantined_segments")}
            assert damage == {"corrupt_records": 0, "quarantined_segments": 0}, (
                f"{context}, iteration {iteration}: {wal}"
            )
            assert wal["fsync"] == policy, f"{context}: {wal}"
            max_segments = max(max_segments, wal["segments"])
            policies[policy] += 1
            assert ledger.wait_more_acks(5, 20), (
                f"{context}, iteration {iteration}: writers not acknowledged after the "
                f"restart; {ledger.summary()}\n{daemon.log()[-3000:]}"
            )
            if iteration == KILL_ITERATIONS:
                break  # the last start stays up for the checks
            time.sleep(rng.uniform(0.0, KILL_WINDOW_S))
            lost_before = ledger.error_count("ConnectionLost")
            daemon.kill()
            # A writer with a request in flight sees its connection break.
            if ledger.wait_errors_above("ConnectionLost", lost_before, 1.0):
                killed_mid_write += 1

    assert not ledger.unexpected, f"{context}: {ledger.unexpected[:5]}"
    assert killed_mid_write >= KILL_ITERATIONS // 2, (
        f"{context}: only {killed_mid_write} of {KILL_ITERATIONS} kills hit a write in flight"
    )
    assert len(policies) == len(FSYNC_POLICIES), f"{context}: {policies}"
    assert ledger.in_doubt, f"{context}: no write was ever cut off by a kill"
    counts = assert_store_matches(server, daemon, ledger, context)
    assert_alive(server, daemon, context)
    stored = stored_ids(server)
    in_doubt_stored = sum(1 for i in ledger.in_doubt - ledger.acked.keys() if i in stored)
    print(
        f"\nkill -9: {context}, {KILL_ITERATIONS} kills ({killed_mid_write} mid-write), "
        f"policies {dict(policies)}, {ledger.summary()}, stored {sum(counts.values())}, "
        f"in-doubt writes that were stored anyway {in_doubt_stored}, "
        f"max WAL segments {max_segments}, {time.monotonic() - started:.1f}s"
    )


def stored_ids(server: RedisServer) -> set[str]:
    with connect(server) as conn:
        return {i.decode() for agent in AGENTS for i in conn.zrange(list_key(agent), 0, -1)}


def list_key(agent_id: str) -> str:
    return f"agent:{{{agent_id}}}:memories:list"


# --------------------------------------------------------------------- Redis killed


def test_redis_killed_and_restarted_mid_load_loses_nothing(
    redis_servers: list[RedisServer], daemon_dir: Daemon
) -> None:
    seed = fault_seed()
    context = f"seed {seed}"
    persistent = ("--appendonly", "yes", "--appendfsync", "always")
    server = start_redis(redis_servers, *persistent)
    daemon_dir.env_overrides = redis_env(server)
    daemon = daemon_dir.start()
    ledger = Ledger()

    with (
        Writers(daemon.socket_path, ledger, AGENTS, seed=seed, threads=3, timeout_s=10),
        Client(daemon.socket_path, timeout_s=10) as watcher,
    ):
        assert ledger.wait_more_acks(50, 10), ledger.summary()
        server.kill()
        down_from = time.monotonic()
        assert poll(lambda: watcher.status()["state"] == "degraded", 10), (
            f"{context}: the daemon never reported degraded: {watcher.status()}"
        )
        # More than the 200 asserted below: a write sent before the kill may be
        # acknowledged after it, and is counted here but not there.
        assert ledger.wait_more_acks(250, 15), ledger.summary()
        recent = watcher.recent(AGENTS[0], limit=5)
        assert recent.degraded, f"{context}: a read while Redis is down: {recent}"
        up_from = time.monotonic()
        server.start(*persistent)  # same directory, same socket, same AOF
        buffered_up_to = watcher.status()["wal"]["written_seq"]
        # While the writers go on: the outage's backlog is applied, then the
        # state is healthy again (a backlog of the latest writes is normal
        # operation, not a recovery).
        assert poll(lambda: watcher.status()["wal"]["applied_seq"] >= buffered_up_to, 20), (
            f"{context}: the writes buffered during the outage were not applied: {watcher.status()}"
        )
        # Checked last, so that the oracle below runs whatever the answer.
        healthy_again = poll(lambda: watcher.status()["state"] == "healthy", 5)
        status_then = watcher.status()
        assert ledger.wait_more_acks(50, 10), ledger.summary()

    during_outage = ledger.acked_between(down_from, up_from)
    assert during_outage >= 200, f"{context}: {during_outage} acks while Redis was down"
    assert not ledger.errors, f"{context}: writers failed: {ledger.summary()}"
    assert ledger.max_latency_s < MAX_ACK_LATENCY_S, ledger.summary()
    assert_store_matches(server, daemon, ledger, context)
    assert_alive(server, daemon, context)
    assert healthy_again, (
        f"{context}: still not healthy 5s after every write buffered during the outage "
        f"(up to seq {buffered_up_to}) was applied, with the writers going on: {status_then}"
    )


# --------------------------------------------------------------------- Redis frozen


def test_redis_frozen_by_sigstop_keeps_acks_fast_and_loses_nothing(
    redis_servers: list[RedisServer], daemon_dir: Daemon
) -> None:
    seed = fault_seed()
    context = f"seed {seed}"
    server = start_redis(redis_servers)
    assert server.process is not None
    daemon_dir.env_overrides = redis_env(server)
    daemon = daemon_dir.start()
    ledger = Ledger()

    with (
        Writers(daemon.socket_path, ledger, AGENTS, seed=seed, threads=3, timeout_s=20),
        Client(daemon.socket_path, timeout_s=20) as reader,
    ):
        assert ledger.wait_more_acks(50, 10), ledger.summary()
        server.process.send_signal(signal.SIGSTOP)  # a hang, not a refusal
        frozen_from = time.monotonic()
        try:
            degraded_read = poll(lambda: reader.recent(AGENTS[0], limit=5).degraded, 15)
            assert degraded_read, f"{context}: reads never said degraded: {reader.status()}"
            assert reader.status()["state"] == "degraded", context
            assert ledger.wait_more_acks(200, 15), ledger.summary()
            # Read-your-writes from the backlog alone.
            newest = reader.recent(AGENTS[1], limit=1000)
            assert newest.degraded and all(r["id"] in ledger.issued for r in newest), context
        finally:
            thawed_at = time.monotonic()
            server.process.send_signal(signal.SIGCONT)
        assert ledger.wait_more_acks(50, 10), ledger.summary()

    during_freeze = ledger.acked_between(frozen_from, thawed_at)
    assert during_freeze >= 200, f"{context}: {during_freeze} acks while Redis was frozen"
    assert not ledger.errors, f"{context}: writers failed: {ledger.summary()}"
    assert ledger.max_latency_s < MAX_ACK_LATENCY_S, f"{context}: {ledger.summary()}"
    assert_store_matches(server, daemon, ledger, context)
    assert_alive(server, daemon, context)


# --------------------------------------------------------------------- DEBUG SLEEP


def test_a_redis_slower_than_the_socket_timeout_applies_every_write_once(
    redis_servers: list[RedisServer], daemon_dir: Daemon
) -> None:
    """redis-py times out, reconnects and sends the batch again while Redis still
    holds the first copy in its input buffer: both run, one effect."""
    seed = fault_seed()
    context = f"seed {seed}"
    server = start_redis(redis_servers, "--enable-debug-command", "yes")
    daemon_dir.env_overrides = redis_env(server, MEMORYD_REDIS_SOCKET_TIMEOUT_S="0.3")
    daemon = daemon_dir.start()
    ledger = Ledger()
    sleeps: list[float] = []

    def debug_sleep() -> None:
        with connect(server) as conn:
            started = time.monotonic()
            conn.execute_command("DEBUG", "SLEEP", "1.5")
            sleeps.append(time.monotonic() - started)

    with Writers(daemon.socket_path, ledger, AGENTS, seed=seed, threads=3, timeout_s=10):
        for _ in range(2):
            assert ledger.wait_more_acks(100, 10), ledger.summary()
            sleeper = threading.Thread(target=debug_sleep)
            sleeper.start()
            sleeper.join(10)
            assert not sleeper.is_alive(), "DEBUG SLEEP did not return"
        assert ledger.wait_more_acks(100, 10), ledger.summary()

    assert len(sleeps) == 2 and min(sleeps) >= 1.4, f"DEBUG SLEEP did not sleep: {sleeps}"
    # The daemon did run into the timeout (else nothing was retried).
    assert "store unreachable" in daemon.log(), daemon.log()[-3000:]
    assert not ledger.errors, f"{context}: writers failed: {ledger.summary()}"
    counts = assert_store_matches(server, daemon, ledger, context)
    assert sum(counts.values()) == len(ledger.acked), f"{context}: {counts}"
    assert_alive(server, daemon, context)


# --------------------------------------------------------------------- LOADING


def test_a_redis_still_loading_its_dataset_is_not_ready(
    redis_servers: list[RedisServer], daemon_dir: Daemon
) -> None:
    """Redis answers -LOADING for a while after a restart; the daemon must stay
    degraded (buffering) until it is done, then apply everything once."""
    seed = fault_seed()
    context = f"seed {seed}"
    server = start_redis(redis_servers, "--enable-debug-command", "yes")
    daemon_dir.env_overrides = redis_env(server)
    daemon = daemon_dir.start()
    ledger = Ledger()
    # Two milliseconds per key while loading the RDB: ~3 s of LOADING.
    slow_load = ("--key-load-delay", "2000", "--loading-process-events-interval-bytes", "1024")

    with (
        Writers(
            daemon.socket_path, ledger, AGENTS, seed=seed, threads=2, timeout_s=10, pause_s=0.002
        ),
        Client(daemon.socket_path, timeout_s=10) as watcher,
    ):
        assert ledger.wait_more_acks(200, 10), ledger.summary()
        with connect(server) as conn:
            conn.execute_command("DEBUG", "POPULATE", "1500", "filler")
            # Everything applied so far and the filler go to dump.rdb, atomically.
            conn.shutdown(save=True)
        assert server.process is not None
        server.process.wait(10)
        server.kill()  # forget the process, remove the socket file
        assert poll(lambda: watcher.status()["state"] == "degraded", 10), watcher.status()
        server.start(*slow_load)
        samples = loading_samples(server, daemon, watcher)
        assert samples.count("degraded") >= 3, f"{context}: Redis was hardly loading: {samples}"
        not_ready = [s for s in samples if s not in ("degraded", "announced degraded")]
        assert not not_ready, f"{context}: states while Redis was LOADING: {samples}"
        assert ledger.wait_more_acks(50, 10), ledger.summary()

    assert not ledger.errors, f"{context}: writers failed: {ledger.summary()}"
    assert_store_matches(server, daemon, ledger, context)
    with connect(server) as conn:
        assert conn.exists("filler:0", "filler:1499") == 2, "the dataset did not load"
    assert_alive(server, daemon, context)


def loading_samples(server: RedisServer, daemon: Daemon, watcher: Client) -> list[str]:
    """The daemon's states while Redis says it is loading: sampled from status, and
    every state change the daemon announced (STATUS=) in that time.

    A sample counts only if Redis said "loading" both before and after it: the
    loading is one interval, so the sample was taken inside it.
    """
    assert daemon.notify is not None
    seen = len(daemon.notify.poll())
    samples: list[str] = []
    with connect(server, timeout_s=2) as conn:

        def loading() -> bool:
            return bool(conn.info("persistence")["loading"] == 1)

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and loading():
            state = watcher.status()["state"]
            messages = daemon.notify.poll()
            if not loading():
                break
            samples.append(state)
            for message in messages[seen:]:
                for line in message.splitlines():
                    if line.startswith("STATUS="):
                        samples.append("announced " + line.removeprefix("STATUS=").split(";")[0])
            seen = len(messages)
            time.sleep(0.05)
    return samples
