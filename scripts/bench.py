#!/usr/bin/env python3
"""Every benchmark in one run: one table, each figure beside its baseline, plus the machine.

    .venv/bin/python scripts/bench.py            # full sizes (about 10 minutes)
    .venv/bin/python scripts/bench.py --quick    # CI-sized (about 2 minutes)

Writes the table, with date and command, to scripts/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import bench_cli
import bench_search

import bench_record
from benchlib import (
    REPO,
    Daemon,
    build_log,
    machine,
    memory_mb,
    percentile,
    publisher,
    start_broker,
    wait_until_receiving,
)
from persist.daemon.control import ask


def latency(rate: int, seconds: float) -> dict:
    """Publish → fsynced latency at ``rate`` msg/s (``--fsync batch``), p50 and p99."""
    work = Path(tempfile.mkdtemp(prefix="persist-bench-", dir="/tmp"))
    broker, frontend, backend = start_broker()
    pub = publisher(frontend)
    daemon = Daemon(work / "logs", "--connect", backend).start()
    try:
        wait_until_receiving(daemon, pub)
        time.sleep(0.3)
        start_seq = daemon.status()["last_seq"]
        n = int(rate * seconds)
        sent_at: list[float] = [0.0] * n
        committed: list[tuple[float, int]] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                committed.append((time.monotonic(), ask(daemon.log.control_endpoint, "status")["committed_seq"]))
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent_at[i] = time.monotonic()
            pub.send_multipart([b"lat", b'{"i":%d}' % i])
        time.sleep(0.5)
        done.set()
        watcher.join()
        rss = memory_mb(daemon.proc.pid)
    finally:
        pub.close(linger=0)
        daemon.stop()
        broker.kill()
    seq_of = {e.rec["payload"]["i"]: e.seq for e in daemon.records() if e.rec["topic"] == "lat"}
    shutil.rmtree(work, ignore_errors=True)
    lat, j = [], 0
    for i in range(n):
        seq = seq_of.get(i)
        if seq is None or seq <= start_seq:
            continue
        while j < len(committed) and committed[j][1] < seq:
            j += 1
        if j < len(committed):
            lat.append(committed[j][0] - sent_at[i])
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "measured": len(lat), "sent": n,
            "rss_mb": rss}


def restart_after_kill(gigabytes: float) -> dict:
    """Time from starting the daemon after a kill -9 to its answering, on a big log."""
    work = Path(tempfile.mkdtemp(prefix="persist-bench-", dir="/tmp"))
    try:
        build_log(work / "logs", int(gigabytes * 2**30))
        env = {"PERSIST_INDEX_ENABLED": "false"}
        daemon = Daemon(work / "logs", "--connect", "tcp://127.0.0.1:9", env=env).start()
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        with open(daemon.log.active, "ab") as f:
            f.write(b'{"v":1,"seq":99999999,"torn')
        times = []
        for _ in range(3):
            t = time.perf_counter()
            daemon.start()
            times.append(time.perf_counter() - t)
            daemon.kill9()
        return {"seconds": sorted(times)[1]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def instruction_rows(per: dict[str, float] | None) -> list[tuple[str, ...]]:
    """The CPU instructions each receiver spends per message (callgrind), beside bare pyzmq's."""
    if per is None:
        return [("CPU instructions per message", "valgrind not installed", "", "", "")]
    return [
        ("CPU instructions per message (callgrind)", f"{per['persist']:,.0f}", f"bare pyzmq SUB {per['bare']:,.0f}",
         f"bare ÷ persist {per['bare'] / per['persist']:.2f}", "(≥ 0.6)"),
        ("", "", f"floor {per['floor']:,.0f}", f"floor ÷ persist {per['floor'] / per['persist']:.2f}", ""),
        ("", "", f"naive {per['naive']:,.0f} (+ a kernel fsync each)",
         f"naive ÷ persist {per['naive'] / per['persist']:.1f}", ""),
    ]


