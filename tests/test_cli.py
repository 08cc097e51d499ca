"""The ``memoryd`` command line: status, check-config, and run refusing a bad config.

Every command runs as ``python -m memoryd`` in a subprocess whose environment
holds no MEMORYD_*/REDIS_*/legacy variable of ours.  The commands that need no
daemon are started all at once (they spend their time importing) and the
tests then look at their results.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import memoryd
from memoryd import cli
from tests.daemons import Env, clean_env, run_cli

EXIT_CONFIG = 78
SECRET = "s3cr3t-Passw0rd"
STATUS_KEYS = {
    "state",
    "since",
    "reason",
    "version",
    "pid",
    "uptime_s",
    "socket",
    "store",
    "wal",
    "clients",
    "requests",
    "process",
}


# -- status ---------------------------------------------------------------------


def test_status_of_a_healthy_daemon_is_one_readable_screen(local_env: Env) -> None:
    done = run_cli("status", "--socket", str(local_env.socket_path))
    assert done.returncode == 0, done.stderr
    screen = done.stdout
    assert local_env.daemon.process is not None
    assert f"memoryd {memoryd.__version__}" in screen
    assert f"pid {local_env.daemon.process.pid}" in screen
    assert "HEALTHY" in screen
    assert str(local_env.socket_path) in screen
    assert "store" in screen and "local" in screen
    assert "fsync always" in screen
    assert "Traceback" not in done.stderr
    assert len(screen.splitlines()) <= 40  # one screen
    assert "{" not in screen.splitlines()[0]  # for a human, not JSON


def test_status_json_has_the_contract_keys(
    env: Env, environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_exit("status", "--socket", str(env.socket_path), "--json") == 0
    snapshot = json.loads(capsys.readouterr().out)
    assert snapshot.keys() >= STATUS_KEYS
    assert snapshot["state"] == "healthy"
    assert snapshot["version"] == memoryd.__version__
    assert env.daemon.process is not None
    assert snapshot["pid"] == env.daemon.process.pid
    assert snapshot["socket"] == str(env.socket_path)
    assert snapshot["store"]["kind"] == env.kind
    assert {"fsync", "segments", "bytes", "backlog_records"} <= snapshot["wal"].keys()


def test_status_uses_memoryd_socket_path_from_the_environment(
    local_env: Env, environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environ.setenv("MEMORYD_SOCKET_PATH", str(local_env.socket_path))
    assert main_exit("status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["socket"] == str(local_env.socket_path)


# -- everything that needs no daemon, started at once ----------------------------


@dataclass
class Case:
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[str] | None = None
    returncode: int = -1
    stdout: str = ""
    stderr: str = ""


def _cases(tmp: Path) -> dict[str, Case]:
    unknown_key = tmp / "unknown-key.toml"
    unknown_key.write_text('wal_fsync = "always"\ncolour = "blue"\n')

    def env(**extra: str) -> dict[str, str]:
        return clean_env(MEMORYD_DATA_DIR=str(tmp / "data"), **extra)

    def run_env(name: str, **extra: str) -> dict[str, str]:
        return env(MEMORYD_SOCKET_PATH=str(tmp / f"{name}.sock"), **extra)

    missing = str(tmp / "nobody-here.sock")
    return {
        "status-missing": Case(["status", "--socket", missing, "--timeout", "0.5"], env()),
        "status-missing-json": Case(
            ["status", "--socket", missing, "--timeout", "0.5", "--json"], env()
        ),
        "check-masked": Case(["check-config"], env(MEMORYD_REDIS_URL=f"redis://u:{SECRET}@h:1/0")),
        "bad-max-memories": Case(["check-config"], env(MEMORYD_MAX_MEMORIES="0")),
        "run-bad-env": Case(["run"], run_env("run-bad-env", MEMORYD_MAX_MEMORIES="0")),
        "run-bad-toml": Case(["run", "--config", str(unknown_key)], run_env("run-bad-toml")),
    }


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def results(cli_dir: Path) -> Iterator[dict[str, Case]]:
    cases = _cases(cli_dir)
    try:
        for case in cases.values():
            case.process = subprocess.Popen(
                [sys.executable, "-m", "memoryd", *case.args],
                env=case.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        for case in cases.values():
            assert case.process is not None
            case.stdout, case.stderr = case.process.communicate(timeout=60)
            case.returncode = case.process.returncode
        yield cases
    finally:
        for case in cases.values():
            if case.process is not None and case.process.poll() is None:
                case.process.kill()
                case.process.wait()


def test_status_exits_2_when_nothing_listens(results: dict[str, Case]) -> None:
    case = results["status-missing"]
    assert case.returncode == 2, (case.stdout, case.stderr)
    assert "unreachable" in case.stdout
    assert "Traceback" not in case.stderr
    case = results["status-missing-json"]
    assert case.returncode == 2, case.stderr
    assert json.loads(case.stdout)["state"] == "unreachable"


def test_status_exits_2_for_a_socket_nobody_listens_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))  # the file stays; nothing listens
    assert main_exit("status", "--socket", str(stale), "--timeout", "0.3") == 2
    assert "unreachable" in capsys.readouterr().out


def _settings_of(stdout: str) -> dict[str, object]:
    settings = {}
    for line in stdout.splitlines():
        name, _, value = line.partition(" = ")
        settings[name] = json.loads(value)
    return settings


def test_check_config_prints_the_effective_settings_with_the_password_masked(
    results: dict[str, Case],
) -> None:
    case = results["check-masked"]
    assert case.returncode == 0, case.stderr
    assert SECRET not in case.stdout + case.stderr
    settings = _settings_of(case.stdout)
    assert settings["redis_url"] == "redis://u:***@h:1/0"
    assert settings["store"] == "redis"
    assert settings["max_memories"] == 1000
    assert settings["default_ttl_s"] == 604800
    assert settings["wal_fsync"] == "always"


def test_check_config_refuses_a_bad_value_with_one_line_naming_it(
    results: dict[str, Case],
) -> None:
    case = results["bad-max-memories"]
    assert case.returncode != 0
    lines = [line for line in case.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, case.stderr
    assert "max_memories" in lines[0]
    assert case.stdout == ""


@pytest.mark.parametrize(
    ("name", "setting"), [("run-bad-env", "max_memories"), ("run-bad-toml", "colour")]
)
def test_run_with_a_bad_config_exits_78_without_creating_the_socket(
    results: dict[str, Case], cli_dir: Path, name: str, setting: str
) -> None:
    case = results[name]
    assert case.returncode == EXIT_CONFIG, case.stderr
    assert setting in case.stderr
    assert "Traceback" not in case.stderr
    assert not (cli_dir / f"{name}.sock").exists()
    assert not (cli_dir / "data" / "wal").exists()


# -- the same entry point in this process, for the many variants -----------------------


def main_exit(*argv: str) -> int:
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    code = exited.value.code
    return code if isinstance(code, int) else 1


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """This process's environment without our variables, data under tmp_path."""
    for name in list(os.environ):
        if name.startswith(("MEMORYD_", "REDIS_", "ENABLE_REDIS", "MEMORY_", "NOTIFY_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MEMORYD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEMORYD_SOCKET_PATH", str(tmp_path / "memoryd.sock"))
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        (
            {"REDIS_HOST": "redis.example", "REDIS_PORT": "6380", "REDIS_PASSWORD": SECRET},
            [],
            "redis://:***@redis.example:6380/0",
        ),
        (
            {"REDIS_URL": f"redis://admin:{SECRET}@h:6379/1"},
            [],
            "redis://admin:***@h:6379/1",
        ),
        ({}, ["--redis-url", f"rediss://admin:{SECRET}@h:6379/2"], "rediss://admin:***@h:6379/2"),
        ({"MEMORYD_REDIS_URL": f"unix://:{SECRET}@/run/redis.sock"}, [], None),
    ],
    ids=["legacy-parts", "legacy-url", "flag", "unix-url"],
)
def test_check_config_masks_every_way_of_giving_a_password(
    environ: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    argv: list[str],
    expected: str | None,
) -> None:
    for name, value in env.items():
        environ.setenv(name, value)
    assert main_exit("check-config", *argv) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    settings = _settings_of(out)
    assert settings["store"] == "redis"
    assert "***" in str(settings["redis_url"])
    if expected is not None:
        assert settings["redis_url"] == expected


