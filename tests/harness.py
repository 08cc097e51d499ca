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
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
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


CLUSTER_HASH_SLOTS = 16384  # every Redis Cluster has exactly these, 0..16383

# One contiguous run of slots as CLUSTER SLOTS gives it: first slot, last slot, the master's
# port, and its replicas' ports (sorted: nodes list replicas in their own order).
SlotRange = tuple[int, int, int, tuple[int, ...]]


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of CLUSTER NODES: a node as the node asked sees it (not the truth, a view)."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None

    @property
    def is_live_master(self) -> bool:
        """A master not marked failed: ``fail`` (agreed) or ``fail?`` (suspected)."""
        return "master" in self.flags and not self.flags & {"fail", "fail?"}

    def without_myself(self) -> ClusterNodeView:
        """The same view less the ``myself`` flag, to compare what two nodes see."""
        return ClusterNodeView(self.node_id, self.port, self.flags - {"myself"}, self.master_id)

    @classmethod
    def parse(cls, line: str) -> ClusterNodeView:
        # <id> <ip:port@cport[,hostname]> <flags> <master-id|-> <ping> <pong> <epoch> <link> ...
        node_id, address, flags, master_id = line.split()[:4]
        host_port = address.split(",")[0].split("@")[0]
        return cls(
            node_id=node_id,
            port=int(host_port.rsplit(":", 1)[1]),
            flags=frozenset(flags.split(",")),
            master_id=None if master_id == "-" else master_id,
        )


