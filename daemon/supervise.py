"""Child processes the recorder keeps running beside it (the indexer; later the archive shipper).

A child is started with its output in a 0600 log file of its own, checked once
a second, restarted when it dies (waiting longer after each failure, up to a
minute), and stopped with SIGTERM, then SIGKILL, at shutdown. A child can
never block the writer nor cost a record: it works from the files.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from persist.daemon.log.fsutil import open_private
from persist.daemon.log.lazylog import get_logger

log = get_logger("persist.daemon")


class Child:
    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.next_start = 0.0

    def start(self) -> None:
        self.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        out = open_private(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, close_fds=True)
        finally:
            os.close(out)

    def check(self) -> None:
        """Restart a dead child, waiting longer after each failure (up to a minute)."""
        if self.proc is None or self.proc.poll() is None or time.monotonic() < self.next_start:
            return
        log.warning(f"{self.name}_died", code=self.proc.returncode, restarts=self.restarts, log=str(self.log_path))
        self.restarts += 1
        self.next_start = time.monotonic() + min(60, 2 ** self.restarts)
        self.start()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None
