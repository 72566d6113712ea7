#!/usr/bin/env python3
"""The archive shipper against the recorder, and queries across the archive, in one run.

    .venv/bin/python scripts/bench_archive.py [--records 1000000] [--messages 100000] [--quick]

Needs the machine's PostgreSQL (``postgresql://postgres@127.0.0.1:5432``, or
``PERSIST_TEST_PG``); works in a database of its own, dropped at the end.
Builds a log of realistic records, lets a shipper catch up on all of it (the
catch-up time and the sustained ship rate), measures the local recording rate
on the same machine in the same run (``bench_record``'s burst: the shipper keeps
up when ship rate ÷ recording rate ≥ 1), then times a full-text search and a
thread query across the archive (p50 of 20) and reads the shipper's peak RSS.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

import bench_record
from benchlib import build_log, machine, memory_mb, percentile, sizes
from persist.daemon.archive import query

SERVER = os.environ.get("PERSIST_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def shipped(url: str) -> int:
    try:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT coalesce(max(seq), 0) FROM persist_position").fetchone()[0]
    except psycopg.Error:
        return 0


def timed(f, runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return percentile(times, 50)


def measure(records: int, burst: int) -> dict:
    name = f"persist_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = f"{SERVER}/{name}"
    work = Path(tempfile.mkdtemp(prefix="persist-bench-", dir="/tmp"))
    try:
        built = build_log(work / "logs", records=records)
        env = {**os.environ, "PERSIST_ARCHIVE_URL": url}
        t0 = time.perf_counter()
        shipper = subprocess.Popen([sys.executable, "-m", "persist.daemon.archive.shipper", "--log-dir",
                                    str(work / "logs"), "--node", "bench"], env=env, stderr=subprocess.DEVNULL)
        rss = 0.0
        try:
            while shipped(url) < built:
                rss = max(rss, memory_mb(shipper.pid))
                time.sleep(0.5)
            catch_up = time.perf_counter() - t0
        finally:
            shipper.terminate()
            shipper.wait()
        recording = bench_record.measure(burst, baselines=False, index=False, rounds=1)["persist"]["rate"]
        with psycopg.connect(url) as conn:
            search_p50 = timed(lambda: query.search(conn, "backoff", 20))
            thread_id = conn.execute("SELECT thread_id FROM persist_records WHERE thread_id IS NOT NULL "
                                     "LIMIT 1").fetchone()[0]
            thread_p50 = timed(lambda: query.thread(conn, thread_id))
        return {"records": built, "catch_up_s": catch_up, "ship_rate": built / catch_up,
                "recording_rate": recording, "search_p50": search_p50, "thread_p50": thread_p50, "rss_mb": rss}
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    r = measure(*sizes(__doc__, "messages in the recording-rate burst"))
    print(f"machine: {machine()}")
    print(f"catch-up: {r['records']:,} records in {r['catch_up_s']:.1f} s = {r['ship_rate']:,.0f} records/s shipped")
    print(f"recording (same run): {r['recording_rate']:,.0f} msg/s; ship rate ÷ recording rate "
          f"{r['ship_rate'] / r['recording_rate']:.2f} (target ≥ 1)")
    print(f"search p50 across the archive: {r['search_p50'] * 1000:.1f} ms (target ≤ 50 ms); "
          f"thread p50: {r['thread_p50'] * 1000:.1f} ms")
    print(f"shipper peak RSS: {r['rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