@dataclass
class SlotMove:
    """One slot half-way from one master to another: IMPORTING set on the target, MIGRATING
    on the source, and as many keys moved as the test asked for.  In between, the source
    answers ASK for a key it no longer has and TRYAGAIN for a multi-key command whose keys
    are split; the target serves the slot only after ASKING.  ``ClusterSet.finish_move`` ends it.
    """

    cluster: ClusterSet = field(repr=False)
    slot: int
    source_port: int
    target_port: int
    keys_moved: int = 0

    def migrate_keys(self, count: int | None = None) -> int:
        """Move up to ``count`` of the slot's keys (all of them if None) with MIGRATE, in
        batches of 100 as an operator's script would; how many moved in this call."""
        moved = 0
        with self.cluster.connect(self.source_port, decode=False, timeout_s=10) as conn:
            while count is None or moved < count:
                batch = 100 if count is None else min(100, count - moved)
                keys = conn.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, batch)
                if not keys:
                    break
                # "" and KEYS: several keys at once; db 0, the only one a cluster has.
                conn.execute_command(
                    "MIGRATE", LOOPBACK, self.target_port, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
                moved += len(keys)
        self.keys_moved += moved
        return moved


@dataclass
class ClusterSet:
    """A Redis Cluster: ``masters`` masters with ``replicas_per_master`` replicas each, every
    node a ``RedisServer`` on a free loopback port with its own nodes.conf in its own directory.

    It is built and changed the way an operator does it, not simulated: ``redis-cli --cluster
    create``, slots resharded live with IMPORTING/MIGRATING, MIGRATE and SETSLOT NODE (so a
    client sees real MOVED, ASK and TRYAGAIN), a master failed with kill -9 (so a replica is
    elected by the cluster itself).  Quick to fail over: a master silent for 1 s is suspected,
    and a replica has taken its slots a few seconds later.
    """

    masters: int = 3
    replicas_per_master: int = 1
    directory: Path = field(default_factory=lambda: short_tempdir("rclu-"))
    servers: list[RedisServer] = field(default_factory=list)
    # The masters when the cluster was created: the url's seed nodes, kept after a failover
    # (a client is to try the next seed when one is dead, as it would in production).
    seed_ports: list[int] = field(default_factory=list)
    _node_ids: dict[int, str] = field(default_factory=dict)

    NODE_TIMEOUT_MS = 1000

    def start(self) -> ClusterSet:
        """Start the nodes, create the cluster, and return once it is settled: every node
        says cluster_state:ok, every replica's link is up, and all agree on the slot map.
        Half-started, it cleans up after itself: no node outlives a failed start."""
        try:
            return self._start()
        except BaseException:
            self.cleanup()
            raise

    def _start(self) -> ClusterSet:
        for n in range(self.masters * (1 + self.replicas_per_master)):
            node_dir = self.directory / f"node-{n}"
            node_dir.mkdir()
            server = RedisServer(directory=node_dir, tcp=True)
            self.servers.append(server)  # before start(): cleanup() kills it if start fails
            server.start(*self._node_args(server))
        for server in self.servers:
            with self.connect(self._port(server)) as conn:
                self._node_ids[self._port(server)] = str(conn.execute_command("CLUSTER", "MYID"))
        self._create()
        self.wait(self._all_nodes_known, "every node to know every other")
        self.wait(self.settled, "the cluster to settle")
        self.seed_ports = self.master_ports()
        if len(self.seed_ports) != self.masters:
            raise AssertionError(f"expected {self.masters} masters, got {self.seed_ports}")
        return self

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{port}" for port in self.seed_ports)
        return f"redis+cluster://{hosts}"

    def connect(self, port: int, *, decode: bool = True, timeout_s: float = 2) -> redis.Redis:
        """A plain connection to one node, used in a ``with``: no redirect followed and no
        retry (redis-py's default retries a refused connection for seconds), so what comes
        back is that node's own answer now."""
        return redis.Redis(
            LOOPBACK,
            port,
            socket_timeout=timeout_s,
            decode_responses=decode,
            retry=Retry(NoBackoff(), 0),
        )

    def live_ports(self) -> list[int]:
        """The nodes whose process runs (a node killed by ``failover`` is not among them)."""
        return [
            self._port(server)
            for server in self.servers
            if server.process is not None and server.process.poll() is None
        ]

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def node_id(self, port: int) -> str:
        return self._node_ids[port]

    def nodes(self, port: int | None = None) -> list[ClusterNodeView]:
        """CLUSTER NODES as the node on ``port`` (by default the first live one) sees it."""
        with self.connect(self._any_live(port)) as conn:
            reply = str(conn.execute_command("CLUSTER", "NODES"))
        return [ClusterNodeView.parse(line) for line in reply.splitlines() if line.strip()]

    def master_ports(self) -> list[int]:
        """The ports of the masters not marked failed, as a live node sees them, sorted."""
        return sorted(view.port for view in self.nodes() if view.is_live_master)

    def replica_ports(self, master_port: int) -> list[int]:
        """The ports of the replicas of the master on ``master_port`` not marked failed, sorted."""
        master_id = self.node_id(master_port)
        return sorted(
            view.port
            for view in self.nodes()
            if view.master_id == master_id and not view.flags & {"fail", "fail?"}
        )

    def slot_map(self, port: int | None = None) -> tuple[SlotRange, ...]:
        """CLUSTER SLOTS of the node on ``port`` (by default the first live one), sorted."""
        with self.connect(self._any_live(port)) as conn:
            reply = conn.execute_command("CLUSTER", "SLOTS")
        return tuple(
            sorted(
                (
                    int(entry[0]),
                    int(entry[1]),
                    int(entry[2][1]),
                    tuple(sorted(int(node[1]) for node in entry[3:])),
                )
                for entry in reply
            )
        )

    def key_slot(self, key: str) -> int:
        """``key``'s hash slot as the server computes it (hash tags and all), not a copy."""
        with self.connect(self.live_ports()[0]) as conn:
            return int(conn.execute_command("CLUSTER", "KEYSLOT", key))

    def slot_owner(self, slot: int, port: int | None = None) -> int:
        """The port of the master serving ``slot``, as the node on ``port`` sees it."""
        for first, last, master, _ in self.slot_map(port):
            if first <= slot <= last:
                return master
        raise LookupError(f"no node serves slot {slot}")

    def node_for_key(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        return self.slot_owner(self.key_slot(key))

    def move_slot(self, slot: int, to_port: int) -> None:
        """Reshard ``slot`` live to the master on ``to_port``, keys and all."""
        self.finish_move(self.begin_move(slot, to_port))

    def begin_move(self, slot: int, to_port: int) -> SlotMove:
        """Mark ``slot`` IMPORTING on the target then MIGRATING on the source (the documented
        order: the target must accept ASKING before the source starts sending clients to it);
        no key moved yet."""
        source = self.slot_owner(slot)
        if to_port == source:
            raise ValueError(f"slot {slot} is already on {to_port}")
        if to_port not in self.master_ports():
            raise ValueError(f"{to_port} is not a live master: {self.master_ports()}")
        with self.connect(to_port) as conn:
            conn.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        with self.connect(source) as conn:
            conn.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(to_port))
        return SlotMove(self, slot, source, to_port)

    def finish_move(self, move: SlotMove) -> None:
        """Move the keys left, give the slot to the target with SETSLOT NODE on the target,
        the source, then every other master, and wait until every node agrees on its owner."""
        move.migrate_keys()
        owner = self.node_id(move.target_port)
        others = [
            port for port in self.master_ports() if port not in (move.source_port, move.target_port)
        ]
        for port in (move.target_port, move.source_port, *others):
            with self.connect(port) as conn:
                conn.execute_command("CLUSTER", "SETSLOT", move.slot, "NODE", owner)

        def moved() -> bool:
            try:
                return self.settled() and all(
                    self.slot_owner(move.slot, port) == move.target_port
                    for port in self.live_ports()
                )
            except (redis.exceptions.RedisError, LookupError):
                return False

        self.wait(moved, f"every node to see slot {move.slot} on {move.target_port}")

    @contextlib.contextmanager
    def move_slot_in_steps(self, slot: int, to_port: int) -> Iterator[SlotMove]:
        """``begin_move`` on entry, ``finish_move`` on a normal exit: inside, the slot is
        half-moved and ``migrate_keys(n)`` moves some of its keys.  An exception inside
        leaves it half-moved (``cleanup`` discards the cluster anyway)."""
        move = self.begin_move(slot, to_port)
        yield move
        self.finish_move(move)

    def failover(self, port: int) -> int:
        """kill -9 (SIGKILL: no goodbye to the others) the master on ``port``, wait until one
        of its replicas holds all its slots and the survivors are settled again; the new
        master's port."""
        if port not in self.master_ports():
            raise ValueError(f"{port} is not a live master: {self.master_ports()}")
        replicas = self.replica_ports(port)
        if not replicas:
            raise ValueError(f"the master on {port} has no replica to take over")
        old_slots = [first for first, _, master, _ in self.slot_map() if master == port]
        self.server_on(port).kill()

        def new_master() -> int | None:
            try:
                owners = {
                    self.slot_owner(slot, survivor)
                    for survivor in self.live_ports()
                    for slot in old_slots
                }
            except (redis.exceptions.RedisError, LookupError):
                return None
            owner = owners.pop() if len(owners) == 1 else None
            return owner if owner in replicas else None

        self.wait(lambda: new_master() is not None and self.settled(), "a replica to take over")
        promoted = new_master()
        assert promoted is not None
        return promoted

    def settled(self) -> bool:
        """Every live node says cluster_state:ok, every live replica's link to its master is
        up, all live nodes give the same CLUSTER SLOTS and the same CLUSTER NODES, and CLUSTER
        SLOTS lists every live replica under its master (Redis leaves out a replica until its
        replication offset is past 0: a client reading it then would not see the replicas)."""
        views: set[tuple[tuple[SlotRange, ...], frozenset[ClusterNodeView]]] = set()
        try:
            for port in self.live_ports():
                with self.connect(port) as conn:
                    info = _fields(str(conn.execute_command("CLUSTER", "INFO")))
                    replication = conn.info("replication")
                if info.get("cluster_state") != "ok":
                    return False
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
                nodes = frozenset(view.without_myself() for view in self.nodes(port))
                views.add((self.slot_map(port), nodes))
        except redis.exceptions.RedisError:
            return False
        if len(views) != 1:
            return False
        slot_map, nodes = views.pop()
        live = [view for view in nodes if not view.flags & {"fail", "fail?"}]
        for _, _, master_port, replica_ports in slot_map:
            master_id = self.node_id(master_port)
            listed = sorted(view.port for view in live if view.master_id == master_id)
            if list(replica_ports) != listed:
                return False
        return True

    def wait(self, condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def restart(self, port: int) -> None:
        """Start the node on ``port`` again after a kill, with its nodes.conf: it
        rejoins, a replica of its replacement if it was a master that failed over."""
        server = self.server_on(port)
        server.start(*self._node_args(server))
        self.wait(self.settled, "the cluster to settle with the node back")

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _node_args(self, server: RedisServer) -> list[str]:
        return [
            "--cluster-enabled",
            "yes",
            # An absolute path in the node's own directory: two nodes never share a nodes.conf.
            "--cluster-config-file",
            str(server.directory / "nodes.conf"),
            # A free port of its own for the bus: the default, port + 10000, may be taken or
            # beyond 65535 for a port the kernel picked.
            "--cluster-port",
            str(free_tcp_port()),
            "--cluster-node-timeout",
            str(self.NODE_TIMEOUT_MS),
            # A replica may always take over, however long its link was down: failovers in a
            # test are to happen, not to depend on how long the test ran before.
            "--cluster-replica-validity-factor",
            "0",
            # Replicas stay where they were put: the topology changes only when a test says so.
            "--cluster-allow-replica-migration",
            "no",
            # A replica's first sync starts at once, not after the default 5 s wait for others.
            "--repl-diskless-sync-delay",
            "0",
            # The master pings its replicas every second, not every 10: that moves their
            # replication offset past 0, which CLUSTER SLOTS waits for to list a replica.
            "--repl-ping-replica-period",
            "1",
        ]

    def _create(self) -> None:
        # One host: redis-cli makes masters of the first `masters` addresses, the rest replicas.
        addresses = [f"{LOOPBACK}:{self._port(server)}" for server in self.servers]
        result = subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(self.replicas_per_master),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        (self.directory / "create.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}"
            )

    def _all_nodes_known(self) -> bool:
        try:
            return all(len(self.nodes(port)) == len(self.servers) for port in self.live_ports())
        except redis.exceptions.RedisError:
            return False

    def _any_live(self, port: int | None) -> int:
        return port if port is not None else self.live_ports()[0]

    @staticmethod
    def _port(server: RedisServer) -> int:
        return server.tcp_address[1]


def _fields(text: str) -> dict[str, str]:
    """``name:value`` lines (CLUSTER INFO) as a dict."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


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