def startup_rows(startup: dict, big: str) -> list[tuple[str, ...]]:
    """``--help`` and ``recent -n 20`` as whole processes (bytecode cached, as an installed persist runs): the best of
    15 and callgrind's instructions, beside ``python -c pass`` in the same run."""
    rows = []
    base_s, _, base_i = startup["python -c pass", True]
    for name, label, target in (("persist-cli --help", "persist-cli --help", "≤ 80 ms"),
                                ("recent -n 20, big log", f"recent -n 20, {big} log (whole process)", "≤ 60 ms")):
        best, _, count = startup[name, True]
        instr = f", {count / 1e6:,.0f} M instr." if count else ""
        base = f"python -c pass {base_s * 1e3:.0f} ms" + (f", {base_i / 1e6:,.0f} M" if base_i else "")
        ratio = f"{count / base_i:.1f} × the instructions" if count and base_i else f"{best / base_s:.1f} ×"
        rows.append((label, f"{best * 1e3:.0f} ms{instr}", base, ratio, target))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    q = args.quick
    gb = 0.1 if q else 1.0
    started = time.time()
    rec = bench_record.measure(50_000 if q else 200_000)
    instr = bench_record.instructions(*((1_000, 5_000) if q else (2_000, 12_000))) if shutil.which("valgrind") else None
    lat = latency(10_000, 3 if q else 10)
    cli = bench_cli.measure(gb)
    search = bench_search.measure(100_000 if q else 1_000_000, 30_000 if q else 100_000)
    restart = restart_after_kill(gb)
    p = rec["persist"]
    word = search["queries"]["word"]["p50"]
    slower = 1 - search["rate_index_on"] / search["rate_index_off"]
    big = f"{gb:g} GiB"
    rows = [
        ("recording rate (enrich on, fsync batch)", f"{p['rate']:,.0f} msg/s",
         f"bare pyzmq SUB {rec['bare']:,.0f} msg/s", f"{p['rate'] / rec['bare']:.2f} ×", "≥ 0.6 ×"),
        ("", "", f"naive recorder {rec['naive']:,.0f} msg/s", f"{p['rate'] / rec['naive']:.0f} ×", "≥ 30 ×"),
        ("", "", f"floor: the least a SPEC record costs {rec['floor']:,.0f} msg/s",
         f"{p['rate'] / rec['floor']:.2f} × (floor {rec['floor'] / rec['bare']:.2f} × bare)", ""),
        *instruction_rows(instr),
        ("messages lost in the burst", f"{p['lost']}", f"{rec['messages']:,} sent", "", "0"),
        ("publish → fsynced latency at 10k msg/s", f"p50 {lat['p50'] * 1e3:.1f} ms", "", f"p99 {lat['p99'] * 1e3:.1f} ms",
         "p99 ≤ 60 ms"),
        (f"checkpoint cost, {big} log", f"{cli['checkpoint_big'] * 1e3:.1f} ms",
         f"1 MiB log {cli['checkpoint_small'] * 1e3:.1f} ms", f"{cli['checkpoint_big'] / cli['checkpoint_small']:.2f} ×",
         "≤ 1.5 ×"),
        (f"restart after kill -9, {big} log", f"{restart['seconds'] * 1e3:.0f} ms", "", "", "≤ 1 s"),
        *startup_rows(cli["startup"], big),
        (f"search p50, {search['records']:,} records", f"{word * 1e3:.1f} ms", f"grep -c {search['grep'] * 1e3:.0f} ms",
         f"{search['grep'] / word:.0f} × faster", "≤ 50 ms"),
        (f"search index size, {search['records']:,} records", f"{search['index_bytes'] / 2**20:,.0f} MiB",
         f"the log {search['log_bytes'] / 2**20:,.0f} MiB", f"{search['index_bytes'] / search['log_bytes']:.2f} ×",
         "≤ 0.5 ×"),
        (f"index rebuild, {search['records']:,} records", f"{search['rebuild_s']:.1f} s",
         f"{search['records'] / search['rebuild_s']:,.0f} records/s", "", f"≤ {30 * search['records'] / 1e6:g} s"),
        ("recording with indexing on", f"{search['rate_index_on']:,.0f} msg/s",
         f"off {search['rate_index_off']:,.0f} msg/s", f"{slower * 100:+.1f} %", "≤ 10 % slower"),
        ("daemon peak RSS, 10k msg/s steady", f"{lat['rss_mb']:.0f} MB", "", "", "≤ 80 MB"),
        (f"daemon RSS 2.5 s after a {rec['messages']:,}-message burst", f"{p['rss_after_mb']:.0f} MB", "", "",
         "≤ 80 MB"),
        (f"daemon peak RSS, {rec['messages']:,}-message burst", f"{p['rss_mb']:.0f} MB",
         "the burst waits in the daemon's receive queue", "", ""),
        ("… of which `status` said waiting, at most", f"{p['waiting']:,} messages", f"{rec['messages']:,} sent",
         f"{p['waiting'] / rec['messages']:.2f}", "said"),
    ]
    header = ("measure", "persist", "baseline (same run)", "ratio", "target")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header] + rows]
    table = "\n".join(f"| {line} |" for line in lines[:1]) + "\n|" + "|".join("-" * (w + 2) for w in widths) + "|\n" + \
        "\n".join(f"| {line} |" for line in lines[1:])
    command = "scripts/bench.py" + (" --quick" if q else "")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"machine: {machine()}\n")
    print(table)
    queries = "\n".join(f"| {n} | `{v['query']}` | {v['p50'] * 1e3:.1f} ms | {v['p95'] * 1e3:.1f} ms |"
                        for n, v in search["queries"].items())
    doc = (f"# Performance\n\nMeasured {when} with `.venv/bin/python {command}` "
           f"({time.time() - started:.0f} s) on {machine()}.\n\n{table}\n\n"
           f"Search queries over {search['records']:,} records ({search['log_bytes'] / 2**20:.0f} MiB of JSONL, "
           f"index {search['index_bytes'] / 2**20:.0f} MiB, rebuilt in {search['rebuild_s']:.0f} s):\n\n"
           f"| query | FTS5 | p50 | p95 |\n|---|---|---|---|\n{queries}\n\n"
           f"Recording rates are medians of {rec['rounds']} alternating rounds (bare "
           f"{', '.join(f'{x:,.0f}' for x in rec['bare_rates'])}; persist "
           f"{', '.join(f'{x:,.0f}' for x in rec['persist_rates'])} msg/s). Every figure comes from one run "
           f"on a shared, noisy 2-core machine: read ratios, not absolutes.\n")
    (REPO / "scripts" / "PERFORMANCE.md").write_text(doc)
    print(f"\nwritten to {REPO / 'scripts' / 'PERFORMANCE.md'}")


if __name__ == "__main__":
    sys.exit(main())
