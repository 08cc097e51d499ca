"""A Unix socket in front of a real Redis that can refuse connections and lose
a reply: how a test makes a command run on the server while its answer never
reaches memoryd (a network that fails between the two).

It runs its own event loop in a thread, so the synchronous daemon tests can
drive it.  Bytes pass through unchanged; nothing is parsed but a marker looked
for in what the client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any


class LossyProxy:
    def __init__(self, target: Path, path: Path) -> None:
        self.target = target
        self.path = path
        self.refusing = False
        self.dropped_replies = 0
        self._drop_marker: bytes | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> LossyProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def refuse(self) -> None:
        """Close every connection, and each new one at once: Redis looks down."""
        self.refusing = True
        self._call(self._close_all())

    def accept(self) -> None:
        self.refusing = False

    def lose_reply_to(self, marker: bytes) -> None:
        """The next request that contains ``marker`` reaches Redis; once Redis has
        answered, the connection is closed instead of the answer being passed on."""
        self._drop_marker = marker

    # -- the loop's side ------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(5)

    async def _start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._close_all()

    async def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        self._writers.add(writer)  # from now on refuse() closes it too
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
        except OSError:
            self._writers.discard(writer)
            writer.close()
            return
        if self.refusing or writer.is_closing():
            self._writers.discard(writer)
            writer.close()
            up_writer.close()
            return
        self._writers.add(up_writer)
        armed = asyncio.Event()
        try:
            await asyncio.gather(
                self._upstream(reader, up_writer, armed),
                self._downstream(up_reader, writer, armed),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.close()

    async def _upstream(
        self, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, armed: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            marker = self._drop_marker
            if marker is not None and marker in data:
                self._drop_marker = None
                armed.set()
            up_writer.write(data)
            await up_writer.drain()
        up_writer.close()

    async def _downstream(
        self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, armed: asyncio.Event
    ) -> None:
        while data := await up_reader.read(65536):
            if armed.is_set():
                self.dropped_replies += 1
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
            writer.write(data)
            await writer.drain()
        writer.close()
