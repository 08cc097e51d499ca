"""Memories are readable by memoryd's own user alone.

Every directory memoryd creates is 0700 and every file 0600, whatever the
umask of whoever started it; what an older version left looser is tightened
at start; ``memoryd export -o`` writes 0600 unless ``--mode`` says otherwise.
Checked by the modes and, where it matters, from a real unprivileged user.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from memoryd.alerts import ALERTS_NAME
from memoryd.daemon import WAL_DIR_NAME
from memoryd.marker import MARKER_NAME
from memoryd.server import LOCK_NAME
from memoryd.stores.local import FILENAME as SQLITE_NAME
from memoryd.wal import CHECKPOINT_NAME, QUARANTINE_DIR, SEGMENT_SUFFIX, segment_name
from memoryd_client import Client
from tests.daemons import run_cli
from tests.harness import Daemon, LocalUser, short_tempdir
from tests.inprocess import embedded_server

LOCAL = {"MEMORYD_BACKEND": "local"}


@contextlib.contextmanager
def loose_umask() -> Iterator[None]:
    """The umask of most shells: what memoryd creates must not depend on it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree(root: Path) -> tuple[list[Path], list[Path]]:
    """(directories, files) under ``root``, ``root`` included."""
    directories: list[Path] = [root]
    files: list[Path] = []
    for path in sorted(root.rglob("*")):
        (directories if path.is_dir() else files).append(path)
    return directories, files


def modes(root: Path) -> dict[str, str]:
    directories, files = tree(root)
    return {str(path.relative_to(root)): f"{mode_of(path):04o}" for path in directories + files}


def test_another_local_user_can_read_nothing_memoryd_writes(
    unprivileged_user: LocalUser, daemon_dir: Daemon
) -> None:
    # No checkpoint while the files are looked at: it would add and remove files meanwhile.
    daemon_dir.env_overrides = {**LOCAL, "MEMORYD_CHECKPOINT_INTERVAL_S": "3600"}
    data_dir = daemon_dir.data_dir
    wal_dir = data_dir / WAL_DIR_NAME
    export = daemon_dir.directory / "export.jsonl"
    with loose_umask():
        daemon = daemon_dir.start()
        with Client(daemon.socket_path) as client:
            client.add("secrets", "note", "the first secret")
        assert daemon.stop() == 0
        # An older segment that is not a WAL segment: quarantined (and alerted) at the next start.
        (wal_dir / segment_name(0)).write_bytes(b"unreadable bytes " * 8)
        daemon.start()
        with Client(daemon.socket_path) as client:
            client.add("secrets", "note", "the second secret")
        exported = run_cli(
            "export", "--all", "-o", str(export), "--socket", str(daemon.socket_path)
        )
        assert exported.returncode == 0, exported.stderr
        # Looked at while the daemon runs, so that SQLite's -wal and -shm files exist.
        directories, files = tree(data_dir)
        names = {str(path.relative_to(data_dir)) for path in files}
        expected = {SQLITE_NAME, f"{SQLITE_NAME}-wal", f"{SQLITE_NAME}-shm", MARKER_NAME}
        expected |= {ALERTS_NAME, LOCK_NAME, f"{WAL_DIR_NAME}/{CHECKPOINT_NAME}"}
        assert expected <= names, sorted(names)
        own_segments = [
            name
            for name in names
            if name.endswith(SEGMENT_SUFFIX) and not name.endswith(segment_name(0))
        ]
        assert own_segments, sorted(names)
        assert any(name.startswith(f"{WAL_DIR_NAME}/{QUARANTINE_DIR}/") for name in names)
        secrets = [*files, export]

        # The test's own temporary directory opened up: data_dir still keeps the user out.
        daemon_dir.directory.chmod(0o755)
        for directory in directories:
            assert not unprivileged_user.can_list(directory), f"{directory} can be listed"
        # Every directory opened up too: each file still keeps the user out by its own mode.
        for directory in directories:
            directory.chmod(0o755)
        control = data_dir / "control.txt"
        control.write_text("readable on purpose")
        control.chmod(0o644)
        assert unprivileged_user.can_read(control), "the check is broken: a 0644 file is readable"
        readable = [str(path) for path in secrets if unprivileged_user.can_read(path)]
        assert readable == [], f"another user can read {readable}"
        assert {f"{mode_of(path):04o}" for path in secrets} == {"0600"}, modes(data_dir)


def test_looser_modes_left_by_an_older_version_are_tightened_at_start(
    daemon_dir: Daemon,
) -> None:
    daemon_dir.env_overrides = LOCAL
    with loose_umask():
        daemon = daemon_dir.start()
        with Client(daemon.socket_path) as client:
            client.add("older", "note", "kept by an older memoryd")
        assert daemon.stop() == 0
        # What an older version left (its files were created under the umask).
        directories, files = tree(daemon.data_dir)
        for directory in directories:
            directory.chmod(0o755)
        for path in files:
            path.chmod(0o644)
        daemon.start()
        assert {mode_of(path) for path in directories} == {0o700}, modes(daemon.data_dir)
        assert {mode_of(path) for path in files} == {0o600}, modes(daemon.data_dir)
        assert f"data/{SQLITE_NAME} 0644->0600" in daemon.log()
        assert "tightened" in daemon.log()
        with Client(daemon.socket_path) as client:
            assert [r["content"] for r in client.recent("older")] == ["kept by an older memoryd"]


