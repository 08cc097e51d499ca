"""Real processes for the tests: redis-server and the memoryd daemon.

Nothing here fakes a server.  Redis runs from /usr/bin/redis-server on a
Unix socket in a private temporary directory (never the machine's shared
Redis on 6379); the daemon runs as ``python -m memoryd run`` and tells us it
is ready the way it tells systemd, through a NOTIFY_SOCKET we listen on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
LOOPBACK = "127.0.0.1"


def short_tempdir(prefix: str) -> Path:
    """A directory with a short path: a Unix socket path must fit in ~100 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def wait_until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def _can_connect(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _can_connect_tcp(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.connect((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_tcp_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class RedisServer:
    """One redis-server process on a Unix socket (and optionally a TCP port).

    ``tcp=True`` also listens on 127.0.0.1 at a free port, picked once, so that a
    restart (``kill`` then ``start``) comes back on the same port as on the same socket.
    """

    directory: Path = field(default_factory=lambda: short_tempdir("mdr-"))
    process: subprocess.Popen[bytes] | None = None
    tcp: bool = False
    port: int | None = None

    def __post_init__(self) -> None:
        if self.tcp and self.port is None:
            self.port = free_tcp_port()

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_address(self) -> tuple[str, int]:
        if self.port is None:
            raise ValueError("this redis-server listens on a Unix socket only (tcp=False)")
        return LOOPBACK, self.port

    @property
    def tcp_url(self) -> str:
        host, port = self.tcp_address
        return f"redis://{host}:{port}/0"

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = self.directory / "redis.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{tail}")
        if not _can_connect(self.socket_path):
            return False
        return self.port is None or _can_connect_tcp(self.port)

    def start(self, *extra_args: str) -> RedisServer:
        tcp_args = ["--port", str(self.port), "--bind", LOOPBACK] if self.port else ["--port", "0"]
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                *tcp_args,
                "--unixsocket",
                str(self.socket_path),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
                *extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._listening, 10, "redis-server to listen")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class SentinelSet:
    """A master with ``replicas`` replicas and ``sentinels`` sentinels, all on free
    TCP ports, watching the master as ``SERVICE``; quick to fail over (a master
    down for 500 ms is replaced)."""

    replicas: int = 2
    sentinels: int = 3
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rsent-")))
    servers: list[RedisServer] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)
    _sentinel_processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    SERVICE = "memoryd-test"

    def start(self) -> SentinelSet:
        master = RedisServer(tcp=True).start()
        self.servers.append(master)
        host, port = master.tcp_address
        for _ in range(self.replicas):
            self.servers.append(RedisServer(tcp=True).start("--replicaof", host, str(port)))
        for n in range(self.sentinels):
            self._start_sentinel(n, port)
        self.wait(lambda: all(self._replica_linked(s) for s in self.servers[1:]), "replication")
        self.wait(lambda: self.master_port() == port, "the sentinels to agree")
        return self

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            with (
                contextlib.suppress(redis.exceptions.RedisError),
                redis.Redis(LOOPBACK, port, socket_timeout=1) as conn,
            ):
                address = conn.sentinel_get_master_addr_by_name(self.SERVICE)
                if address:
                    return int(address[1])
        return None

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def wait(self, condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        for process in self._sentinel_processes:
            process.kill()
            process.wait(10)
        for server in self.servers:
            server.cleanup()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _start_sentinel(self, n: int, master_port: int) -> None:
        port = free_tcp_port()
        config = self.directory / f"sentinel-{n}.conf"
        config.write_text(
            f"port {port}\nbind {LOOPBACK}\ndir {self.directory}\n"
            f"sentinel monitor {self.SERVICE} {LOOPBACK} {master_port} 2\n"
            f"sentinel down-after-milliseconds {self.SERVICE} 500\n"
            f"sentinel failover-timeout {self.SERVICE} 2000\n"
            f"sentinel parallel-syncs {self.SERVICE} 1\n"
        )
        self._sentinel_processes.append(
            subprocess.Popen(
                [REDIS_SERVER, str(config), "--sentinel", "--logfile", f"{config}.log"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        self.sentinel_ports.append(port)
        self.wait(lambda: _can_connect_tcp(port), f"sentinel {n}")

    @staticmethod
    def _replica_linked(server: RedisServer) -> bool:
        with redis.Redis(unix_socket_path=str(server.socket_path)) as conn:
            return bool(conn.info("replication").get("master_link_status") == "up")


class NotifyListener:
    """A fake systemd NOTIFY_SOCKET: collects every datagram the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.append(data.decode())

    def saw(self, line: str) -> bool:
        return any(line in message.splitlines() for message in self.poll())

    def close(self) -> None:
        self.sock.close()


@dataclass
class Daemon:
    """``python -m memoryd run`` as a child process, with its own directories."""

    env_overrides: Mapping[str, str] = field(default_factory=dict)
    directory: Path = field(default_factory=lambda: short_tempdir("mdd-"))
    process: subprocess.Popen[bytes] | None = None
    notify: NotifyListener | None = None
    # RLIMIT_NOFILE (soft and hard) of the daemon process, as `ulimit -n` would set it.
    nofile_limit: int | None = None
    data_dir_override: Path | None = None

    @property
    def socket_path(self) -> Path:
        return self.directory / "memoryd.sock"

    @property
    def data_dir(self) -> Path:
        return self.data_dir_override or self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "daemon.log"

    def environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("MEMORYD_", "REDIS_", "ENABLE_REDIS", "MEMORY_", "NOTIFY_"))
        }
        env.update(
            MEMORYD_SOCKET_PATH=str(self.socket_path),
            MEMORYD_DATA_DIR=str(self.data_dir),
            MEMORYD_LOG_LEVEL="DEBUG",
            NOTIFY_SOCKET=str(self.directory / "notify.sock"),
        )
        env.update(self.env_overrides)
        return env

    def start(self, *args: str, wait: bool = True) -> Daemon:
        if self.notify is not None:
            self.notify.close()
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "notify.sock").unlink()
        self.notify = NotifyListener(self.directory / "notify.sock")
        log = self.log_path.open("ab")
        # prlimit(1) sets the limit and execs the daemon: same pid, as `ulimit -n` would.
        limit = self.nofile_limit
        prefix = [] if limit is None else ["prlimit", f"--nofile={limit}:{limit}"]
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "memoryd", "run", *args],
            env=self.environment(),
            stdout=log,
            stderr=log,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 20) -> None:
        assert self.notify is not None and self.process is not None

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
            return self.notify is not None and self.notify.saw("READY=1")

        wait_until(ready, timeout_s, "the daemon's READY=1")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = 20) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"daemon did not exit after SIGTERM:\n{self.log()}") from exc
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        self.kill()
        if self.notify is not None:
            self.notify.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def tiny_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``directory`` (needs root: CI runs as root)."""
    directory.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True
    )
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def fill_disk(directory: Path, name: str = "filler") -> Path:
    """Write a file under ``directory`` until the file system is full; the file."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size) == size:
                    pass
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def running_daemon(**env: str) -> Iterator[Daemon]:
    daemon = Daemon(env_overrides=env)
    try:
        yield daemon.start()
    finally:
        daemon.cleanup()


# Tools an unprivileged user can run: not this venv's python, which may live
# under a directory only root can enter.
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
SYSTEM_PYTHON = shutil.which("python3", path=SYSTEM_PATH) or "/usr/bin/python3"


@dataclass(frozen=True)
class LocalUser:
    """A real user of this machine without privileges, to act as 'another local user'."""

    name: str
    uid: int
    gid: int

    def _environment(self) -> dict[str, str]:
        return {"PATH": SYSTEM_PATH, "HOME": "/", "LC_ALL": "C"}

    def run(self, *args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command as this user (its own group, no supplementary groups)."""
        return subprocess.run(
            list(args),
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env=self._environment(),
            cwd="/",
            capture_output=True,
            text=True,
            errors="replace",  # `cat` of a binary file
            timeout=timeout_s,
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start a command as this user, its stdout and stderr piped."""
        return subprocess.Popen(
            list(args),
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env=self._environment(),
            cwd="/",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def can_read(self, path: Path) -> bool:
        return self.run("cat", str(path)).returncode == 0

    def can_list(self, path: Path) -> bool:
        return self.run("ls", str(path)).returncode == 0
