"""The client library against a real daemon that dies under it (SIGKILL).

What the caller sees is tested elsewhere (tests/test_client_unit.py against a
scripted server); here the daemon is real and killed, and what is checked is
what asyncio itself reports about the client's futures afterwards.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from typing import Any

from memoryd_client import AsyncClient, RetryPolicy, errors
from tests.harness import Daemon

# Large enough that a pipelined burst of adds is still in the socket's send
# buffer, waiting in drain(), when the daemon dies.
PAYLOAD_CHARS = 50_000
CALLS_IN_FLIGHT = 300
FAST = RetryPolicy(initial_backoff_s=0.005, max_backoff_s=0.05)


async def _outcome(call: Any) -> str:
    try:
        await call
    except errors.MemorydError as exc:
        return type(exc).__name__
    return "ok"


async def test_a_daemon_killed_under_pipelined_async_calls_leaves_no_unretrieved_future(
    daemon_dir: Daemon,
) -> None:
    """Every future the client creates is awaited or settled, whatever the daemon does.

    asyncio logs "Future exception was never retrieved" when a future holding
    an exception is collected unread: the client's callers would see that
    noise on their console whenever the daemon dies.
    """
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        daemon = daemon_dir
        daemon.env_overrides = {"MEMORYD_BACKEND": "local", "MEMORYD_WAL_FSYNC": "no"}
        daemon.start()
        outcomes: Counter[str] = Counter()
        cut = 0  # burst calls the kill cut off
        for retry in (FAST, False):
            if daemon.process is None:
                daemon.start()
            async with AsyncClient(daemon.socket_path, timeout_s=2, retry=retry) as client:
                assert await client.ping() == "pong"
                calls = [
                    asyncio.create_task(
                        _outcome(client.add("killed", "note", "x" * PAYLOAD_CHARS))
                        if i % 2
                        else _outcome(client.ping())
                    )
                    for i in range(CALLS_IN_FLIGHT)
                ]
                await asyncio.sleep(0.05)  # the burst is on its way
                daemon.kill()
                burst = await asyncio.gather(*calls)
                cut += sum(outcome in ("ConnectionLost", "ConnectError") for outcome in burst)
                outcomes.update(burst)
                # And calls after the death, on the broken connection.
                outcomes.update(
                    await asyncio.gather(*(_outcome(client.ping(timeout_s=0.3)) for _ in range(5)))
                )
        gc.collect()
        await asyncio.sleep(0)  # reports scheduled by finalizers
    finally:
        loop.set_exception_handler(previous)
    # The kill did cut a good share of the calls off (else this test proves
    # nothing); how many depends on how loaded the machine is.
    assert cut >= CALLS_IN_FLIGHT // 5, outcomes
    assert [context.get("message") for context in reported] == [], reported[:3]
