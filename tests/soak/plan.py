"""What one soak run does: its length, its fault schedule, its daemon settings, its bounds.

Everything a run depends on is a field of ``Plan``, written into
``summary.json``, so a result can be read without the command line that made it.
``plan_for`` scales the fault schedule to the duration: a 60-second run is a
compressed version of a day (every fault at least once), a day has hundreds of
each.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

# The faults, by name.  A daemon kill takes its turn every ``kill_every_s``; the
# others rotate in this order in between.
REDIS_RESTART = "redis_restart"
REDIS_FREEZE = "redis_freeze"
SIGHUP = "sighup"
DAEMON_KILL = "daemon_kill"
CONNECTION_BURST = "connection_burst"
ROTATION = (SIGHUP, CONNECTION_BURST, REDIS_FREEZE, REDIS_RESTART)
FAULT_KINDS = (*ROTATION, DAEMON_KILL)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration_s(text: str) -> float:
    """``"2h"``, ``"90m"``, ``"60s"``, ``"1h30m"`` or plain seconds, in seconds."""
    spec = text.strip().lower()
    position, total_s = 0, 0.0
    while position < len(spec):
        match = _DURATION_PART.match(spec, position)
        if match is None or match.end() == position:
            break
        total_s += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    if not spec or position != len(spec) or total_s <= 0:
        raise ValueError(f"duration {text!r}: expected e.g. 60s, 90m, 2h or 1h30m, above zero")
    return total_s


@dataclass(frozen=True, slots=True)
class GrowthBound:
    """How much a daemon gauge may grow: the fitted slope times the fitted span must stay
    below ``max(allowance, per_hour * span_h)``.

    ``per_hour`` is the bound that matters in long runs; ``allowance`` absorbs the
    steps a short run cannot average out (a pool that fills, an allocator arena).
    """

    per_hour: float
    allowance: float

    def limit(self, span_h: float) -> float:
        return max(self.allowance, self.per_hour * span_h)


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """The daemon's settings in a soak: caps and TTLs small, so trimming and expiry never stop."""

    max_memories: int = 50
    default_ttl_s: int = 20
    sweep_interval_s: float = 1.0
    redis_socket_timeout_s: float = 1.0
    wal_segment_bytes: int = 1 << 20
    # SIGHUP switches between these two values of each (the config file is rewritten).
    read_cache_records: tuple[int, int] = (2000, 1000)
    flush_batch_max: tuple[int, int] = (512, 128)

    def environment(self, redis_url: str) -> dict[str, str]:
        return {
            "MEMORYD_REDIS_URL": redis_url,
            "MEMORYD_MAX_MEMORIES": str(self.max_memories),
            "MEMORYD_DEFAULT_TTL_S": str(self.default_ttl_s),
            "MEMORYD_SWEEP_INTERVAL_S": str(self.sweep_interval_s),
            "MEMORYD_REDIS_SOCKET_TIMEOUT_S": str(self.redis_socket_timeout_s),
            "MEMORYD_WAL_SEGMENT_BYTES": str(self.wal_segment_bytes),
            "MEMORYD_LOG_LEVEL": "INFO",
        }

    def config_file(self, variant: int) -> str:
        """The TOML the daemon reads at start (variant 0) and at each SIGHUP (0, 1, 0, ...)."""
        return (
            f"read_cache_records = {self.read_cache_records[variant % 2]}\n"
            f"flush_batch_max = {self.flush_batch_max[variant % 2]}\n"
        )


@dataclass(frozen=True, slots=True)
class Load:
    """The traffic: how many of each kind of client, and their pace."""

    meetings: int = 3
    meeting_turns: int = 8
    meeting_pause_s: float = 0.08
    legacy_agents: int = 1
    oracle_writers: int = 2
    oracle_async_tasks: int = 2
    oracle_records_per_agent: int = 40  # below max_memories: nothing the oracle writes is trimmed
    oracle_ttl_s: float = 3600.0  # far beyond the verification delay: nothing it checks expires
    oracle_pause_s: float = 0.05
    noise_agents: int = 8
    noise_tasks: int = 3
    noise_pause_s: float = 0.04
    reader_pause_s: float = 0.03


@dataclass(frozen=True, slots=True)
class Plan:
    duration_s: float
    fault_every_s: float
    kill_every_s: float
    freeze_s: float
    redis_down_s: float
    burst_connections: int
    burst_rounds: int
    grace_s: float
    warmup_s: float
    sample_every_s: float
    recovery_timeout_s: float
    oracle_max_delay_s: float
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    load: Load = field(default_factory=Load)
    rss_mib: GrowthBound = field(default_factory=lambda: GrowthBound(4.0, 48.0))
    fds: GrowthBound = field(default_factory=lambda: GrowthBound(2.0, 40.0))

    def schedule(self) -> list[tuple[float, str]]:
        """(offset in seconds, fault) of every fault, in order.

        One fault every ``fault_every_s``; a daemon kill whenever ``kill_every_s``
        has passed since the last, otherwise the next of ``ROTATION``.  No fault in the
        last half interval, so the run ends on a settled daemon.
        """
        rotation = itertools.cycle(ROTATION)
        slots: list[tuple[float, str]] = []
        next_kill_s = self.kill_every_s
        at_s = self.fault_every_s
        while at_s <= self.duration_s - self.fault_every_s / 2:
            if at_s >= next_kill_s:
                slots.append((at_s, DAEMON_KILL))
                next_kill_s += self.kill_every_s
            else:
                slots.append((at_s, next(rotation)))
            at_s += self.fault_every_s
        return slots


def plan_for(duration_s: float) -> Plan:
    """The plan of a run of ``duration_s``: a fault every 2 minutes and a daemon kill every
    30 minutes in long runs; nine faults (every kind) in short ones."""
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    fault_every_s = min(120.0, duration_s / 10)
    compressed = fault_every_s < 30
    return Plan(
        duration_s=duration_s,
        fault_every_s=fault_every_s,
        kill_every_s=min(1800.0, duration_s / 2),
        # Longer than redis_socket_timeout_s (1 s): the daemon's Redis calls time out.
        freeze_s=3.0 if compressed else 10.0,
        redis_down_s=2.0 if compressed else 5.0,
        burst_connections=300,
        burst_rounds=1 if compressed else 4,
        grace_s=5.0,
        warmup_s=min(600.0, max(10.0, duration_s / 6)),
        sample_every_s=1.0 if compressed else 5.0,
        recovery_timeout_s=60.0,
        oracle_max_delay_s=min(900.0, max(60.0, duration_s / 4)),
    )
