"""The soak test (``make soak DURATION=24h``): memoryd under steady traffic and periodic faults.

A redis-server (AOF, ``appendfsync always``) and a memoryd daemon of its own,
with small caps and TTLs; round-table meetings through the TableRound
facades, oracle writers, noise writers and readers on the direct clients; a
fault every few minutes (Redis restarted or frozen, SIGHUP, kill -9 of the
daemon, a burst of connections); samples of the daemon's RSS, fds, WAL and
backlog and of the agents' latencies every few seconds.  It fails if an
acknowledged write is lost or duplicated, an error reaches an agent outside a
fault window, an answer breaks a guarantee, or RSS or fds grow past their
bound.  See docs/soak.md.

    python -m tests.soak --duration 2h [--results-dir DIR]
"""
