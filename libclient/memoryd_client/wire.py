"""The memoryd wire format, defined once and used by the client and the daemon.

MessagePack-RPC over a Unix stream socket, as a plain stream of msgpack
objects (no length prefix):

- request ``[0, msgid, method, params]``
- response ``[1, msgid, error, result]``
- notification ``[2, method, params]``

``params`` is an array holding exactly one map of named arguments, or an
empty array for none.  ``error`` is nil or ``{"code", "message", "retryable"}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Final

import msgpack

PROTOCOL_VERSION: Final = 1

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2

MIN_MSGID: Final = 1
MAX_MSGID: Final = 2**32 - 1
MAX_METHOD_BYTES: Final = 64

DEFAULT_MAX_MESSAGE_BYTES: Final = 1024 * 1024
# Room above the largest message so that the next message's first bytes can
# sit in the buffer next to a maximal one.
UNPACKER_SLACK_BYTES: Final = 64 * 1024

# No record can hold more items than this: it is max_record_bytes' default.
MAX_CONTAINER_ITEMS: Final = 64 * 1024
# The buffer an Unpacker starts with; it grows as a message needs, up to its
# max_buffer_size.  msgpack's default start is min(max_buffer_size, 1 MiB):
# a megabyte reserved per connection, which a burst of connections multiplies.
INITIAL_BUFFER_BYTES: Final = 64 * 1024

PROTOCOL_ERROR_EVENT: Final = "protocol_error"

# Error codes, and which of them a client may retry.
INVALID_REQUEST: Final = "invalid_request"
NOT_FOUND: Final = "not_found"
TOO_LARGE: Final = "too_large"
UNAUTHORIZED: Final = "unauthorized"
OVERLOADED: Final = "overloaded"
WAL_FULL: Final = "wal_full"
BACKEND_UNAVAILABLE: Final = "backend_unavailable"
DEADLINE_EXCEEDED: Final = "deadline_exceeded"
SHUTTING_DOWN: Final = "shutting_down"
INTERNAL: Final = "internal"

RETRYABLE_CODES: Final = frozenset(
    {OVERLOADED, WAL_FULL, BACKEND_UNAVAILABLE, DEADLINE_EXCEEDED, SHUTTING_DOWN}
)
ERROR_CODES: Final = frozenset(
    {INVALID_REQUEST, NOT_FOUND, TOO_LARGE, UNAUTHORIZED, INTERNAL} | RETRYABLE_CODES
)

SOCKET_PATH_ENV: Final = "MEMORYD_SOCKET_PATH"
SYSTEM_SOCKET_PATH: Final = "/run/memoryd/memoryd.sock"
SOCKET_NAME: Final = "memoryd.sock"
# Under the home directory when there is no XDG_RUNTIME_DIR.
HOME_SOCKET_DIR: Final = (".local", "state", "memoryd")
# sockaddr_un.sun_path holds 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH_BYTES: Final = 107


def default_socket_path() -> str:
    """The socket the daemon listens on when nothing else is configured.

    Root uses the system path.  Other users use a directory of their own,
    ``$XDG_RUNTIME_DIR/memoryd/``, else ``~/.local/state/memoryd/``: never a
    shared directory such as /tmp, where another user could create the
    directory first and then take or replace the socket.  The daemon and the
    client both call this, so they agree without configuration.
    """
    return socket_path_for(
        os.geteuid(), os.environ.get("XDG_RUNTIME_DIR", ""), os.path.expanduser("~")
    )


def socket_path_for(euid: int, runtime_dir: str, home: str) -> str:
    """``default_socket_path`` for a given user, runtime directory ("" if unset) and home."""
    if euid == 0:
        return SYSTEM_SOCKET_PATH
    # The XDG spec requires an absolute path; a relative one would depend on the cwd.
    if os.path.isabs(runtime_dir):
        return os.path.join(runtime_dir, "memoryd", SOCKET_NAME)
    return os.path.join(home, *HOME_SOCKET_DIR, SOCKET_NAME)


def socket_path_too_long(path: str) -> str | None:
    """Why ``path`` cannot be a Unix socket's path (too many bytes), or None."""
    size = len(os.fsencode(path))
    if size <= MAX_SOCKET_PATH_BYTES:
        return None
    return (
        f"the path is {size} bytes, longer than the {MAX_SOCKET_PATH_BYTES} bytes a Unix "
        f"socket path can have; set a shorter one ({SOCKET_PATH_ENV} or socket_path)"
    )


