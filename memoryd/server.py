"""The daemon's lifecycle: startup, serving, and an orderly shutdown.

startup: recover the WAL into the backlog, connect the store (an unreachable
store is not fatal: the daemon starts degraded), start the flusher, the
health probe and the expiry sweep, listen, tell systemd READY=1.

shutdown (SIGTERM/SIGINT): STOPPING=1, stop accepting connections, answer
new requests with ``shutting_down``, let in-flight requests finish, drain the
backlog into the store, checkpoint, close the WAL and the store.  Everything
is bounded by ``shutdown_timeout_s``; what does not reach the store in time
stays in the WAL for the next start.  A second signal skips the waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from memoryd import __version__, permissions, socketpath
from memoryd.alerts import ALERTS_NAME
from memoryd.config import Settings
from memoryd.connections import ConnectionLimits
from memoryd.daemon import WAL_DIR_NAME, Components
from memoryd.errors import ConfigError, FatalError
from memoryd.maintenance import WatchdogFeeder
from memoryd.marker import MARKER_NAME
from memoryd.socketpath import LISTEN_BACKLOG
from memoryd.stores.base import StoreError, StoreMisconfigured, StoreUnavailable
from memoryd.stores.local import FILES as SQLITE_FILES
from memoryd.systemd import watchdog_interval_s
from memoryd.transport import Connection
from memoryd.wal import QUARANTINE_DIR, Recovery, WalFullError

logger = logging.getLogger(__name__)

# Settings SIGHUP applies to a running daemon; the others take a restart.
RELOADABLE = frozenset(
    {
        "log_level",
        "default_ttl_s",
        "max_record_bytes",
        "max_batch",
        "sweep_interval_s",
        "wal_max_bytes",
        "min_free_disk_bytes",
        "checkpoint_interval_s",
        "flush_batch_max",
        "flush_batch_max_bytes",
        "wal_retain_bytes",
        "wal_retain_s",
        "read_cache_per_agent",
        "read_cache_records",
        "max_message_bytes",
        "max_connections",
        "max_connections_per_uid",
        "max_inflight_per_connection",
        "message_timeout_s",
        "idle_timeout_s",
        "request_timeout_s",
        "read_barrier_timeout_s",
        "shutdown_timeout_s",
    }
)

LOCK_NAME = "memoryd.lock"
# A background task that fails with an OSError (no file descriptors left, a
# full disk) is started again after this long; any other failure is a bug.
TASK_RESTART_S = 1.0


class Server:
    def __init__(self, parts: Components, *, reload: Callable[[], Settings] | None = None) -> None:
        self.parts = parts
        self._reload = reload
        self.should_exit = asyncio.Event()
        self.force_exit = False
        self.fatal_error: BaseException | None = None
        self.fatal_reason = ""
        self._serving = False
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock_fd: int | None = None
        self._owns_socket = False

    # ------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        """Run until a signal or a fatal WAL error; raise the latter."""
        self._install_signal_handlers()
        try:
            await self.startup()
            await self.should_exit.wait()
        finally:
            await self.shutdown()
            self._remove_signal_handlers()
        if self.fatal_error is not None:
            raise FatalError(self.fatal_reason) from self.fatal_error

    async def startup(self) -> None:
        logger.info(
            "memoryd %s starting (pid %d, store %s, fsync %s)",
            __version__,
            os.getpid(),
            self.parts.store.kind,
            self.parts.settings.wal_fsync,
        )
        self._claim_data_dir()
        # Claim the socket before touching the WAL: a second daemon must not
        # "repair" the log the first one is writing.
        listen_socket = self._listen_socket()
        self._recover_wal()
        await self._open_store()
        self._start_background_tasks()
        self._server = await asyncio.get_running_loop().create_unix_server(
            self._new_connection, sock=listen_socket, backlog=LISTEN_BACKLOG
        )
        self._serving = True
        logger.info("listening on %s", self.parts.settings.socket_path)
        self.parts.notifier.ready(self.parts.status.line())

    def _claim_data_dir(self) -> None:
        """data_dir made private, ours, locked, and its entries tightened."""
        data_dir = self.parts.settings.data_dir
        try:
            permissions.make_private_dir(data_dir)
            owner = data_dir.stat().st_uid
        except OSError as exc:
            raise ConfigError(f"data_dir {data_dir}: {exc.strerror}") from exc
        if owner != os.geteuid():
            # Its owner could replace WAL segments, the store, the checkpoint.
            raise ConfigError(
                f"data_dir {data_dir}: belongs to uid {owner}, not to uid "
                f"{os.geteuid()} that memoryd runs as; use a directory of memoryd's own user"
            )
        self._lock_data_dir()
        permissions.tighten(data_dir, self._own_entries())

    def _recover_wal(self) -> None:
        """The WAL opened; its damage alerted; its unapplied writes queued for the store."""
        recovery = self.parts.wal.open()
        self._alert_on_damage(recovery)
        self._report_wal_room()
        self.parts.backlog.resume(recovery.applied_seq, recovery.entries)
        self.parts.unconfirmed.resume(recovery.applied_seq)
        if recovery.entries:
            logger.info(
                "WAL replay: %d unapplied writes (seq %d..%d) queued for the store",
                len(recovery.entries),
                recovery.entries[0].seq,
                recovery.entries[-1].seq,
            )

    def _start_background_tasks(self) -> None:
        self._spawn(self._stop_on_wal_failure, "wal failure watch")
        self._spawn(self.parts.flusher.run, "flusher")
        self._spawn(self.parts.health.run, "health")
        self._spawn(self.parts.sole_writer.run, "writer lease")
        self._spawn(self.parts.sole_writer.watch, "store watch")
        self._spawn(self.parts.sweep.run, "sweep")
        self._spawn(self.parts.durability_watch.run, "durability watch")
        interval_s = watchdog_interval_s()
        if interval_s is not None:
            watchdog = WatchdogFeeder(self.parts.wal, self.parts.notifier, interval_s=interval_s)
            self._spawn(watchdog.run, "watchdog")

    def _own_entries(self) -> frozenset[str]:
        """What memoryd creates in data_dir, and only that (permissions.tighten)."""
        files = {LOCK_NAME, ALERTS_NAME, MARKER_NAME, *SQLITE_FILES}
        return frozenset({WAL_DIR_NAME, *files, *(name + ".tmp" for name in files)})

    def _report_wal_room(self) -> None:
        """Start ``failing`` when the WAL cannot take a write (a restart on a full disk)."""
        error = self.parts.wal.open_error
        if error is not None:
            for_space = isinstance(error, WalFullError) and error.for_space
            self.parts.health.wal_full(str(error), for_space=for_space)
        elif (problem := self.parts.wal.room_problem()) is not None:
            self.parts.health.wal_full(problem)

    def _alert_on_damage(self, recovery: Recovery) -> None:
        if recovery.corrupt_records:
            self.parts.alerts.raise_alert(
                "wal_corrupt_records",
                f"{recovery.corrupt_records} WAL records failed their checksum and were skipped",
            )
        if recovery.quarantined_segments:
            self.parts.alerts.raise_alert(
                "wal_quarantined",
                f"unreadable bytes of {recovery.quarantined_segments} WAL segments moved to "
                f"{self.parts.wal.wal_dir / QUARANTINE_DIR}",
            )
        if recovery.missing_records:
            self.parts.alerts.raise_alert(
                "wal_missing_records",
                f"{recovery.missing_records} unapplied WAL records are missing (a segment "
                "file was removed or lost, or its bytes were quarantined)",
            )
        if recovery.checkpoint_ahead_by:
            self.parts.alerts.raise_alert(
                "wal_checkpoint_ahead",
                f"the checkpoint is {recovery.checkpoint_ahead_by} records ahead of the WAL "
                "files (files removed by something other than memoryd?)",
            )

    async def shutdown(self) -> None:
        self.parts.notifier.stopping()
        logger.info("shutting down: no new connections, finishing in-flight requests")
        deadline = time.monotonic() + self.parts.settings.shutdown_timeout_s
        self.parts.registry.accepting = False
        if self._server is not None:
            self._server.close()
        await self._wait_inflight(deadline)
        flusher_stopped = await self._stop_background_tasks(deadline)
        # A start that failed half-way leaves the backlog in the WAL, untouched.
        if flusher_stopped and self._serving and self.fatal_error is None and not self.force_exit:
            await self._drain(deadline)
            if len(self.parts.backlog):
                logger.warning(
                    "%d writes not applied to the store before shutting down; they stay "
                    "in the WAL and are applied at the next start",
                    len(self.parts.backlog),
                )
        for connection in list(self.parts.registry.connections):
            if connection.transport is not None:
                connection.transport.close()
        if self.fatal_error is None and self._lock_fd is not None:
            await self.parts.wal.close()
        else:
            self.parts.wal.abandon()
        if self._serving and not self.parts.health.store_down:
            await self.parts.sole_writer.leave()
        await self.parts.store.close()
        if self._owns_socket:
            with contextlib.suppress(FileNotFoundError):
                self.parts.settings.socket_path.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the data_dir lock
            self._lock_fd = None
        logger.info("stopped")

    async def _stop_background_tasks(self, deadline: float) -> bool:
        """Cancel the background tasks; whether the flusher has really stopped."""
        self.parts.flusher.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(1.0, deadline - time.monotonic()))
        stuck = [task.get_name() for task in self._tasks if not task.done()]
        if stuck:
            logger.warning("background tasks did not stop in time: %s", ", ".join(stuck))
        # A flusher still running must not race a final drain: it stays in the WAL.
        return "flusher" not in stuck

    async def _drain(self, deadline: float) -> bool:
        remaining_s = max(0.0, deadline - time.monotonic())
        try:
            return await self.parts.flusher.drain(remaining_s, give_up=lambda: self.force_exit)
        except OSError as exc:
            logger.warning("final checkpoint failed (%s); the next start replays more", exc)
            return False

    async def _wait_inflight(self, deadline: float) -> None:
        while (
            self.parts.registry.inflight() and time.monotonic() < deadline and not self.force_exit
        ):
            await asyncio.sleep(0.01)

    async def _open_store(self) -> None:
        try:
            await self.parts.store.open()
            await self.parts.data_loss_check.run()
        except StoreMisconfigured as exc:
            # Wrong credentials or permissions will not heal by waiting: stop (exit 78).
            raise ConfigError(f"redis_url: {exc}") from exc
        except StoreUnavailable as exc:
            if self.parts.store.kind == "local" and self.parts.wal.has_room():
                # A file we cannot open will not heal by waiting: say so and stop.
                raise ConfigError(f"data_dir {self.parts.settings.data_dir}: {exc}") from exc
            # A Redis that is down, or a full disk under the local store: both
            # heal.  Start degraded; the probe opens the store once it can.
            self.parts.health.store_failed(exc)
        except StoreError as exc:
            raise ConfigError(f"store: {exc}") from exc

    def _spawn(self, run: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._supervise(run, name), name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    @staticmethod
    async def _supervise(run: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Run a background task; start it again after an OSError.

        Running out of file descriptors or disk is a condition of the host,
        not a bug: it passes, and the task must outlive it (the health state
        reports it meanwhile).  Anything else stops the daemon (_task_done).
        """
        while True:
            try:
                await run()
                return
            except OSError as exc:
                logger.error(
                    "background task %s failed (%s); starting it again in %.0f s",
                    name,
                    exc,
                    TASK_RESTART_S,
                )
            await asyncio.sleep(TASK_RESTART_S)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        logger.critical("background task %s failed", task.get_name(), exc_info=task.exception())
        self.fatal_error = task.exception()
        self.fatal_reason = f"background task {task.get_name()} failed: {self.fatal_error!r}"
        self.should_exit.set()

    async def _stop_on_wal_failure(self) -> None:
        exc = await self.parts.wal.wait_fatal()
        self.parts.health.wal_failed(f"WAL fdatasync failed: {exc}")
        self.fatal_error = exc
        self.fatal_reason = f"WAL fdatasync failed: {exc}"
        self.should_exit.set()

    # ------------------------------------------------------------ socket

    def _lock_data_dir(self) -> None:
        lock_path = self.parts.settings.data_dir / LOCK_NAME
        fd = permissions.open_private(lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"data_dir {self.parts.settings.data_dir}: another memoryd is using it"
            ) from None
        self._lock_fd = fd  # held for the life of the process

    def _listen_socket(self) -> socket.socket:
        sock = socketpath.listen(self.parts.settings.socket_path, self.parts.settings.socket_mode)
        self._owns_socket = True
        return sock

    def _new_connection(self) -> Connection:
        limits = ConnectionLimits(
            max_message_bytes=self.parts.settings.max_message_bytes,
            max_inflight=self.parts.settings.max_inflight_per_connection,
            max_connections=self.parts.max_connections,
            max_connections_per_uid=self.parts.settings.max_connections_per_uid,
            message_timeout_s=self.parts.settings.message_timeout_s,
            idle_timeout_s=self.parts.settings.idle_timeout_s,
        )
        return Connection(self.parts.handlers, self.parts.registry, self.parts.metrics, limits)

    # ------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded (tests): whoever runs us sets should_exit
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._handle_exit, signum)
        loop.add_signal_handler(signal.SIGHUP, self._handle_reload)

    def _remove_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)

    def _handle_exit(self, signum: int) -> None:
        if self.should_exit.is_set():
            # Acknowledged writes are already durable in the WAL: skip the waiting.
            logger.warning("second %s: exiting without waiting", signal.Signals(signum).name)
            self.force_exit = True
            return
        logger.info("%s received", signal.Signals(signum).name)
        self.should_exit.set()

    def _handle_reload(self) -> None:
        """SIGHUP: take the settings that can change at run time; keep the rest.

        A config that does not load keeps the running one, whole.
        """
        if self._reload is None:
            return
        self.parts.notifier.reloading()
        try:
            settings = self._reload()
        except ConfigError as exc:
            logger.error("SIGHUP: config not reloaded, keeping the running one: %s", exc)
            self.parts.notifier.ready(self.parts.status.line())
            return
        pending = sorted(
            name
            for name in type(settings).model_fields
            if name not in RELOADABLE
            and getattr(settings, name) != getattr(self.parts.settings, name)
        )
        if pending:
            logger.warning("SIGHUP: %s changed; that takes a restart", ", ".join(pending))
        self._apply_settings(settings.model_copy(update=self._fixed_values()))
        logger.info("SIGHUP: settings reloaded")
        self.parts.notifier.ready(self.parts.status.line())

    def _fixed_values(self) -> dict[str, Any]:
        return {
            name: getattr(self.parts.settings, name)
            for name in type(self.parts.settings).model_fields
            if name not in RELOADABLE
        }

    def _apply_settings(self, settings: Settings) -> None:
        self.parts.reconfigure(settings)
        logging.getLogger("memoryd").setLevel(settings.log_level)
