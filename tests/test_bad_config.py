"""Malformed configuration stops the daemon with one line (exit 78), and no secret leaks.

An adversarial run found URLs that passed ``check-config`` and then killed
``run`` with a 37-line traceback (which systemd restarts forever), a URL
without a host that meant the machine's shared Redis on localhost:6379, and
a password given as ``?password=`` shown in check-config, the log and status.
Each case here starts the real command in a subprocess; the malformed URLs
point at ports nobody listens on, so even a regression cannot reach a Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from memoryd_client import Client
from tests.daemons import clean_env, eventually, run_cli
from tests.harness import Daemon, RedisServer, free_tcp_port

EXIT_CONFIG = 78
SECRET = "pa55-w0rd-xyzzy"
DEAD_PORT = free_tcp_port()

BAD_URLS = {
    "port-word": f"redis://127.0.0.1:abc/0?password={SECRET}",
    "port-too-big": "redis://127.0.0.1:99999/0",
    "raw-hash-in-password": f"redis://user:{SECRET}#x@127.0.0.1:{DEAD_PORT}/0",
    "no-host": "redis://",
    "no-host-with-db": "redis:///0",
    "db-word": f"redis://127.0.0.1:{DEAD_PORT}/zz",
    "unknown-option": f"redis://127.0.0.1:{DEAD_PORT}/0?pasword={SECRET}",
    "slash-in-password": f"redis://u:{SECRET}/x@127.0.0.1:{DEAD_PORT}/0",
    "unix-without-path": "unix://",
    "scheme": f"http://127.0.0.1:{DEAD_PORT}/0",
    "sentinel-without-service": f"redis+sentinel://:{SECRET}@127.0.0.1:{DEAD_PORT}",
    "several-hosts-standalone": f"redis://:{SECRET}@127.0.0.1:{DEAD_PORT},127.0.0.1:1/0",
    "cluster-with-db": f"redis+cluster://:{SECRET}@127.0.0.1:{DEAD_PORT}/3",
}


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "memoryd", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[int, str]]]:
    """(exit code, stdout + stderr) of `run` and `check-config` for every bad URL, run at once."""
    tmp = tmp_path_factory.mktemp("bad-config")
    processes: dict[str, subprocess.Popen[str]] = {}
    for name, url in BAD_URLS.items():
        env = clean_env(
            MEMORYD_REDIS_URL=url,
            MEMORYD_DATA_DIR=str(tmp / name),
            MEMORYD_SOCKET_PATH=str(tmp / f"{name}.sock"),
        )
        processes[f"run/{name}"] = _start(["run"], env)
        processes[f"check/{name}"] = _start(["check-config"], env)
    not_a_dir = tmp / "a-file"
    not_a_dir.write_text("")
    processes["run/data-dir-is-a-file"] = _start(
        ["run"], clean_env(MEMORYD_DATA_DIR=str(not_a_dir), MEMORYD_SOCKET_PATH=str(tmp / "f.sock"))
    )
    processes["run/legacy-port"] = _start(
        ["run"],
        clean_env(REDIS_HOST="127.0.0.1", REDIS_PORT="abc", MEMORYD_DATA_DIR=str(tmp / "legacy")),
    )
    results: dict[str, tuple[int, str]] = {}
    deadline = time.monotonic() + 60
    try:
        for name, process in processes.items():
            try:
                out, err = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
                err += "\n(still running after 60 s: killed)"
            results[name] = (process.returncode, out + err)
        yield results
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("name", sorted(BAD_URLS))
@pytest.mark.parametrize("command", ["run", "check"])
def test_a_malformed_redis_url_is_one_line_and_exit_78(
    refused: dict[str, tuple[int, str]], command: str, name: str
) -> None:
    code, output = refused[f"{command}/{name}"]
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == EXIT_CONFIG, output
    assert len(lines) == 1, output
    assert "redis_url" in lines[0]
    assert "Traceback" not in output
    assert SECRET not in output


def test_a_data_dir_that_is_a_file_is_one_line_and_exit_78(
    refused: dict[str, tuple[int, str]],
) -> None:
    code, output = refused["run/data-dir-is-a-file"]
    assert code == EXIT_CONFIG, output
    assert output.strip().count("\n") == 0 and "data_dir" in output and "not a directory" in output


def test_a_bad_legacy_port_names_the_variable(refused: dict[str, tuple[int, str]]) -> None:
    code, output = refused["run/legacy-port"]
    assert code == EXIT_CONFIG, output
    assert output.strip().count("\n") == 0 and "REDIS_PORT" in output


# -- unknown MEMORYD_* variables ------------------------------------------------


def test_a_misspelt_variable_is_warned_about_with_a_suggestion() -> None:
    from memoryd.config import unknown_variables

    warnings = unknown_variables({"MEMORYD_WAL_FSYN": "always", "MEMORYD_WAL_FSYNC": "always"})
    assert warnings == [
        "MEMORYD_WAL_FSYN is not a memoryd setting (did you mean MEMORYD_WAL_FSYNC?); it is ignored"
    ]
    assert unknown_variables({"MEMORYD_SOCKET_PATH": "/x", "PATH": "/bin"}) == []


def test_check_config_and_run_warn_about_a_misspelt_variable(tmp_path: Path) -> None:
    env = clean_env(MEMORYD_WAL_FSYN="everysec", MEMORYD_DATA_DIR=str(tmp_path / "data"))
    done = run_cli("check-config", env=env)
    assert done.returncode == 0, done.stderr
    assert "MEMORYD_WAL_FSYN is not a memoryd setting" in done.stderr
    assert "MEMORYD_WAL_FSYNC" in done.stderr
    daemon = Daemon(env_overrides={"MEMORYD_WAL_FSYN": "everysec"})
    try:
        daemon.start()
        assert "MEMORYD_WAL_FSYN is not a memoryd setting" in daemon.log()
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()


# -- secrets ----------------------------------------------------------------------


@pytest.fixture
def password_redis() -> Iterator[RedisServer]:
    server = RedisServer(tcp=True).start("--requirepass", SECRET)
    try:
        yield server
    finally:
        server.cleanup()


def _admin(server: RedisServer, password: str = SECRET) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(server.socket_path), password=password)


def test_a_query_string_password_never_shows(password_redis: RedisServer) -> None:
    """check-config, the start-up log, status (text and JSON) and the status method."""
    host, port = password_redis.tcp_address
    url = f"redis://{host}:{port}/0?password={SECRET}"
    env = clean_env(MEMORYD_REDIS_URL=url, MEMORYD_DATA_DIR="/nonexistent-but-unused")
    done = run_cli("check-config", env=env)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert f"redis://{host}:{port}/0?password=***" in done.stdout

    daemon = Daemon(env_overrides={"MEMORYD_REDIS_URL": url})
    try:
        daemon.start()
        with Client(daemon.socket_path) as client:
            client.add("agent-1", "note", "hello")
            snapshot = client.status()
        assert snapshot["state"] == "healthy"
        assert SECRET not in json.dumps(snapshot)
        assert snapshot["store"]["address"] == f"redis://{host}:{port}/0?password=***"
        for args in (["status"], ["status", "--json"]):
            shown = run_cli(*args, "--socket", str(daemon.socket_path))
            assert shown.returncode == 0, shown.stdout + shown.stderr
            assert SECRET not in shown.stdout + shown.stderr
            assert "password=***" in shown.stdout
        assert daemon.stop() == 0
        log = daemon.log()
        assert "redis store at" in log
        assert SECRET not in log
    finally:
        daemon.cleanup()


@pytest.mark.parametrize("password", ["wrong-password", None], ids=["wrong", "missing"])
def test_a_wrong_or_missing_password_at_start_is_exit_78(
    password_redis: RedisServer, password: str | None
) -> None:
    host, port = password_redis.tcp_address
    auth = f":{password}@" if password else ""
    daemon = Daemon(env_overrides={"MEMORYD_REDIS_URL": f"redis://{auth}{host}:{port}/0"})
    try:
        daemon.start(wait=False)
        assert daemon.process is not None
        code = daemon.process.wait(30)
        log = daemon.log()
        assert code == EXIT_CONFIG, log
        assert "Traceback" not in log
        assert "redis_url" in log.splitlines()[-1]
        assert password is None or password not in log
    finally:
        daemon.cleanup()


def test_a_password_changed_at_run_time_raises_an_alert(password_redis: RedisServer) -> None:
    host, port = password_redis.tcp_address
    daemon = Daemon(env_overrides={"MEMORYD_REDIS_URL": f"redis://:{SECRET}@{host}:{port}/0"})
    try:
        daemon.start()
        with Client(daemon.socket_path) as client:
            client.add("agent-1", "note", "before")
            with _admin(password_redis) as admin:
                admin.config_set("requirepass", "rotated-elsewhere")
                admin.client_kill_filter(_type="normal", skipme=True)
            client.add("agent-1", "note", "after: kept in the WAL")

            def misconfigured() -> bool:
                status = client.status()
                return status["state"] == "degraded" and any(
                    alert["kind"] == "store_misconfigured" for alert in status["alerts"]
                )

            eventually(misconfigured, timeout_s=20, what="a misconfigured-store alert")
            status = client.status()
            assert "misconfigured" in status["reason"]
            shown = json.dumps(status)
            assert "rotated-elsewhere" not in shown and SECRET not in shown
            with _admin(password_redis, "rotated-elsewhere") as admin:
                admin.config_set("requirepass", SECRET)
            eventually(lambda: client.status()["state"] == "healthy", timeout_s=30, what="recovery")
            assert [r["content"] for r in client.recent("agent-1")] == [
                "after: kept in the WAL",
                "before",
            ]
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()


def test_an_acl_that_refuses_the_apply_script_does_not_flap(password_redis: RedisServer) -> None:
    """A user allowed PING and the marker's SET, but not EVALSHA: misconfigured, once."""
    host, port = password_redis.tcp_address
    with _admin(password_redis) as admin:
        admin.acl_setuser(
            "limited",
            enabled=True,
            passwords=["+limited-pw"],
            keys=["*"],
            channels=["*"],
            commands=["+@all", "-evalsha"],
        )
    daemon = Daemon(
        env_overrides={"MEMORYD_REDIS_URL": f"redis://limited:limited-pw@{host}:{port}/0"}
    )
    try:
        daemon.start()
        with Client(daemon.socket_path, timeout_s=20) as client:
            client.add("agent-1", "note", "kept in the WAL")
            eventually(
                client.status,
                lambda s: s["state"] == "degraded" and "misconfigured" in s["reason"],
                timeout_s=20,
                what="degraded, misconfigured",
            )
            changes = daemon.log().count("memoryd.health: health ")
            time.sleep(5)  # several rounds of three good pings and a passing marker
            assert client.status()["state"] == "degraded"
            assert daemon.log().count("memoryd.health: health ") == changes, daemon.log()
            with _admin(password_redis) as admin:
                admin.acl_setuser("limited", commands=["+evalsha"])
            eventually(
                lambda: client.status()["state"] == "healthy", timeout_s=30, what="healthy again"
            )
            assert [r["content"] for r in client.recent("agent-1")] == ["kept in the WAL"]
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
