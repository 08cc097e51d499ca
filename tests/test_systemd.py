"""The sd_notify protocol, with a fake NOTIFY_SOCKET instead of systemd."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from memoryd_client import Client
from tests.harness import Daemon, RedisServer, wait_until


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    daemon = Daemon()
    try:
        yield daemon
    finally:
        daemon.cleanup()


def test_ready_only_once_the_socket_listens_then_stopping(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.notify is not None
    ready = [m for m in daemon.notify.poll() if "READY=1" in m.splitlines()]
    assert len(ready) == 1
    assert "STATUS=healthy" in ready[0]
    assert f"MAINPID={daemon.process.pid}" in ready[0]  # type: ignore[union-attr]
    with Client(daemon.socket_path) as client:  # READY=1 means it answers now
        assert client.ping() == "pong"
    assert daemon.stop() == 0
    assert daemon.notify.saw("STOPPING=1")


def test_watchdog_pings_at_half_the_period(daemon: Daemon) -> None:
    daemon.env_overrides = {"WATCHDOG_USEC": "400000"}  # 0.4 s: a ping every 0.2 s
    daemon.start()
    assert daemon.notify is not None
    time.sleep(1.2)
    pings = [m for m in daemon.notify.poll() if m == "WATCHDOG=1"]
    assert 3 <= len(pings) <= 9


def test_no_watchdog_pings_for_another_pid(daemon: Daemon) -> None:
    daemon.env_overrides = {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}
    daemon.start()
    assert daemon.notify is not None
    time.sleep(0.6)
    assert "WATCHDOG=1" not in daemon.notify.poll()


def test_state_changes_reach_systemd_as_status(daemon: Daemon) -> None:
    redis_server = RedisServer().start()
    try:
        daemon.env_overrides = {"MEMORYD_REDIS_URL": redis_server.url}
        daemon.start()
        redis_server.kill()
        assert daemon.notify is not None
        notify = daemon.notify
        wait_until(
            lambda: any(m.startswith("STATUS=degraded") for m in notify.poll()),
            15,
            "STATUS=degraded",
        )
        redis_server.start()
        wait_until(
            lambda: any(m.startswith("STATUS=healthy") for m in notify.poll()[-3:]),
            20,
            "STATUS=healthy again",
        )
    finally:
        redis_server.cleanup()


def test_sighup_reloads_limits_and_keeps_the_running_config_when_the_new_one_is_bad(
    daemon: Daemon,
) -> None:
    import signal

    from memoryd_client import errors

    config = daemon.directory / "memoryd.toml"
    config.write_text("max_batch = 5\n")
    daemon.start("--config", str(config))
    assert daemon.notify is not None
    records = [{"agent_id": "reload", "type": "note", "content": n} for n in range(8)]
    with Client(daemon.socket_path, retry=False) as client:
        with pytest.raises(errors.TooLarge):
            client.add_many(records)

        config.write_text("max_batch = 10\nwal_fsync = 'no'\n")
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: settings reloaded" in daemon.log(), 10, "the reload")
        assert len(client.add_many(records)) == 8
        assert "wal_fsync changed; that takes a restart" in daemon.log()
        assert client.status()["wal"]["fsync"] == "always"
        assert any("RELOADING=1" in m.splitlines() for m in daemon.notify.poll())

        config.write_text("max_batch = 0\n")  # invalid: the running config stays
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "keeping the running one" in daemon.log(), 10, "the refusal")
        assert len(client.add_many(records)) == 8
        assert client.ping() == "pong"


def test_watchdog_goes_quiet_while_wal_appends_are_stuck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from tests.harness import NotifyListener, short_tempdir
    from tests.inprocess import embedded_server

    directory = short_tempdir("mdw-")
    listener = NotifyListener(directory / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(directory / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    release = threading.Event()
    real = os.fdatasync

    def stuck_fdatasync(fd: int) -> None:
        release.wait(30)  # a disk that hangs
        real(fd)

    try:
        with embedded_server(directory, backend="local") as daemon:
            time.sleep(0.5)
            assert listener.poll().count("WATCHDOG=1") >= 2
            monkeypatch.setattr(os, "fdatasync", stuck_fdatasync)

            def write_one() -> None:
                with Client(daemon.socket_path, timeout_s=30) as client:
                    client.add("hang", "n", 1)

            writer = threading.Thread(target=write_one)
            writer.start()
            time.sleep(0.8)  # past twice the watchdog period
            listener.poll()  # drain what was sent before
            listener.messages.clear()
            time.sleep(0.6)
            assert "WATCHDOG=1" not in listener.poll(), "pinged while the WAL was stuck"
            release.set()
            writer.join(30)
            wait_until(lambda: "WATCHDOG=1" in listener.poll(), 5, "pings to resume")
    finally:
        release.set()
        listener.close()


def test_a_notify_socket_nobody_reads_never_blocks_the_daemon(daemon_dir: Daemon) -> None:
    """A Unix datagram queue holds net.unix.max_dgram_qlen messages (10 by default);
    past that a blocking send waits for the reader, and the whole event loop with it."""
    daemon = daemon_dir.start()  # READY=1 read; from here on nobody reads the socket
    for _ in range(12):  # each reload sends RELOADING=1 and READY=1
        daemon.signal(signal.SIGHUP)
        time.sleep(0.05)
    with Client(daemon.socket_path, timeout_s=5) as client:
        assert client.ping() == "pong"
    assert "does not take messages" in daemon.log()
    assert daemon.stop() == 0