def resolve_socket_path(path: str | os.PathLike[str] | None = None) -> str:
    """The argument, else ``MEMORYD_SOCKET_PATH``, else the default."""
    if path is not None:
        return os.fspath(path)
    return os.environ.get(SOCKET_PATH_ENV) or default_socket_path()


def make_unpacker(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_container_items: int | None = MAX_CONTAINER_ITEMS,
) -> msgpack.Unpacker:
    """A streaming Unpacker whose limits refuse oversize headers before allocating.

    msgpack derives ``max_str_len``, ``max_bin_len``, ``max_array_len`` and
    ``max_map_len`` from ``max_buffer_size``, so a five-byte header announcing
    a 4 GiB string fails at once instead of reserving memory for it.
    """
    # An array or map header makes the decoder reserve room for every
    # announced item, so the daemon caps their lengths tighter than strings.
    # (None: msgpack's own cap, derived from the buffer size; clients use it.)
    container_limits = (
        {}
        if max_container_items is None
        else {"max_array_len": max_container_items, "max_map_len": max_container_items}
    )
    max_buffer_size = max_message_bytes + UNPACKER_SLACK_BYTES
    return msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        use_list=True,
        max_buffer_size=max_buffer_size,
        read_size=min(INITIAL_BUFFER_BYTES, max_buffer_size),
        **container_limits,
    )


def make_packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, datetime=False)


def pack_request(packer: msgpack.Packer, msgid: int, method: str, args: dict[str, Any]) -> bytes:
    return packer.pack([REQUEST, msgid, method, [args] if args else []])  # type: ignore[no-any-return]


def pack_response(
    packer: msgpack.Packer, msgid: int, error: dict[str, Any] | None, result: Any
) -> bytes:
    return packer.pack([RESPONSE, msgid, error, result])  # type: ignore[no-any-return]


def pack_notification(packer: msgpack.Packer, method: str, args: dict[str, Any]) -> bytes:
    return packer.pack([NOTIFICATION, method, [args]])  # type: ignore[no-any-return]


def error_object(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "retryable": code in RETRYABLE_CODES}


class WireFormatError(ValueError):
    """A decoded object is not a valid MessagePack-RPC message."""


@dataclass(frozen=True, slots=True)
class Request:
    msgid: int
    method: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Response:
    msgid: int
    error: dict[str, Any] | None
    result: Any


@dataclass(frozen=True, slots=True)
class Notification:
    method: str
    args: dict[str, Any]


Message = Request | Response | Notification


def _is_msgid(value: object) -> bool:
    return type(value) is int and MIN_MSGID <= value <= MAX_MSGID


def _method_name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise WireFormatError("method must be a non-empty string")
    if len(value.encode()) > MAX_METHOD_BYTES:
        raise WireFormatError(f"method name longer than {MAX_METHOD_BYTES} bytes")
    return value


def _named_args(params: object) -> dict[str, Any]:
    if not isinstance(params, list):
        raise WireFormatError("params must be an array")
    if not params:
        return {}
    if len(params) != 1 or not isinstance(params[0], dict):
        raise WireFormatError("params must be an array holding exactly one map")
    args: dict[str, Any] = params[0]
    for name in args:
        if not isinstance(name, str):
            raise WireFormatError("argument names must be strings")
    return args


def parse_message(obj: object) -> Message:
    """Check the shape of one decoded object and return it as a message."""
    if not isinstance(obj, list) or len(obj) not in (3, 4):
        raise WireFormatError("a message is an array of 3 or 4 elements")
    kind = obj[0]
    if kind == REQUEST and type(kind) is int and len(obj) == 4:
        if not _is_msgid(obj[1]):
            raise WireFormatError(f"msgid must be an integer in {MIN_MSGID}..{MAX_MSGID}")
        return Request(obj[1], _method_name(obj[2]), _named_args(obj[3]))
    if kind == RESPONSE and type(kind) is int and len(obj) == 4:
        if not _is_msgid(obj[1]):
            raise WireFormatError(f"msgid must be an integer in {MIN_MSGID}..{MAX_MSGID}")
        error = obj[2]
        if error is not None and not isinstance(error, dict):
            raise WireFormatError("error must be nil or a map")
        return Response(obj[1], error, obj[3])
    if kind == NOTIFICATION and type(kind) is int and len(obj) == 3:
        return Notification(_method_name(obj[1]), _named_args(obj[2]))
    raise WireFormatError("unknown message type or wrong length for its type")
