"""Who the client is talking to: the uid of the process behind the socket.

A socket path is a name in a directory; whoever could write there (or took
the path while the daemon was down) could listen on it, read every request
(memories) and answer what they like.  So right after connecting, before
sending anything, both clients read the listener's credentials
(``SO_PEERCRED``) and go on only if its uid is trusted: root, the client's
own effective uid, or the one uid given as ``server_uid=`` (else in
``$MEMORYD_SERVER_UID``).  Anything else raises ``UntrustedServer``.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Final, Protocol

from memoryd_client.errors import UntrustedServer

SERVER_UID_ENV: Final = "MEMORYD_SERVER_UID"
# struct ucred: pid_t pid (signed), uid_t uid and gid_t gid (unsigned).
_PEERCRED: Final = struct.Struct("=iII")


class _Socket(Protocol):
    """A socket, or the view of one an asyncio transport gives."""

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def trusted_uids(server_uid: int | None) -> frozenset[int]:
    """Root, this process's euid, and ``server_uid`` (the argument, else the environment).

    Raises ValueError naming the argument or the variable for a value that is not a uid.
    """
    if server_uid is None:
        server_uid = _uid_from_environment()
    elif type(server_uid) is not int or server_uid < 0:
        raise ValueError(f"server_uid: must be a uid (an integer >= 0), not {server_uid!r}")
    extra = frozenset() if server_uid is None else frozenset({server_uid})
    return frozenset({0, os.geteuid()}) | extra


def _uid_from_environment() -> int | None:
    text = os.environ.get(SERVER_UID_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"{SERVER_UID_ENV}: must be a uid (an integer >= 0), not {text!r}")
    return int(text)


def check_server(sock: _Socket, socket_path: str, trusted: frozenset[int]) -> None:
    """Raise ``UntrustedServer`` unless the listener behind ``sock`` runs as a trusted uid."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError as exc:
        raise UntrustedServer(
            f"cannot tell who serves the memoryd socket {socket_path} (SO_PEERCRED: {exc}): "
            "nothing was sent to it"
        ) from exc
    _, uid, _ = _PEERCRED.unpack(creds)
    if uid in trusted:
        return
    raise UntrustedServer(
        f"the memoryd socket {socket_path} is served by uid {uid}, not by {_describe(trusted)}: "
        f"nothing was sent to it. If that daemon is yours, allow its user with "
        f"server_uid={uid} (or {SERVER_UID_ENV}={uid}); else find out who took the socket path"
    )


def _describe(trusted: frozenset[int]) -> str:
    euid = os.geteuid()
    names = ["root"]
    if euid != 0:
        names.append(f"uid {euid} (this process)")
    names += [f"uid {uid} (server_uid)" for uid in sorted(trusted - {0, euid})]
    return " or ".join(names)
