"""The shipper as a supervised child: like ``supervise.Child``, with the archive URL in its environment
(never on its command line, where ``ps`` would show a password) and its log lines on the daemon's stderr,
so a wrong URL shows in the daemon's own log (journalctl) as one line. Imports no database client:
the daemon loads this module, never psycopg."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from persist.daemon.log.fsutil import open_private
from persist.daemon.log.layout import LogDir
from persist.daemon.supervise import Child


class ShipperChild(Child):
    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        super().__init__(name, argv, log_path)
        self.env = env

    def start(self) -> None:
        self.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        out = open_private(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=None,
                                         close_fds=True, env={**os.environ, **self.env})
        finally:
            os.close(out)


def child(log_dir: LogDir, url: str, node: str, timeout_s: float) -> ShipperChild:
    """The shipper (``persist.daemon.archive.shipper``) as a child process the daemon supervises."""
    argv = [sys.executable, "-m", "persist.daemon.archive.shipper", "--log-dir", str(log_dir.root),
            "--node", node, "--timeout", str(timeout_s), "--parent", str(os.getpid())]
    return ShipperChild("shipper", argv, log_dir.index / "shipper.out", {"PERSIST_ARCHIVE_URL": url})
