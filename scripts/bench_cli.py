#!/usr/bin/env python3
"""Reading and checkpoint costs on a big log against a small one, in one run.

    .venv/bin/python scripts/bench_cli.py [--gigabytes 1.0] [--no-checkpoint]

Builds two log dirs with realistic records (the big one rotated into 256 MiB
segments, as the daemon would), then measures:

* ``persist-cli recent -n 20`` and ``persist-cli --help`` as whole processes, as a
  user runs them (best and median of 15), beside ``python -c pass`` in the same
  run (targets: recent ≤ 60 ms, --help ≤ 80 ms), and their CPU instructions
  counted by callgrind when valgrind is installed (the same whatever else the
  machine runs). Twice: with the bytecode cached, as an installed persist runs
  (here in a cache of the run's own, ``PYTHONPYCACHEPREFIX``), and with
  ``PYTHONDONTWRITEBYTECODE=1`` as some environments set it: then, with no
  ``__pycache__`` in the checkout, every persist module an editable install
  imports is compiled from source on each start;
* the cost of a checkpoint taken by a running daemon after a few new messages,
  on the big log ÷ on the small log (target ≤ 1.5: hashing is incremental).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import BIN, Daemon, build_log, machine, publisher, start_broker, wait_until_receiving
from persist.daemon.control import ask


def startup_env(work: Path, cached: bool) -> dict[str, str]:
    """The environment of a start with cached bytecode (a cache of this run's own) or with none at all."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    if cached:
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    else:  # Python's own modules and the installed packages keep their bytecode; persist's has none to read
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def wall(cmd: list, env: dict[str, str], runs: int = 15) -> tuple[float, float]:
    """Best and median seconds of ``runs`` runs of ``cmd`` (after one to warm the caches)."""
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - t)
    return min(times[1:]), statistics.median(times[1:])


def instructions(cmd: list, env: dict[str, str]) -> int | None:
    """CPU instructions of one run of ``cmd`` as callgrind counts them; None without valgrind."""
    if shutil.which("valgrind") is None:
        return None
    r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *map(str, cmd)],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    m = re.search(r"Collected : (\d+)", r.stderr)
    return int(m.group(1)) if m else None


def startup(work: Path) -> dict:
    """Whole-process times and instructions of the commands against ``python -c pass``, both bytecode ways."""
    cmds = {"python -c pass": [BIN / "python", "-c", "pass"], "persist-cli --help": [BIN / "persist-cli", "--help"]}
    for name in ("big", "small"):
        cmds[f"recent -n 20, {name} log"] = [BIN / "persist-cli", "recent", "-n", "20", "--log-dir", str(work / name)]
    out = {}
    for cached in (True, False):
        env = startup_env(work, cached)
        for name, cmd in cmds.items():
            out[name, cached] = (*wall(cmd, env), instructions(cmd, env))
    return out


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


def measure(gigabytes: float, checkpoint: bool = True) -> dict:
    work = Path(tempfile.mkdtemp(prefix="persist-bench-", dir="/tmp"))
    broker, frontend, backend = start_broker()
    try:
        t = time.perf_counter()
        big_n = build_log(work / "big", int(gigabytes * 2**30))
        small_n = build_log(work / "small", 2**20)
        build_s = time.perf_counter() - t
        os.sync()  # a log already on disk, as a user has it: not a gigabyte of write-back under the timings
        r = {
            "gigabytes": gigabytes, "big_records": big_n, "small_records": small_n, "build_s": build_s,
            "recent_big": time_recent(work / "big"), "recent_small": time_recent(work / "small"),
            "startup": startup(work),
        }
        if checkpoint:
            r["checkpoint_big"] = time_checkpoint(work / "big", backend, frontend)
            r["checkpoint_small"] = time_checkpoint(work / "small", backend, frontend)
        return r
    finally:
        broker.kill()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gigabytes", type=float, default=1.0)
    ap.add_argument("--no-checkpoint", action="store_true", help="Leave out the checkpoint costs (no daemon).")
    args = ap.parse_args()
    r = measure(args.gigabytes, not args.no_checkpoint)
    print(f"machine: {machine()}")
    print(f"built logs: {r['big_records']:,} records ({args.gigabytes} GiB) and {r['small_records']:,} records "
          f"(1 MiB) in {r['build_s']:.1f} s")
    print(f"{'measure':<44}{'big log':>10}{'1 MiB log':>12}   result")
    print(f"{'recent -n 20 (whole process, median of 7)':<44}{r['recent_big'] * 1e3:>8.0f} ms"
          f"{r['recent_small'] * 1e3:>10.0f} ms   {r['recent_big'] * 1e3:.0f} ms (target ≤ 100 ms)")
    if "checkpoint_big" in r:
        print(f"{'checkpoint after 100 new messages (median)':<44}{r['checkpoint_big'] * 1e3:>8.1f} ms"
              f"{r['checkpoint_small'] * 1e3:>10.1f} ms   {r['checkpoint_big'] / r['checkpoint_small']:.2f} × "
              "(target ≤ 1.5)")
    print("\nstart-up, whole process: best / median of 15, instructions (callgrind)")
    print(f"{'':<30}{'bytecode cached (installed)':>36}{'PYTHONDONTWRITEBYTECODE=1':>44}")
    targets = {"persist-cli --help": "≤ 80 ms", "recent -n 20, big log": "≤ 60 ms"}
    for name in ("python -c pass", "persist-cli --help", "recent -n 20, big log", "recent -n 20, small log"):
        cells = []
        for cached in (True, False):
            best, median, count = r["startup"][name, cached]
            counted = f"{count / 1e6:,.0f} M" if count is not None else "-"
            cells.append(f"{best * 1e3:.0f} / {median * 1e3:.0f} ms, {counted}")
        print(f"{name:<30}{cells[0]:>36}{cells[1]:>44}   {targets.get(name, '')}")


if __name__ == "__main__":
    main()
