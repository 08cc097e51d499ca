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

# The most records one read answers (the bound of ``limit``): a caller that
# wants more pages through them (memoryd_client.paging).
MAX_READ_LIMIT: Final = 1000
# ``agents``: how many ids it answers unless asked, and at most.
DEFAULT_AGENTS_LIMIT: Final = 100
MAX_AGENTS_LIMIT: Final = 10_000
# The daemon's default ``max_batch``: records per ``add_many``.
DEFAULT_MAX_BATCH: Final = 1000

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
    initial_buffer_bytes: int = INITIAL_BUFFER_BYTES,
) -> msgpack.Unpacker:
    """A streaming Unpacker whose limits refuse oversize objects before allocating them.

    msgpack derives ``max_str_len``, ``max_bin_len``, ``max_array_len`` and
    ``max_map_len`` from ``max_buffer_size``, so a header announcing a 4 GiB
    string never reserves memory for it.  (The string is refused only once its
    announced bytes have arrived, though: ``HeaderWalk`` refuses it earlier.)

    ``initial_buffer_bytes``: the buffer the Unpacker starts with and grows
    from as a message needs (msgpack's own default would reserve up to 1 MiB
    per connection at once).
    """
    buffer_bytes = max_message_bytes + UNPACKER_SLACK_BYTES
    # read_size is also the size of the Unpacker's first buffer; 0: its default.
    read_size = min(initial_buffer_bytes, buffer_bytes)
    # An array or map header makes the decoder reserve room for every
    # announced item, so the daemon caps their lengths tighter than strings.
    # (None: msgpack's own cap, derived from the buffer size; clients use it.)
    container_limits = (
        {}
        if max_container_items is None
        else {"max_array_len": max_container_items, "max_map_len": max_container_items}
    )
    return msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        use_list=True,
        max_buffer_size=buffer_bytes,
        read_size=read_size,
        **container_limits,
    )


def _header_kinds() -> tuple[tuple[int, int, int, int] | None, ...]:
    """What the first byte of a msgpack object says about it, for ``HeaderWalk``.

    Per first byte: (header bytes, width of the length field that follows the
    first byte, the length when the first byte holds it, items per unit of
    length).  Items per unit is 0 when the length counts payload bytes (str,
    bin, ext), 1 for an array, 2 for a map (a key and a value).  A scalar of
    fixed size is a header with no payload.  None: a byte msgpack never uses.
    """
    kinds: list[tuple[int, int, int, int] | None] = [None] * 256
    for byte in range(0x00, 0x80):
        kinds[byte] = (1, 0, 0, 0)  # positive fixint
    for byte in range(0xE0, 0x100):
        kinds[byte] = (1, 0, 0, 0)  # negative fixint
    for byte in range(0x80, 0x90):
        kinds[byte] = (1, 0, byte & 0x0F, 2)  # fixmap
    for byte in range(0x90, 0xA0):
        kinds[byte] = (1, 0, byte & 0x0F, 1)  # fixarray
    for byte in range(0xA0, 0xC0):
        kinds[byte] = (1, 0, byte & 0x1F, 0)  # fixstr
    for byte in (0xC0, 0xC2, 0xC3):
        kinds[byte] = (1, 0, 0, 0)  # nil, false, true
    # Scalars of a fixed size: floats, ints, and fixext (type byte + payload).
    fixed_sizes = {0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9}
    fixed_sizes |= {0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9}
    fixed_sizes |= {0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}
    for byte, size in fixed_sizes.items():
        kinds[byte] = (size, 0, 0, 0)
    # Lengths in a field after the first byte: bin, ext (+ its type byte), str, array, map.
    for first, width in zip((0xC4, 0xC5, 0xC6), (1, 2, 4), strict=True):
        kinds[first] = (1 + width, width, 0, 0)
    for first, width in zip((0xC7, 0xC8, 0xC9), (1, 2, 4), strict=True):
        kinds[first] = (2 + width, width, 0, 0)
    for first, width in zip((0xD9, 0xDA, 0xDB), (1, 2, 4), strict=True):
        kinds[first] = (1 + width, width, 0, 0)
    kinds[0xDC], kinds[0xDD] = (3, 2, 0, 1), (5, 4, 0, 1)
    kinds[0xDE], kinds[0xDF] = (3, 2, 0, 2), (5, 4, 0, 2)
    return tuple(kinds)


