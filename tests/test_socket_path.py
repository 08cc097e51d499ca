"""The daemon's socket path: only a directory of its own user, only its own stale socket.

A directory someone else owns or may write to would let them take the path
or replace a running daemon's socket; whatever is at the path and is not a
stale socket of the daemon's euid may be someone's, and is kept.  Each is a
configuration error: exit 78, one line naming ``socket_path``.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from memoryd.config import load_settings
from memoryd_client import Client, wire
from tests.harness import Daemon, LocalUser

EXIT_CONFIG = 78


def run_once(daemon: Daemon, timeout_s: float = 15) -> subprocess.CompletedProcess[str]:
    """``memoryd run`` that is expected to refuse to start, and so to exit at once."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "memoryd", "run"],
            env={**daemon.environment(), "NOTIFY_SOCKET": ""},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"memoryd started (still running after {timeout_s} s) instead of refusing")


def refusal(daemon: Daemon) -> str:
    """The one line of a start refused for its socket_path."""
    result = run_once(daemon)
    assert result.returncode == EXIT_CONFIG, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    path = daemon.environment()["MEMORYD_SOCKET_PATH"]
    assert line.startswith(f"memoryd: bad configuration: socket_path {path}: "), line
    return line


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a kill -9 leaves one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def test_a_regular_file_at_the_socket_path_is_kept(daemon_dir: Daemon) -> None:
    daemon_dir.socket_path.write_text("someone's file")
    assert "holds a regular file, not a socket" in refusal(daemon_dir)
    assert daemon_dir.socket_path.read_text() == "someone's file"


def test_a_stale_socket_of_another_user_is_kept(
    daemon_dir: Daemon, unprivileged_user: LocalUser
) -> None:
    stale_socket(daemon_dir.socket_path)
    os.chown(daemon_dir.socket_path, unprivileged_user.uid, unprivileged_user.gid)
    assert f"holds a socket of uid {unprivileged_user.uid}" in refusal(daemon_dir)
    assert stat.S_ISSOCK(daemon_dir.socket_path.lstat().st_mode)


def test_a_socket_directory_of_another_user_is_refused(
    daemon_dir: Daemon, unprivileged_user: LocalUser
) -> None:
    theirs = daemon_dir.directory / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, unprivileged_user.uid, unprivileged_user.gid)
    daemon_dir.env_overrides = {"MEMORYD_SOCKET_PATH": str(theirs / "memoryd.sock")}
    line = refusal(daemon_dir)
    assert f"its directory {theirs} belongs to uid {unprivileged_user.uid}" in line
    assert list(theirs.iterdir()) == []


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770], ids=["others", "sticky", "group"])
def test_a_socket_directory_writable_by_others_is_refused(daemon_dir: Daemon, mode: int) -> None:
    shared = daemon_dir.directory / "shared"
    shared.mkdir()
    shared.chmod(mode)
    daemon_dir.env_overrides = {"MEMORYD_SOCKET_PATH": str(shared / "memoryd.sock")}
    assert f"writable by group or others (mode {mode:04o})" in refusal(daemon_dir)
    assert list(shared.iterdir()) == []


def test_a_missing_socket_directory_is_created_private(daemon_dir: Daemon) -> None:
    nested = daemon_dir.directory / "run" / "memoryd"
    daemon_dir.env_overrides = {"MEMORYD_SOCKET_PATH": str(nested / "memoryd.sock")}
    old_umask = os.umask(0o022)
    try:
        daemon = daemon_dir.start()
    finally:
        os.umask(old_umask)
    assert [stat.S_IMODE(p.stat().st_mode) for p in (nested.parent, nested)] == [0o700, 0o700]
    with Client(nested / "memoryd.sock") as client:
        assert client.ping() == "pong"
    assert daemon.stop() == 0


def test_a_socket_path_too_long_for_unix_sockets_is_refused_clearly(daemon_dir: Daemon) -> None:
    deep = daemon_dir.directory / ("d" * 60) / ("e" * 60)
    daemon_dir.env_overrides = {"MEMORYD_SOCKET_PATH": str(deep / "memoryd.sock")}
    line = refusal(daemon_dir)
    assert f"longer than the {wire.MAX_SOCKET_PATH_BYTES} bytes a Unix socket path can have" in line
    assert not deep.exists()


def test_the_default_socket_path_is_in_a_directory_of_the_user() -> None:
    assert wire.socket_path_for(0, "/run/user/0", "/root") == "/run/memoryd/memoryd.sock"
    assert (
        wire.socket_path_for(1000, "/run/user/1000", "/home/ada")
        == "/run/user/1000/memoryd/memoryd.sock"
    )
    # Without XDG_RUNTIME_DIR (or with one that is not absolute): under the home, not /tmp.
    for runtime_dir in ("", "relative/dir"):
        assert (
            wire.socket_path_for(1000, runtime_dir, "/home/ada")
            == "/home/ada/.local/state/memoryd/memoryd.sock"
        )


def test_the_daemon_and_the_client_share_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MEMORYD_"):
            monkeypatch.delenv(name)
    assert load_settings().socket_path == Path(wire.default_socket_path())
    assert Client().socket_path == wire.default_socket_path()