def test_an_embedded_server_creates_private_files_without_the_cli_umask() -> None:
    directory = short_tempdir("mde-")
    with loose_umask(), embedded_server(directory, backend="local") as embedded:
        with Client(embedded.socket_path) as client:
            client.add("embedded", "note", "content")
        found = modes(directory / "data")
        assert f"{SQLITE_NAME}-wal" in found, found
        directories, files = tree(directory / "data")
        assert {mode_of(path) for path in directories} == {0o700}, found
        assert {mode_of(path) for path in files} == {0o600}, found


def test_export_writes_0600_unless_mode_says_otherwise(daemon_dir: Daemon) -> None:
    daemon_dir.env_overrides = LOCAL
    daemon = daemon_dir.start()
    with Client(daemon.socket_path) as client:
        client.add("exported", "note", "content")
    socket_args = ("--socket", str(daemon.socket_path))
    default = daemon.directory / "default.jsonl"
    with loose_umask():
        result = run_cli("export", "--all", "-o", str(default), *socket_args)
    assert result.returncode == 0, result.stderr
    assert mode_of(default) == 0o600
    # --mode is what the file gets, whatever the umask (a tight one here).
    shared = daemon.directory / "shared.jsonl"
    old_umask = os.umask(0o077)
    try:
        result = run_cli("export", "--all", "-o", str(shared), "--mode", "0644", *socket_args)
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stderr
    assert mode_of(shared) == 0o644
    assert "content" in shared.read_text()
    # A bad mode: an error naming the option, nothing written.
    refused = daemon.directory / "refused.jsonl"
    result = run_cli("export", "--all", "-o", str(refused), "--mode", "0999", *socket_args)
    assert result.returncode == 2
    assert "--mode" in result.stderr and "octal" in result.stderr
    assert not refused.exists() and not refused.with_name(refused.name + ".partial").exists()


def test_export_never_writes_through_a_planted_partial_file(daemon_dir: Daemon) -> None:
    daemon_dir.env_overrides = LOCAL
    daemon = daemon_dir.start()
    with Client(daemon.socket_path) as client:
        client.add("exported", "note", "a private memory")
    victim = daemon.directory / "victim"
    victim.write_text("precious")
    output = daemon.directory / "out.jsonl"
    output.with_name(output.name + ".partial").symlink_to(victim)
    result = run_cli("export", "--all", "-o", str(output), "--socket", str(daemon.socket_path))
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious"
    assert not output.is_symlink() and mode_of(output) == 0o600
    assert "a private memory" in output.read_text()


def test_missing_parents_of_a_private_directory_are_private_too(tmp_path: Path) -> None:
    from memoryd.permissions import make_private_dir  # here: the other tests run on old code too

    target = tmp_path / "a" / "b" / "c"
    with loose_umask():
        make_private_dir(target)
    assert [mode_of(path) for path in (target.parent.parent, target.parent, target)] == [0o700] * 3
    # An existing directory is left as it is: it may be shared on purpose.
    tmp_path.chmod(0o755)
    make_private_dir(tmp_path)
    assert mode_of(tmp_path) == 0o755


def test_tightening_leaves_what_is_not_memoryds_alone(daemon_dir: Daemon) -> None:
    """A data_dir set by mistake to a directory with other things in it (a home
    directory): only memoryd's own entries lose their group and other bits."""
    daemon_dir.env_overrides = LOCAL
    daemon_dir.data_dir.mkdir()
    daemon_dir.data_dir.chmod(0o755)  # chmod: the mode is the test's, whatever the umask
    theirs = daemon_dir.data_dir / "somebody-elses.txt"
    theirs.write_text("shared on purpose")
    theirs.chmod(0o644)
    shared_dir = daemon_dir.data_dir / "public"
    shared_dir.mkdir()
    shared_dir.chmod(0o755)
    daemon = daemon_dir.start()
    assert daemon.stop() == 0
    assert mode_of(theirs) == 0o644
    assert mode_of(shared_dir) == 0o755
    assert mode_of(daemon.data_dir) == 0o700


def test_a_data_dir_of_another_user_is_refused(
    daemon_dir: Daemon, unprivileged_user: LocalUser
) -> None:
    daemon_dir.data_dir.mkdir(mode=0o700)
    os.chown(daemon_dir.data_dir, unprivileged_user.uid, unprivileged_user.gid)
    daemon_dir.start(wait=False)
    assert daemon_dir.process is not None
    assert daemon_dir.process.wait(30) == 78
    assert f"belongs to uid {unprivileged_user.uid}" in daemon_dir.log()
    assert not (daemon_dir.data_dir / "wal").exists()
