"""Whether the store lost the data memoryd applied to it.

The store keeps a token (``Store.marker``: a Redis key, a row in SQLite); the
daemon remembers, in ``<data_dir>/store-marker``, the token it last saw in
each store it used, under the store's identity (its address and key prefix).
A store that no longer holds its token has been emptied, flushed or swapped.

Tokens are kept per store so that switching one data_dir between stores (the
local store and Redis, and back: the rollback path) is not taken for a loss.
A file written by an older memoryd holds one bare token of unknown store: it
counts for the store that still holds it, and is otherwise set aside.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from memoryd.atomicfile import write_atomically
from memoryd.stores.base import Store
from memoryd_client.ids import new_id

logger = logging.getLogger(__name__)

MARKER_NAME = "store-marker"


class StoreMarker:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / MARKER_NAME
        self._tokens: dict[str, str] | None = None  # identity -> token; None: not read yet
        self._bare_token: str | None = None  # an older memoryd's file
        self._unsaved = False

    async def lost(self, store: Store) -> bool:
        """Whether ``store`` lost its token since this daemon (or its data_dir) saw it.

        Raises the store's errors (StoreUnavailable...); never an OSError: a
        token that cannot be written down now is kept in memory and written
        at the next check.
        """
        tokens = self._known()
        known = tokens.get(store.identity)
        token = await store.marker(new_id())
        if known is None and self._bare_token is not None:
            # Whichever store the bare token belonged to, it is this one's if it matches.
            known = self._bare_token if self._bare_token == token else None
        if token != known or self._unsaved or self._bare_token is not None:
            tokens[store.identity] = token
            self._save(tokens)
        return known is not None and token != known

    def _known(self) -> dict[str, str]:
        if self._tokens is None:
            self._tokens = self._read()
        return self._tokens

    def _read(self) -> dict[str, str]:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            logger.warning("cannot read %s (%s); store markers start over", self.path, exc)
            return {}
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("stores"), dict):
            return {str(k): str(v) for k, v in data["stores"].items()}
        self._bare_token = text or None
        return {}

    def _save(self, tokens: dict[str, str]) -> None:
        body = json.dumps({"stores": tokens}, indent=1, sort_keys=True).encode()
        try:
            write_atomically(self.path, body)
        except OSError as exc:
            if not self._unsaved:
                logger.warning(
                    "cannot write %s (%s); the store's marker is kept in memory and "
                    "written at the next check",
                    self.path,
                    exc.strerror or exc,
                )
            self._unsaved = True
            return
        self._unsaved = False
        self._bare_token = None
