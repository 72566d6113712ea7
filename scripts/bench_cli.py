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
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import message, start_broker  # noqa: E402
from procs import BIN, Daemon, Publisher  # noqa: E402

from persist.daemon.control import ask  # noqa: E402
from persist.daemon.record import Message, encode  # noqa: E402
from persist.daemon.store import LogDir, segment_name  # noqa: E402

SEGMENT = 256 * 1024 * 1024


def build_log(root: Path, nbytes: int) -> int:
    """A log dir of about ``nbytes`` of records; returns the record count."""
    log = LogDir(root)
    log.create()
    rnd, counters = random.Random(3), {}
    templates = [message(i, rnd, counters) for i in range(2000)]
    seq, written, first, buf = 0, 0, 1, []
    out = open(log.active, "wb")
    now = time.time_ns()
    while written < nbytes:
        seq += 1
        line = encode(Message.from_frames([b"agent.chat", templates[seq % 2000]], now), seq, {"sender": "bench"})
        buf.append(line)
        written += len(line)
        if len(buf) == 5000:
            out.write(b"".join(buf))
            buf = []
            if out.tell() >= SEGMENT:
                out.close()
                os.rename(log.active, log.segments / segment_name(first))
                first = seq + 1
                out = open(log.active, "wb")
    out.write(b"".join(buf))
    out.close()
    return seq


def time_recent(root: Path, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([BIN / "persist-cli", "recent", "-n", "20", "--log-dir", str(root)],
                       check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_checkpoint(root: Path, backend: str, frontend: str, rounds: int = 5) -> float:
    daemon = Daemon(root, "--connect", backend).start()
    ctx = zmq.Context()
    pub = Publisher(ctx, frontend)
    try:
        base = daemon.status()["recorded"]
        while daemon.status()["recorded"] == base:  # until the daemon receives (the slow joiner)
            pub.send(b"probe", b"{}")
            time.sleep(0.05)
        ask(daemon.log.control_endpoint, "checkpoint", timeout_ms=600_000)  # the first one hashes everything
        costs = []
        for r in range(rounds):
            for i in range(100):
                pub.send(b"agent.chat", b'{"sender":"bench","round":%d,"i":%d}' % (r, i))
            time.sleep(0.3)
            t = time.perf_counter()
            ask(daemon.log.control_endpoint, "checkpoint", timeout_ms=60_000)
            costs.append(time.perf_counter() - t)
        return statistics.median(costs)
    finally:
        pub.close()
        ctx.destroy(linger=0)
        daemon.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gigabytes", type=float, default=1.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="persist-bench-", dir="/tmp"))
    broker, frontend, backend = start_broker()
    try:
        t = time.perf_counter()
        big_n = build_log(work / "big", int(args.gigabytes * 2**30))
        small_n = build_log(work / "small", 2**20)
        print(f"built logs: {big_n:,} records ({args.gigabytes} GiB) and {small_n:,} records (1 MiB) "
              f"in {time.perf_counter() - t:.1f} s")
        recent_big, recent_small = time_recent(work / "big"), time_recent(work / "small")
        cp_big = time_checkpoint(work / "big", backend, frontend)
        cp_small = time_checkpoint(work / "small", backend, frontend)
    finally:
        broker.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'measure':<44}{'big log':>10}{'1 MiB log':>12}   result")
    print(f"{'recent -n 20 (whole process, median of 7)':<44}{recent_big * 1e3:>8.0f} ms{recent_small * 1e3:>10.0f} ms"
          f"   {recent_big * 1e3:.0f} ms (target ≤ 100 ms)")
    print(f"{'checkpoint after 100 new messages (median)':<44}{cp_big * 1e3:>8.1f} ms{cp_small * 1e3:>10.1f} ms"
          f"   {cp_big / cp_small:.2f} × (target ≤ 1.5)")


if __name__ == "__main__":
    main()
