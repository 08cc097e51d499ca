"""The real Server in a thread of the test process, for tests that need a hook
inside the daemon (a slow or failing fdatasync).  Clients still talk to it
through its real socket."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from memoryd import daemon
from memoryd.config import load_settings
from memoryd.server import Server
from tests.harness import short_tempdir, wait_until


@dataclass
class Embedded:
    server: Server
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    errors: list[BaseException] = field(default_factory=list)

    @property
    def socket_path(self) -> Path:
        return self.server.parts.settings.socket_path

    def stop(self, timeout_s: float = 30) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.should_exit.set)
            self.thread.join(timeout_s)


@contextlib.contextmanager
def embedded_server(directory: Path | None = None, **settings: object) -> Iterator[Embedded]:
    directory = directory or short_tempdir("mde-")
    config = load_settings(
        None,
        socket_path=directory / "memoryd.sock",
        data_dir=directory / "data",
        **settings,
    )
    server = Server(daemon.build(config))
    ready = threading.Event()
    holder: dict[str, asyncio.AbstractEventLoop] = {}
    errors: list[BaseException] = []

    async def main() -> None:
        holder["loop"] = asyncio.get_running_loop()
        serving = asyncio.ensure_future(server.serve())
        await asyncio.sleep(0)
        while not server._serving and not serving.done():
            await asyncio.sleep(0.01)
        ready.set()
        await serving

    def run() -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
        except BaseException as exc:  # reported to the test
            errors.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="memoryd-embedded", daemon=True)
    thread.start()
    wait_until(ready.is_set, 20, "the embedded server")
    if errors:
        raise errors[0]
    embedded = Embedded(server, thread, holder["loop"], errors)
    try:
        yield embedded
    finally:
        embedded.stop()
