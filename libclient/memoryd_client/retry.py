"""When and how long both clients wait before trying a call again.

A call is retried after a connection failure (daemon restarting, socket
missing, connection broken mid-request) and after a retryable server error
(``wire.RETRYABLE_CODES``), with exponential backoff and jitter, until its
deadline.  Everything else raises at once.  Retrying is safe because every
write carries the id and creation time the client assigned before the first
attempt.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from memoryd_client import wire
from memoryd_client.errors import (
    ConnectError,
    ConnectionLost,
    MemorydError,
    MemorydTimeoutError,
    ProtocolError,
)

# Connect failures that go away by waiting: the daemon is (re)starting.
_TRANSIENT_CONNECT_ERRORS = (FileNotFoundError, ConnectionError, BlockingIOError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a call is retried within its deadline.

    ``max_attempts`` bounds the attempts (None: as many as the deadline
    allows).  The pause after the n-th failure is drawn from
    ``[b/2, b]`` with ``b = min(max_backoff_s, initial_backoff_s * multiplier**(n-1))``.
    """

    max_attempts: int | None = None
    initial_backoff_s: float = 0.02
    max_backoff_s: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def backoff_s(self, failures: int) -> float:
        ceiling_s = self.initial_backoff_s * self.multiplier ** min(failures - 1, 64)
        ceiling_s = min(self.max_backoff_s, ceiling_s)
        # Half fixed, half random: clients that lost the daemon together do
        # not all come back in the same millisecond, yet none retries at once.
        return ceiling_s * (0.5 + random.random() / 2)


DEFAULT_POLICY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


def policy_from(retry: bool | RetryPolicy) -> RetryPolicy:
    if isinstance(retry, RetryPolicy):
        return retry
    return DEFAULT_POLICY if retry else NO_RETRY


def connect_error(socket_path: str, exc: OSError) -> ConnectError:
    """The error for a failed connect; retried only when waiting can help."""
    reason = wire.socket_path_too_long(socket_path) or str(exc)
    # A permission problem or a bad path does not heal by waiting.
    transient = isinstance(exc, _TRANSIENT_CONNECT_ERRORS)
    error = ConnectError(
        f"cannot connect to memoryd at {socket_path}: {reason}", retryable=transient
    )
    error.__cause__ = exc
    return error


def is_retryable(exc: MemorydError) -> bool:
    return exc.retryable


def _is_server_error(exc: MemorydError) -> bool:
    return not isinstance(exc, ConnectError | MemorydTimeoutError | ProtocolError)


class Attempts:
    """The retry state of one call: its deadline, failures and last error."""

    def __init__(self, policy: RetryPolicy, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.policy = policy
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.failures = 0
        self.last_error: MemorydError | None = None

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def time_left_s(self) -> float:
        """The time the next attempt may take; raises the final error if none is left."""
        remaining_s = self.remaining_s()
        if remaining_s <= 0:
            raise self.final_error()
        return remaining_s

    def after_failure(self, exc: MemorydError) -> float:
        """The pause before the next attempt; raises when the call must give up."""
        self.failures += 1
        self.last_error = exc
        if not is_retryable(exc):
            raise exc
        if self.policy.max_attempts is not None and self.failures >= self.policy.max_attempts:
            raise exc
        remaining_s = self.remaining_s()
        if remaining_s <= 0:
            raise self.final_error()
        return min(self.policy.backoff_s(self.failures), remaining_s)

    def final_error(self) -> MemorydError:
        """What the caller gets when the deadline passes.

        The last server error as it is; ``ConnectError`` if the daemon could
        not be reached at the last attempt; else ``MemorydTimeoutError``.
        """
        last = self.last_error
        if last is not None and _is_server_error(last):
            return last
        if isinstance(last, ConnectError) and not isinstance(last, ConnectionLost):
            return last
        error = MemorydTimeoutError(f"no answer from memoryd within {self.timeout_s} s")
        error.__cause__ = last
        return error
