#!/usr/bin/env python3
"""Reading and checkpoint costs on a big log against a small one, in one run.

    .venv/bin/python scripts/bench_cli.py [--gigabytes 1.0]

Builds two log dirs with realistic records (the big one rotated into 256 MiB
segments, as the daemon would), then measures:

* ``persist-cli recent -n 20`` wall time (a whole process, as a user runs it)
  on the big log, against the same command on the small one (target ≤ 100 ms);
* the cost of a checkpoint taken by a running daemon after a few new messages,
  on the big log ÷ on the small log (target ≤ 1.5: hashing is incremental).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import BIN, Daemon, build_log, machine, publisher, start_broker, wait_until_receiving
from persist.daemon.control import ask


def time_recent(root: Path, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([BIN / "persist-cli", "recent", "-n", "20", "--log-dir", str(root)],
                       check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_checkpoint(root: Path, backend: str, frontend: str, rounds: int = 5) -> float:
    daemon = Daemon(root, "--connect", backend, env={"PERSIST_INDEX_ENABLED": "false"}).start()
    pub = publisher(frontend)
    try:
        wait_until_receiving(daemon, pub)
        ask(daemon.log.control_endpoint, "checkpoint", timeout_ms=600_000)  # the first one hashes everything
        costs = []
        for r in range(rounds):
            for i in range(100):
                pub.send_multipart([b"agent.chat", b'{"sender":"bench","round":%d,"i":%d}' % (r, i)])
            time.sleep(0.3)
            t = time.perf_counter()
            ask(daemon.log.control_endpoint, "checkpoint", timeout_ms=60_000)
            costs.append(time.perf_counter() - t)
        return statistics.median(costs)
    finally:
        pub.close(linger=0)
        daemon.stop()


def measure(gigabytes: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="persist-bench-", dir="/tmp"))
    broker, frontend, backend = start_broker()
    try:
        t = time.perf_counter()
        big_n = build_log(work / "big", int(gigabytes * 2**30))
        small_n = build_log(work / "small", 2**20)
        build_s = time.perf_counter() - t
        os.sync()  # a log already on disk, as a user has it: not a gigabyte of write-back under the timings
        return {
            "gigabytes": gigabytes, "big_records": big_n, "small_records": small_n, "build_s": build_s,
            "recent_big": time_recent(work / "big"), "recent_small": time_recent(work / "small"),
            "checkpoint_big": time_checkpoint(work / "big", backend, frontend),
            "checkpoint_small": time_checkpoint(work / "small", backend, frontend),
        }
    finally:
        broker.kill()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gigabytes", type=float, default=1.0)
    args = ap.parse_args()
    r = measure(args.gigabytes)
    print(f"machine: {machine()}")
    print(f"built logs: {r['big_records']:,} records ({args.gigabytes} GiB) and {r['small_records']:,} records "
          f"(1 MiB) in {r['build_s']:.1f} s")
    print(f"{'measure':<44}{'big log':>10}{'1 MiB log':>12}   result")
    print(f"{'recent -n 20 (whole process, median of 7)':<44}{r['recent_big'] * 1e3:>8.0f} ms"
          f"{r['recent_small'] * 1e3:>10.0f} ms   {r['recent_big'] * 1e3:.0f} ms (target ≤ 100 ms)")
    print(f"{'checkpoint after 100 new messages (median)':<44}{r['checkpoint_big'] * 1e3:>8.1f} ms"
          f"{r['checkpoint_small'] * 1e3:>10.1f} ms   {r['checkpoint_big'] / r['checkpoint_small']:.2f} × (target ≤ 1.5)")


if __name__ == "__main__":
    main()