def test_check_config_reads_a_toml_file(
    environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "memoryd.toml"
    config.write_text('max_memories = 42\nwal_fsync = "everysec"\n')
    assert main_exit("check-config", "--config", str(config)) == 0
    settings = _settings_of(capsys.readouterr().out)
    assert settings["max_memories"] == 42
    assert settings["wal_fsync"] == "everysec"
    assert settings["store"] == "local"


@pytest.mark.parametrize(
    ("env", "toml", "setting"),
    [
        ({"MEMORYD_MAX_MEMORIES": "0"}, None, "max_memories"),
        ({"MEMORYD_MAX_MEMORIES": "many"}, None, "max_memories"),
        ({"MEMORYD_WAL_FSYNC": "sometimes"}, None, "wal_fsync"),
        ({"MEMORYD_DEFAULT_TTL_S": "-1"}, None, "default_ttl_s"),
        ({"MEMORYD_BACKEND": "postgres"}, None, "backend"),
        ({"MEMORYD_REDIS_URL": "http://h:1/0"}, None, "redis_url"),
        ({"MEMORYD_KEY_PREFIX": "{tag}"}, None, "key_prefix"),
        ({"ENABLE_REDIS": "maybe"}, None, "ENABLE_REDIS"),
        ({"MEMORY_MAX_SIZE": "lots"}, None, "max_memories"),
        ({}, 'colour = "blue"\n', "colour"),
        ({}, "max_batch = 0\n", "max_batch"),
        ({}, 'wal_fsync = "sometimes"\n', "wal_fsync"),
        ({}, "max_memories = [1, 2\n", "memoryd.toml"),
    ],
    ids=[
        "max-memories-zero",
        "max-memories-word",
        "wal-fsync",
        "ttl-negative",
        "backend",
        "redis-url-scheme",
        "key-prefix-braces",
        "enable-redis",
        "legacy-max-size",
        "toml-unknown-key",
        "toml-bad-value",
        "toml-bad-choice",
        "toml-syntax",
    ],
)
def test_check_config_refuses_bad_values(
    environ: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    env: dict[str, str],
    toml: str | None,
    setting: str,
) -> None:
    for name, value in env.items():
        environ.setenv(name, value)
    argv = ["check-config"]
    if toml is not None:
        config = tmp_path / "memoryd.toml"
        config.write_text(toml)
        argv += ["--config", str(config)]
    assert main_exit(*argv) != 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert setting in lines[0]
    assert out == ""


def test_check_config_refuses_a_missing_config_file(
    environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main_exit("check-config", "--config", str(tmp_path / "absent.toml")) != 0
    err = capsys.readouterr().err
    assert "absent.toml" in err and len(err.strip().splitlines()) == 1


def test_run_with_a_bad_legacy_value_exits_78_in_process(
    environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    environ.setenv("MEMORY_TTL", "a week")
    assert main_exit("run") == EXIT_CONFIG
    assert "default_ttl_s" in capsys.readouterr().err
    assert not (tmp_path / "memoryd.sock").exists()
