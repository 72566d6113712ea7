"""Real processes for tests: a broker, a daemon, publishers, on free loopback ports."""

from __future__ import annotations

import ctypes
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zmq

from persist.daemon.control import ControlError, ask
from persist.daemon.log import reader
from persist.daemon.log.layout import LogDir

BIN = Path(sys.executable).parent

# A test that loads the CPU (a flood, a burst, chaos) or times what it watches: they all go to one
# worker (``--dist loadgroup``), so no two of them ever run at once within a run.
heavy = pytest.mark.xdist_group("heavy")


def unavailable(why: str) -> None:
    """A test that needs what this machine lacks (PostgreSQL, Chromium, strace, root): under CI, which
    provides all of them (``.ci/run``), that is a failure; elsewhere the test is skipped, saying why."""
    if os.environ.get("CI"):
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def eventually(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll ``predicate`` (a plain question, which must not assert) until it gives something
    truthy; return that, or the last falsy answer once ``timeout`` has passed. Never raises
    on a timeout: the caller asserts afterwards, saying what was expected and what was seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def process_gone(pid: int) -> bool:
    """Exited (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def read_until(fd, text: str, timeout: float = 10.0) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        assert time.monotonic() < deadline, f"never saw {text!r} in {seen.decode(errors='replace')!r}"
        if select.select([fd], [], [], 0.2)[0]:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the program ended
                raise AssertionError(f"ended before {text!r}: {seen.decode(errors='replace')!r}") from None
    return seen.decode(errors="replace")


def short_tmpdir(prefix: str = "persist-") -> Path:
    """A short path (ipc socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class Broker:
    """``persist-cli broker`` as a subprocess, on free ports (or the ports it had before)."""

    def __init__(self, frontend: str = "tcp://127.0.0.1:*", backend: str = "tcp://127.0.0.1:*", *options: str) -> None:
        self.options = options
        self.proc = subprocess.Popen(
            [BIN / "persist-cli", "broker", "--frontend", frontend, "--backend", backend, *options],
            stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stderr.readline()
        m = re.search(r"publishers connect to (\S+), subscribers to (\S+)", line)
        assert m, f"broker did not start: {line!r}"
        self.frontend, self.backend = m.group(1), m.group(2)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stderr.close()

    def restart(self) -> None:
        self.kill()
        self.__init__(self.frontend, self.backend, *self.options)


def die_with_test() -> None:
    """In the child: SIGKILL when the test process that started it exits, so a failed test leaks no daemon."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Daemon:
    """``persist-daemon`` as a subprocess recording into ``log_dir``."""

    def __init__(self, log_dir: Path, *args: str, env: dict | None = None, wrapper: list[str] | None = None) -> None:
        """``wrapper``: a command the daemon runs under (``strace ... --``); ``proc`` is then the wrapper,
        ``daemon_pid()`` the daemon itself."""
        self.log_dir = Path(log_dir)
        self.log = LogDir(self.log_dir)
        self.args = [*(wrapper or []), str(BIN / "persist-daemon"), "--log-dir", str(self.log_dir),
                     "--log-format", "json", *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.log_dir.parent / f"{self.log_dir.name}.daemon.err"

    def start(self, wait: bool = True) -> Daemon:
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self.args, stderr=self.stderr, env=self.env, preexec_fn=die_with_test)
        if wait:
            wait_for(self.ping, what=f"daemon ping ({self.stderr_path})")
        return self

    def ping(self) -> bool:
        assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}: {self.errors()}"
        try:
            return ask(self.log.control_endpoint, "ping", timeout_ms=500)["ok"]
        except ControlError:
            return False

    def status(self) -> dict:
        return ask(self.log.control_endpoint, "status")

    def try_status(self, timeout_ms: int = 2000) -> dict:
        """``status``, or ``{}`` when the daemon does not answer (yet): for wait predicates, which
        must ask, not raise (a daemon busy with a burst may take a moment to answer)."""
        try:
            return ask(self.log.control_endpoint, "status", timeout_ms=timeout_ms)
        except ControlError:
            return {}

    def daemon_pid(self) -> int:
        """The daemon's own pid (not a wrapper's), as it answers on its control socket."""
        return self.status()["pid"]

    def errors(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.stderr.close()
        return code

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.stderr.close()

    def records(self) -> list[reader.Entry]:
        return list(reader.records(self.log))

    def user_records(self) -> list[reader.Entry]:
        """Records of what the test published: no ``$persist/`` records, no join probes."""
        return [e for e in self.records() if not e.rec["topic"].startswith(("$persist/", "warmup"))]

    def wait_records(self, n: int, timeout: float = 20.0) -> list[reader.Entry]:
        """Wait until at least ``n`` of the test's own records are in the files."""
        def enough():
            found = self.user_records()
            return found if len(found) >= n else None

        return wait_for(enough, timeout, interval=0.05, what=f"{n} records")


class Publisher:
    """A PUB socket on the broker's frontend that only sends once the daemon is subscribed."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 5000)
        self.sock.connect(endpoint)

    def join(self, daemon: Daemon, topic: bytes = b"warmup") -> None:
        """Send probes until the daemon records one (the slow-joiner effect)."""
        def seen():
            self.sock.send_multipart([topic, b'{"probe":true}'])
            time.sleep(0.05)
            return any(e.rec["topic"] == topic.decode() for e in daemon.records())
        wait_for(seen, what="the daemon to receive a probe")

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def close(self) -> None:
        self.sock.close()


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """Resident memory of ``pid`` in MB: its peak (``VmHWM``), or now (``VmRSS``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split(field + ":")[1].split()[0]) / 1024


def run(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run one of our console scripts and capture its output."""
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
