"""Fixtures: a real broker, real daemons and publishers, each test on its own ports and dirs."""

from __future__ import annotations

import shutil

import pytest
import zmq
from pgdb import pg_url  # noqa: F401 - the fixture: a fresh PostgreSQL database per test
from procs import Broker, Daemon, Publisher, short_tmpdir


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def workdir():
    d = short_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def log_dir(workdir):
    return workdir / "logs"


@pytest.fixture
def broker():
    b = Broker()
    yield b
    b.kill()


def daemons(default_log_dir, endpoint: str):
    """``(start, started)``: start daemons connected to ``endpoint``; ``started`` is killed at teardown."""
    started: list[Daemon] = []

    def start(*args, log_dir=default_log_dir, connect=True, env=None, wait=True):
        extra = ["--connect", endpoint] if connect else []
        d = Daemon(log_dir, *extra, *args, env=env).start(wait=wait)
        started.append(d)
        return d

    return start, started


def kill_left(started) -> None:
    for d in started:
        if d.proc.poll() is None:
            d.kill9()


@pytest.fixture
def start_daemon(broker, log_dir):
    """Start ``persist-daemon`` on the test broker; stopped (or killed) at teardown."""
    start, started = daemons(log_dir, broker.backend)
    yield start
    kill_left(started)


NOWHERE = "tcp://127.0.0.1:9"  # nothing listens there: a daemon that records nothing from a bus


@pytest.fixture
def lone_daemon(log_dir):
    """Start ``persist-daemon`` with no broker (for what its start and stop do to a log dir)."""
    start, started = daemons(log_dir, NOWHERE)
    yield start
    kill_left(started)


@pytest.fixture
def publish(ctx, broker):
    pubs = []

    def make():
        p = Publisher(ctx, broker.frontend)
        pubs.append(p)
        return p

    yield make
    for p in pubs:
        p.close()


@pytest.fixture
def recorder(start_daemon, publish, workdir):
    """``recorder(config_text=None, *flags)``: a daemon, and a publisher it already hears."""

    def make(config: str | None = None, *args: str, **kwargs):
        extra = []
        if config is not None:
            path = workdir / "persist.toml"
            path.write_text(config)
            extra = ["--config", str(path)]
        daemon = start_daemon(*extra, *args, **kwargs)
        p = publish()
        p.join(daemon)
        return daemon, p

    return make


def pytest_collection_finish(session):
    """Under ``--dist loadgroup`` each worker's grouped tests carry ``@group`` in their ids; if a pytest or
    pytest-xdist release stops doing that, the CPU-heavy tests (``procs.heavy``) would run beside each other and
    fail on timing, so the run stops here with one line instead."""
    if not hasattr(session.config, "workerinput") or not getattr(session.config.option, "loadgroup", False):
        return
    lost = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist did not group {len(lost)} test(s) such as {lost[0]} "
                                "(--dist loadgroup): pin pytest/pytest-xdist to versions that do")
