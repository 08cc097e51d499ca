"""Record ids: 26 characters, time-sortable, assigned by whoever writes first.

The layout follows ULID: 48 bits of milliseconds since the epoch, then 80
random bits, in Crockford base32.  The client assigns the id of every record
it writes, so a write that is retried after a lost answer carries the same id
and the daemon stores it once.
"""

from __future__ import annotations

import os
import time
from typing import Final

_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_LENGTH: Final = 26


def new_id(now_s: float | None = None) -> str:
    """A new record id whose first ten characters sort by creation time."""
    millis = int((time.time() if now_s is None else now_s) * 1000) & (2**48 - 1)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(ID_LENGTH):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
