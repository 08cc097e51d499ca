"""File descriptors: the process's limit must hold every connection, with room for the rest.

A connection is one descriptor.  So are the store's connections (the Redis
pool) and the daemon's own files: the WAL's segments (the current one and
those waiting for their last fdatasync), the checkpoint and alert files being
replaced, the listening socket, SQLite, the event loop's epoll and signal
pipes, psutil's reads of /proc.  Clients past what fits would make those fail
with EMFILE instead, so ``max_connections`` is held to what fits.
"""

from __future__ import annotations

import resource

# Descriptors the daemon keeps for itself beyond the store's connections.
RESERVED_FDS = 64


def connections_that_fit(max_connections: int, store_fds: int) -> tuple[int, int]:
    """(the connections to accept at most, the open-file limit now).

    Raises the soft RLIMIT_NOFILE toward the hard one first when it is too
    low for ``max_connections``, as servers do: the hard limit is what the
    administrator (systemd's LimitNOFILE=) allows.
    """
    needed = max_connections + store_fds + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return max_connections, soft
    return max(1, min(max_connections, soft - store_fds - RESERVED_FDS)), soft
