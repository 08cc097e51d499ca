"""What the CLI prints for people: ``memoryd status``, ``memoryd wal inspect``, ``memoryd alerts``.

``--json`` prints the snapshots themselves; these functions turn them into the
lines an operator reads during an incident.
"""

from __future__ import annotations

import time
from typing import Any

from memoryd.stores.base import NO_EVICTION


def alert_line(alert: dict[str, Any]) -> str:
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(alert.get("at", 0))))
    return f"{at}  {alert.get('kind')}: {alert.get('message')}"


def wal_report(report: dict[str, Any]) -> str:
    """The WAL as an operator reads it during an incident."""
    checkpoint, totals = report["checkpoint"], report["totals"]
    lines = [
        f"wal        {report['wal_dir']}",
        f"checkpoint applied_seq {checkpoint['applied_seq']}"
        + ("" if checkpoint["exists"] else "  (no checkpoint file: everything replays)")
        + ("  (leftover checkpoint.tmp)" if checkpoint["leftover_temp_file"] else ""),
        f"totals     {totals['segments']} segments  {_bytes(totals['bytes'])}  "
        f"{totals['records']} records  {totals['unapplied']} unapplied  "
        f"{totals['corrupt_records']} corrupt",
        "segment                         bytes  records        first         last  unapplied"
        "  damage",
    ]
    for seg in report["segments"]:
        damage = []
        if seg["corrupt_records"]:
            damage.append(f"{seg['corrupt_records']} bad checksum")
        if seg["torn_tail_bytes"]:
            damage.append(f"torn tail {seg['torn_tail_bytes']}B")
        if seg["unreadable_bytes"]:
            damage.append(f"unreadable {seg['unreadable_bytes']}B")
        lines.append(
            f"{seg['name']:<26} {seg['bytes']:>11} {seg['records']:>8} "
            f"{seg['first_seq'] or '-':>12} {seg['last_seq'] or '-':>12} {seg['unapplied']:>10}"
            f"  {', '.join(damage) or 'ok'}"
        )
    for item in report["quarantine"]:
        lines.append(f"quarantine {item['name']}  {_bytes(item['bytes'])}")
    return "\n".join(lines)


def status_report(s: dict[str, Any]) -> str:
    """One screen for a human."""
    # Long on purpose: the screen top to bottom, one line of code per line shown.
    store, wal, proc = s["store"], s["wal"], s["process"]
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["since"]))
    lines = [
        f"memoryd {s['version']}  pid {s['pid']}  up {_duration(s['uptime_s'])}",
        f"state      {s['state'].upper()} since {since} ({s['reason']})",
        f"socket     {s['socket']}  clients {s['clients']}",
        f"store      {store['kind']} {store.get('address', '')}  "
        f"version {store.get('server_version') or '?'}  ping {_ms(store.get('ping_ms'))}",
    ]
    if store.get("maxmemory_policy") is not None:
        lines.append(_eviction_line(store))
    if store.get("last_error"):
        lines.append(f"           last error: {store['last_error']}")
    lines += [
        f"wal        fsync {wal['fsync']}  {wal['segments']} segments  "
        f"{_bytes(wal['bytes'])} of {_bytes(wal['max_bytes'])}",
        f"backlog    {wal['backlog_records']} writes  {_bytes(wal['backlog_bytes'])}  "
        f"oldest {wal['oldest_unapplied_age_s']:.1f}s  applied {wal['applied_records']}  "
        f"drain {wal['drain_rate_per_s']}/s",
    ]
    cache = s["read_cache"]
    lines.append(
        f"read cache {cache['records']} records  hits {cache['hits']}  misses {cache['misses']}  "
        + (
            "answering from memory"
            if cache["from_memory"]
            else f"not answering from memory ({cache['writers']} writers known)"
        )
    )
    damage = (
        wal["corrupt_records"],
        wal["torn_tail_bytes"],
        wal["quarantined_segments"],
        wal["missing_records"],
    )
    if any(damage):
        lines.append(
            f"damage     {damage[0]} corrupt records skipped, {damage[1]} torn bytes cut, "
            f"{damage[2]} segments quarantined, {damage[3]} records missing"
        )
    lines.append(
        f"process    rss {_bytes(proc['rss_bytes'])}  "
        f"cpu {proc['cpu_user_s'] + proc['cpu_system_s']:.1f}s"
        f"  disk free {_bytes(proc['disk_free_bytes'])}  loop lag {_ms(s['event_loop_lag_ms'])}"
    )
    alerts = s.get("alerts") or []
    if alerts:
        lines.append(f"ALERTS     {len(alerts)} (clear with `memoryd alerts clear`):")
        lines += [f"           {alert_line(alert)}" for alert in alerts[-5:]]
    if s["requests"]:
        lines.append("requests   method        count   errors   rate/s   p50 ms   p99 ms")
        for method, m in s["requests"].items():
            lines.append(
                f"           {method:<12} {m['count']:>6} {m['errors']:>8} {m['rate_per_s']:>8}"
                f" {m['p50_ms']:>8} {m['p99_ms']:>8}"
            )
    return "\n".join(lines)


def _eviction_line(store: dict[str, Any]) -> str:
    policy = store["maxmemory_policy"]
    limit = _bytes(store["maxmemory_bytes"]) if store.get("maxmemory_bytes") else "none"
    risk = "" if policy == NO_EVICTION else " (may evict memoryd's keys)"
    return (
        f"           maxmemory {limit}  policy {policy}{risk}  "
        f"evicted {store.get('evicted_keys')} keys"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}ms"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
