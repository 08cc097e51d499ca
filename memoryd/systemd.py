"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import logging
import os
import socket
import time

logger = logging.getLogger(__name__)


class Notifier:
    """Sends READY=1, STATUS=..., STOPPING=1 when systemd (or a test) listens."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        self.address = address or None
        self._dropping = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> None:
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never wait: a receiver that does not read (a hung systemd; a
                # queue of net.unix.max_dgram_qlen, 10 by default, left full)
                # would otherwise block the event loop, and every client with it.
                sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, self.address)
        except BlockingIOError:
            if not self._dropping:
                logger.warning(
                    "systemd's notify socket %s does not take messages (its queue is full); "
                    "dropping them until it does",
                    self.address,
                )
            self._dropping = True
            return
        except OSError as exc:
            # systemd gone is no reason to stop serving clients.
            logger.warning("could not notify systemd at %s: %s", self.address, exc)
            return
        if self._dropping:
            logger.info("systemd's notify socket %s takes messages again", self.address)
            self._dropping = False

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=shutting down")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")


def watchdog_interval_s() -> float | None:
    """Half of ``$WATCHDOG_USEC`` when systemd watches this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000 / 2
    except ValueError:
        logger.warning("WATCHDOG_USEC=%r is not a number; no watchdog pings", usec)
        return None
