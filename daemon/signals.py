"""Signals for the recorder's loop: noted by the handler, acted on by the loop.

A handler only appends the signal number to a list (no lock, no I/O) and
``signal.set_wakeup_fd`` wakes the loop's poll through a socket pair; the
loop then calls ``take()`` at a safe point and looks each signal up in its
signal → step map. No work ever happens inside a handler.
"""

from __future__ import annotations

import signal
import socket
from typing import Any

NOTED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


class Signals:
    def __init__(self) -> None:
        self.noted: list[int] = []
        self.reader, self.writer = socket.socketpair()
        self.writer.setblocking(False)
        signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        for sig in NOTED:
            signal.signal(sig, self._note)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit is a full disk (EFBIG), not death

    def _note(self, signum: int, _frame: Any) -> None:
        self.noted.append(signum)

    def fileno(self) -> int:
        """Readable when a signal came: register it with the loop's poller."""
        return self.reader.fileno()

    def take(self) -> list[signal.Signals]:
        """The signals noted since the last call, oldest first."""
        try:
            while self.reader.recv(512, socket.MSG_DONTWAIT):
                pass
        except BlockingIOError:
            pass
        noted, self.noted = self.noted, []
        return [signal.Signals(n) for n in noted]

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.reader.close()
        self.writer.close()
