"""The host running out of things: disk space, file descriptors.

An adversarial run stopped the daemon with them: a full disk while Redis was
down killed it when Redis returned (the store marker and the checkpoint could
not be written), and 500 clients under ``ulimit -n 256`` made the flusher die
of EMFILE.  These pass; the daemon must degrade (``failing``, with the reason,
retryable errors to clients) and recover by itself once the resource is back.
Only an fdatasync failure stays fatal (tests/test_wal_recovery.py).

Real faults: a tiny tmpfs filled to the last byte (root: CI runs as root),
a real RLIMIT_NOFILE set with prlimit(1), real sockets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memoryd_client import Client, errors
from tests.daemons import eventually
from tests.harness import Daemon, RedisServer, fill_disk, short_tempdir, tiny_tmpfs

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs and creating real faults needs root (CI is root)"
)

BIG = "x" * 16_384


@pytest.fixture
def mount() -> Iterator[Path]:
    directory = short_tempdir("mdfs-")
    try:
        with tiny_tmpfs(directory / "mnt", "4m") as mounted:
            yield mounted
    finally:
        subprocess.run(["rm", "-rf", str(directory)], check=False)


def _daemon(data_dir: Path, **env: str) -> Daemon:
    daemon = Daemon(
        env_overrides={
            "MEMORYD_MIN_FREE_DISK_BYTES": "0",  # fill the disk for real: ENOSPC itself
            "MEMORYD_CHECKPOINT_INTERVAL_S": "0.2",
            "MEMORYD_WAL_SEGMENT_BYTES": "65536",
            "MEMORYD_READ_CACHE_PER_AGENT": "0",
            **env,
        }
    )
    daemon.data_dir_override = data_dir
    return daemon


def _alive(daemon: Daemon) -> bool:
    return daemon.process is not None and daemon.process.poll() is None


def _write_until_refused(client: Client, agent: str) -> tuple[list[str], errors.MemorydError]:
    acked: list[str] = []
    for n in range(10_000):
        try:
            acked.append(client.add(agent, "note", f"{n} {BIG}")["id"])
        except (errors.WalFull, errors.Overloaded) as exc:
            return acked, exc
    raise AssertionError("the WAL never refused a write on a full disk")


def test_a_full_disk_while_redis_is_down_degrades_and_recovers(
    mount: Path, private_redis: RedisServer
) -> None:
    daemon = _daemon(mount / "data", MEMORYD_REDIS_URL=private_redis.url)
    try:
        daemon.start()
        with (
            Client(daemon.socket_path, timeout_s=10) as client,
            Client(daemon.socket_path, retry=False, timeout_s=5) as once,
        ):
            before = [client.add("agent-1", "note", f"before {n}")["id"] for n in range(5)]
            eventually(lambda: client.status()["wal"]["backlog_records"] == 0, timeout_s=10)
            private_redis.kill()
            during = [client.add("agent-1", "note", f"during {n} {BIG}")["id"] for n in range(20)]
            eventually(
                lambda: client.status()["store"]["last_error"], timeout_s=10, what="Redis seen down"
            )
            filler = fill_disk(mount)
            more, refusal = _write_until_refused(once, "agent-1")
            assert refusal.retryable
            status = client.status()
            assert status["state"] == "failing", status["reason"]

            private_redis.start()  # empty: the marker, the alert and the checkpoint need disk
            eventually(
                lambda: client.status()["wal"]["backlog_records"] == 0,
                timeout_s=30,
                what="the backlog applied to the returned store",
            )
            time.sleep(1.0)  # several checkpoint intervals on a full disk
            assert _alive(daemon), daemon.log()
            status = client.status()
            # A Redis without persistence confirms nothing: the WAL keeps what it
            # applied, and it applied again what the empty Redis lost.
            assert status["wal"]["unconfirmed_records"] > 0
            lost = [alert for alert in status["alerts"] if alert["kind"] == "store_data_lost"]
            assert lost and "applied again" in lost[0]["message"], daemon.log()

            filler.unlink()
            eventually(
                lambda: client.status()["state"] == "healthy", timeout_s=30, what="healthy again"
            )
            after = client.add("agent-1", "note", "after")["id"]
            stored = {r["id"] for r in client.recent("agent-1", limit=1000)}
            # Applied before Redis came back empty, but never confirmed durable: put back.
            assert set(before + during + more + [after]) <= stored
        assert daemon.stop() == 0, daemon.log()
        assert "Traceback" not in daemon.log()
    finally:
        daemon.cleanup()


@pytest.mark.parametrize("kind", ["local", "redis"])
def test_a_restart_on_a_full_disk_starts_failing_and_recovers(
    mount: Path, private_redis: RedisServer, kind: str
) -> None:
    env = {"MEMORYD_REDIS_URL": private_redis.url} if kind == "redis" else {}
    daemon = _daemon(mount / "data", **env)
    try:
        daemon.start()
        with Client(daemon.socket_path) as client:
            ids = [client.add("agent-1", "note", f"record {n}")["id"] for n in range(10)]
        assert daemon.stop() == 0
        filler = fill_disk(mount)
        daemon.start()  # READY=1: it started
        with (
            Client(daemon.socket_path, timeout_s=10) as client,
            Client(daemon.socket_path, retry=False) as once,
        ):
            status = client.status()
            assert status["state"] in ("failing", "degraded"), status["reason"]
            with pytest.raises(errors.WalFull) as refused:
                once.add("agent-1", "note", "no room")
            assert refused.value.retryable
            if kind == "redis":
                assert {r["id"] for r in client.recent("agent-1", limit=100)} == set(ids)
            filler.unlink()
            eventually(
                lambda: client.status()["state"] == "healthy", timeout_s=30, what="healthy again"
            )
            new = client.add("agent-1", "note", "room again")["id"]
            assert {r["id"] for r in client.recent("agent-1", limit=100)} == {*ids, new}
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.log()
    finally:
        daemon.cleanup()


def test_an_open_file_limit_below_max_connections_is_respected(
    private_redis: RedisServer,
) -> None:
    """``ulimit -n 256`` and 500 clients: the daemon holds max_connections to what fits."""
    daemon = Daemon(
        env_overrides={
            "MEMORYD_REDIS_URL": private_redis.url,
            "MEMORYD_WAL_SEGMENT_BYTES": "4096",  # rotations need new files all the time
            "MEMORYD_CHECKPOINT_INTERVAL_S": "0.1",
        },
        nofile_limit=256,
    )
    sockets: list[socket.socket] = []
    try:
        daemon.start()
        assert "does not fit the open-file limit of 256" in daemon.log()
        with Client(daemon.socket_path, timeout_s=20) as client:
            fitting = client.status()["limits"]["max_connections"]
            assert 0 < fitting < 256
            for _ in range(500):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(daemon.socket_path))
                sockets.append(sock)
            ids = [
                client.add("agent-1", "note", f"record {n} {'y' * 500}")["id"] for n in range(200)
            ]
            assert _alive(daemon), daemon.log()
            assert {r["id"] for r in client.recent("agent-1", limit=1000)} == set(ids)
            for sock in sockets:
                sock.close()
            sockets.clear()
            eventually(lambda: client.status()["wal"]["backlog_records"] == 0, timeout_s=20)
            assert client.status()["state"] == "healthy"
        assert daemon.stop() == 0, daemon.log()
        assert "Too many open files" not in daemon.log()
    finally:
        for sock in sockets:
            sock.close()
        daemon.cleanup()


ROTATION_OUT_OF_FILES = textwrap.dedent(
    """
    import asyncio, os, resource, sys
    from pathlib import Path
    from memoryd.ops import Put
    from memoryd.wal import Wal, WalBusyError, WalSettings
    from tests.test_wal_recovery import record

    async def main():
        wal = Wal(Path(sys.argv[1]), WalSettings("always", 1 << 30, 4096),
                  on_durable=lambda entries: None)
        wal.open()
        n = 0
        while wal.segments.current.size < 4096:
            n += 1
            await wal.append([Put.of(record(n))])
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        hogs = []
        try:
            while True:
                hogs.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            await wal.append([Put.of(record(n + 1))])
            print("appended without a file")
        except WalBusyError as exc:
            print("busy:", exc)
        for fd in hogs:
            os.close(fd)
        await wal.append([Put.of(record(n + 2))])
        print("appended after")
        await wal.close()

    asyncio.run(main())
    """
)


def test_a_segment_rotation_out_of_file_descriptors_is_retryable(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", ROTATION_OUT_OF_FILES, str(tmp_path / "wal")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "busy: the WAL could not open its file: Too many open files (errno 24)",
        "appended after",
    ]