_HEADER_KINDS: Final = _header_kinds()


class HeaderWalk:
    """How long one incomplete message must at least be, from its headers alone.

    msgpack's Unpacker checks a string's length against its limit only once
    the whole string has arrived, so a five-byte header announcing 500 MB
    would hold a connection until the capacity has been sent.  This walk
    reads the headers of the message being received as its bytes come in
    (resumably: each byte is looked at once, payloads are skipped without
    reading them) and answers False from ``advance`` as soon as they announce
    more than ``max_message_bytes`` in all: a str, bin or ext longer than the
    rest of the message may hold, or more array or map items than it has
    bytes left (every item takes at least one).

    Offsets are positions in the connection's byte stream; the message starts
    at ``message_offset``.  The walk is given the stream's bytes in order, from
    the message's first byte on, possibly with bytes it has seen before.
    """

    def __init__(self, message_offset: int, max_message_bytes: int) -> None:
        self.message_offset = message_offset
        self.max_message_bytes = max_message_bytes
        # Where the next header starts; beyond the bytes seen while a payload arrives.
        self.next_header_offset = message_offset
        # Objects the headers so far announce and that have not started yet.
        self.objects_owed = 1
        self.refused = False  # once refused, always: the walk stops there
        self._seen_end = message_offset
        self._cut_header = b""  # the start of a header the bytes seen so far cut short

    @property
    def least_message_bytes(self) -> int:
        """The least size of the message given its headers so far."""
        return self.next_header_offset + self.objects_owed - self.message_offset

    @property
    def complete(self) -> bool:
        """Whether every header of the message has been seen: it ends at
        ``next_header_offset`` (its last payload may still be arriving)."""
        return self.objects_owed == 0

    def advance(self, data: bytes | memoryview, data_offset: int) -> bool:
        """Walk the headers in ``data`` (which starts at ``data_offset``); whether
        the message can still fit in ``max_message_bytes``."""
        if data_offset > self._seen_end:
            raise ValueError(f"bytes {self._seen_end}..{data_offset} were never given")
        if self.refused:
            return False
        new = memoryview(data)[self._seen_end - data_offset :]
        if not new or self.objects_owed == 0:  # no headers, or none left: payload bytes
            self._seen_end += len(new)
            return True
        if self._cut_header:
            view, view_offset = memoryview(self._cut_header + new), self.next_header_offset
        else:
            view, view_offset = new, self._seen_end
        self._seen_end += len(new)
        self._cut_header = b""
        return self._walk(view, view_offset)

    def _walk(self, view: memoryview, view_offset: int) -> bool:
        position = self.next_header_offset
        owed = self.objects_owed
        limit = self.message_offset + self.max_message_bytes
        view_end = view_offset + len(view)
        while owed and position < view_end:
            index = position - view_offset
            kind = _HEADER_KINDS[view[index]]
            if kind is None:
                owed = 0  # not msgpack: the decoder refuses it, nothing left to bound
                break
            header_bytes, length_width, length, items_per_unit = kind
            if index + 1 + length_width > len(view):
                self._cut_header = bytes(view[index:])  # its length field is still to come
                break
            if length_width:
                length = int.from_bytes(view[index + 1 : index + 1 + length_width], "big")
            owed -= 1
            if items_per_unit:
                owed += items_per_unit * length
                position += header_bytes
            else:
                position += header_bytes + length
            if position + owed > limit:
                self.refused = True
                break
        self.next_header_offset = position
        self.objects_owed = owed
        return not self.refused


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
