"""The systemd notify protocol, spoken directly (no libsystemd needed).

``READY=1`` once recording, ``STATUS=`` with the rate, ``WATCHDOG=1`` at half of
``WATCHDOG_USEC``, ``STOPPING=1`` at shutdown. Outside systemd (no
``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable


class Notifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.sock: socket.socket | None = None
        if address:
            if address.startswith("@"):
                address = "\0" + address[1:]  # abstract namespace
            self.address = address
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        pid = os.environ.get("WATCHDOG_PID")
        if pid and int(pid) != os.getpid():
            usec = 0  # the watchdog is meant for another process
        self.watchdog_every = usec / 2e6 if usec else None
        self.next_watchdog = 0.0

    def send(self, *fields: str) -> None:
        if self.sock is not None:
            try:
                self.sock.sendto("\n".join(fields).encode(), self.address)
            except OSError:
                pass  # systemd went away; recording matters more

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def tick(self, status: Callable[[], str]) -> None:
        """Call often; sends WATCHDOG=1 (with a fresh STATUS) when due."""
        if self.watchdog_every is not None and time.monotonic() >= self.next_watchdog:
            self.next_watchdog = time.monotonic() + self.watchdog_every
            self.send("WATCHDOG=1", f"STATUS={status()}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def timeout_ms(self) -> int | None:
        """How long the loop may sleep before the next watchdog ping is due."""
        if self.watchdog_every is None:
            return None
        return max(0, int((self.next_watchdog - time.monotonic()) * 1000))
