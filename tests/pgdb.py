"""A real PostgreSQL for the archive's tests (``PERSIST_TEST_PG``, default postgresql://postgres@127.0.0.1:5432,
trust auth): ``pg_url`` (a fixture for every test module, through ``conftest``), a fresh database per test (``persist_test_<random>``, dropped at teardown, so runs
can overlap), skipped where no server answers; and ``ship_until``, the shipper process run over a log dir
until the archive holds its rows."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from procs import eventually, unavailable

SERVER = os.environ.get("PERSIST_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def admin():
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable(f"no PostgreSQL at {SERVER} ({exc}); .ci/run starts the machine's")


@contextlib.contextmanager
def database() -> Iterator[str]:
    """The URL of a new, empty database, dropped afterwards."""
    name = f"persist_test_{uuid.uuid4().hex[:12]}"
    with admin() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        with admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url():
    with database() as url:
        yield url


def archived(url: str) -> dict[str, tuple[int, int]]:
    """Per node: (rows, distinct keys)."""
    import psycopg

    with psycopg.connect(url) as conn:
        return {n: (c, d) for n, c, d in conn.execute(
            "SELECT node, count(*), count(DISTINCT (epoch, seq)) FROM persist_records GROUP BY node")}


def rows_of(url: str, node: str) -> int:
    import psycopg

    try:
        return archived(url).get(node, (0, 0))[0]
    except psycopg.Error:  # no schema yet
        return 0


def ship_until(log_root, url: str, node: str, rows: int) -> str:
    """Run the shipper process on ``log_root`` until the archive holds ``rows`` rows of ``node``; its log."""
    proc = subprocess.Popen([sys.executable, "-m", "persist.daemon.archive.shipper", "--log-dir", str(log_root),
                             "--node", node], env={**os.environ, "PERSIST_ARCHIVE_URL": url},
                            stderr=subprocess.PIPE, text=True)
    try:
        eventually(lambda: rows_of(url, node) >= rows, timeout=30)
    finally:
        proc.terminate()
        err = proc.communicate(timeout=10)[1]
    assert archived(url).get(node, (0, 0)) == (rows, rows), err
    return err
