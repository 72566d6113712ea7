"""``persist-cli web`` as a subprocess, plain HTTP requests to it, and Debian's Chromium through Playwright
(never a browser Playwright would download: ``executable_path``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from procs import BIN, die_with_test, unavailable

CHROMIUM = os.environ.get("PERSIST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(os.environ.get("PERSIST_WEB_SCREENSHOTS", "/tmp/persist-web-screenshots"))


class WebServer:
    """``persist-cli web --log-dir DIR ARGS`` on a free port; ``url`` is what it printed."""

    def __init__(self, log_dir: Path, *args: str, before: tuple[str, ...] = ()) -> None:
        """``before``: global options, given before ``web`` (``persist-cli --archive URL web``)."""
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([str(BIN / "persist-cli"), *before, "web", "--log-dir", str(log_dir), *args],
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, preexec_fn=die_with_test)
        line = self.proc.stdout.readline()
        m = re.search(r"(http://\S+)", line)
        if not m:
            self.proc.kill()
            raise AssertionError(f"persist-cli web did not start: {line!r} {self.errors()!r}")
        self.url = m.group(1)
        self.origin = re.match(r"http://[^/]+", self.url).group(0)

    def get(self, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, str]:
        """``(status, body)`` of one request to the server."""
        req = urllib.request.Request(self.origin + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        finally:
            self.proc.stdout.close()
            self.stderr.close()


def chromium_or_fail() -> str:
    """The system's Chromium; without it the browser tests fail under CI (``.ci/run`` installs it) and are
    skipped elsewhere, saying how to get it."""
    if os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM):
        return CHROMIUM
    why = (f"the browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium; "
           "PERSIST_CHROMIUM=/path to use another); Playwright never downloads one here")
    unavailable(why)


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_or_fail(), args=CHROMIUM_ARGS)
