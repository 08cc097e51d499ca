"""The daemon's exceptions: one root, one class per wire error code.

Whatever reaches a client is one of the ``RequestError`` classes, whose
``code`` is the wire code; everything else becomes ``internal`` at the
server boundary.
"""

from __future__ import annotations

from typing import Any, ClassVar

from memoryd_client import wire


class MemorydError(Exception):
    """Root of every exception memoryd raises on purpose."""


class ConfigError(MemorydError):
    """A setting has a value memoryd cannot run with."""


class FatalError(MemorydError):
    """Something the daemon cannot go on after (an fdatasync failure, a crashed
    background task); it stops, and a restart replays the WAL."""


class RequestError(MemorydError):
    """A request failed in a way its client is told about."""

    code: ClassVar[str] = wire.INTERNAL

    def to_wire(self) -> dict[str, Any]:
        return wire.error_object(self.code, str(self))


class InvalidRequest(RequestError):
    code = wire.INVALID_REQUEST

    def __init__(self, argument: str, reason: str) -> None:
        super().__init__(f"{argument}: {reason}" if argument else reason)
        self.argument = argument


class NotFound(RequestError):
    code = wire.NOT_FOUND


class TooLarge(RequestError):
    code = wire.TOO_LARGE

    def __init__(self, argument: str, reason: str) -> None:
        super().__init__(f"{argument}: {reason}")
        self.argument = argument


class Unauthorized(RequestError):
    code = wire.UNAUTHORIZED


class Overloaded(RequestError):
    code = wire.OVERLOADED


class WalFull(RequestError):
    code = wire.WAL_FULL


class BackendUnavailable(RequestError):
    code = wire.BACKEND_UNAVAILABLE


class DeadlineExceeded(RequestError):
    code = wire.DEADLINE_EXCEEDED


class ShuttingDown(RequestError):
    code = wire.SHUTTING_DOWN


class InternalError(RequestError):
    code = wire.INTERNAL
