"""Exceptions raised by the memoryd client: one class per wire error code."""

from __future__ import annotations

from typing import Any

from memoryd_client import wire

# The client's own failures that another attempt may cure; with the server's
# RETRYABLE_CODES, the one table a retry decision reads.
CLIENT_RETRYABLE_CODES = frozenset({"connect_error", "connection_lost"})
_RETRYABLE = wire.RETRYABLE_CODES | CLIENT_RETRYABLE_CODES


class MemorydError(Exception):
    """Root of every error the client raises.

    ``code`` is the wire error code (or one of the client's own); ``retryable``
    says whether another attempt may succeed, from the codes' table unless the
    raiser knows better (a server's verdict on a code this client does not
    know, a connect error that waiting cannot cure).
    """

    code: str = wire.INTERNAL

    def __init__(
        self, message: str = "", *, code: str | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        # An unknown code from a newer server keeps its own name.
        if code is not None:
            self.code = code
        if retryable is None:
            retryable = self.code in _RETRYABLE
        self.retryable = retryable


class InvalidRequest(MemorydError):
    code = wire.INVALID_REQUEST


class NotFound(MemorydError):
    code = wire.NOT_FOUND


class TooLarge(MemorydError):
    code = wire.TOO_LARGE


class Unauthorized(MemorydError):
    code = wire.UNAUTHORIZED


class Overloaded(MemorydError):
    code = wire.OVERLOADED


class WalFull(MemorydError):
    code = wire.WAL_FULL


class BackendUnavailable(MemorydError):
    code = wire.BACKEND_UNAVAILABLE


class DeadlineExceeded(MemorydError):
    code = wire.DEADLINE_EXCEEDED


class ShuttingDown(MemorydError):
    code = wire.SHUTTING_DOWN


class InternalError(MemorydError):
    code = wire.INTERNAL


class ProtocolError(MemorydError):
    """The server refused the byte stream (a ``protocol_error`` notification)
    or sent something that is not MessagePack-RPC; the connection is gone."""

    code = "protocol_error"


class ConnectError(MemorydError, ConnectionError):
    """The daemon could not be reached, or the connection broke mid-request."""

    code = "connect_error"


class ConnectionLost(ConnectError):
    """The connection broke after it was made, with a request in flight: the
    daemon may or may not have executed it."""

    code = "connection_lost"


class ClientClosed(ConnectError):
    """The client was closed; calls in flight and later calls fail with this."""

    code = "client_closed"


class UntrustedServer(ConnectError):
    """The process listening on the socket runs as a user this client does not
    trust (see ``memoryd_client.peer``); nothing was sent to it."""

    code = "untrusted_server"


class MemorydTimeoutError(MemorydError, TimeoutError):
    """No answer within the call's deadline."""

    code = "timeout"


_BY_CODE: dict[str, type[MemorydError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        NotFound,
        TooLarge,
        Unauthorized,
        Overloaded,
        WalFull,
        BackendUnavailable,
        DeadlineExceeded,
        ShuttingDown,
        InternalError,
    )
}


def error_from_wire(error: dict[str, Any]) -> MemorydError:
    """The exception for an ``error`` map of a response."""
    code = str(error.get("code", wire.INTERNAL))
    message = str(error.get("message", ""))
    cls = _BY_CODE.get(code)
    if cls is None:
        return InternalError(message, code=code, retryable=bool(error.get("retryable", False)))
    return cls(message)
