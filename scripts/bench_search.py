#!/usr/bin/env python3
"""Search speed on a big log against grep, and what indexing costs the recorder, in one run.

    .venv/bin/python scripts/bench_search.py [--records 1000000] [--quick]

Builds a log of realistic records, indexes it (``persist-cli index rebuild``,
timed), then runs typical queries through the library 20 times each (p50 and
p95, fetching the records from the JSONL as ``search --json`` does) and once as
a whole ``persist-cli search`` process; the baseline is ``grep -c`` over the same
JSONL. Then the recording rate with the indexer on vs off (target: ≤ 10 % slower).
"""

from __future__ import annotations

import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import bench_record
from benchlib import BIN, build_log, machine, percentile, sizes

from persist.daemon import index
from persist.daemon.index.search import Filters, search
from persist.daemon.log import reader
from persist.daemon.log.layout import LogDir

QUERIES = [
    ("word", "backoff", Filters()),
    ("phrase", '"retry loop"', Filters()),
    ("prefix", "migrat*", Filters()),
    ("boolean", "checkpoint AND replay NOT cache", Filters()),
    ("word + sender", "latency", Filters(sender="planner")),
    ("very common word", "kaka", Filters()),  # in most records: the worst case for ranking
]


def time_query(log: LogDir, db, query: str, filters: Filters, runs: int = 20) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        hits = search(db, query, filters, 20)
        list(index.entries(log, [(h["segment"], h["offset"]) for h in hits]))
        times.append(time.perf_counter() - t)
    return times


def measure(records: int, record_messages: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="persist-bench-", dir="/tmp"))
    try:
        log = LogDir(work / "logs")
        t = time.perf_counter()
        build_log(log.root, records=records)
        build_s = time.perf_counter() - t
        t, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([BIN / "persist-cli", "index", "rebuild", "--log-dir", str(log.root)], check=True,
                       stdout=subprocess.DEVNULL)
        rebuild_s = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU time: what a noisy neighbour changes least
        rebuild_cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        db = index.connect(index.index_path(log), create=False)
        queries = {}
        for name, q, f in QUERIES:
            times = time_query(log, db, q, f)
            queries[name] = {"query": q, "p50": percentile(times, 50), "p95": percentile(times, 95)}
        files = [str(seg.path) for seg in reader.segments(log)]
        greps = []
        for _ in range(3):
            t = time.perf_counter()
            # not to /dev/null: GNU grep then stops at the first match, as with -q
            subprocess.run(["grep", "-c", "backoff", *files], stdout=subprocess.PIPE, check=False)
            greps.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([BIN / "persist-cli", "search", "backoff", "--log-dir", str(log.root)], check=True,
                       stdout=subprocess.DEVNULL)
        cli_s = time.perf_counter() - t
        size = sum(Path(p).stat().st_size for p in files)
        index_size = index.index_path(log).stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    on, off = [], []
    for _ in range(3):  # in alternation, so that a noisy neighbour weighs on both
        on.append(bench_record.measure(record_messages, index=True, baselines=False, rounds=1)["persist"]["rate"])
        off.append(bench_record.measure(record_messages, index=False, baselines=False, rounds=1)["persist"]["rate"])
    on, off = statistics.median(on), statistics.median(off)
    return {"records": records, "log_bytes": size, "index_bytes": index_size, "build_s": build_s,
            "rebuild_s": rebuild_s, "rebuild_cpu": rebuild_cpu, "queries": queries, "grep": statistics.median(greps),
            "cli_search": cli_s, "rate_index_on": on, "rate_index_off": off}


def main() -> None:
    r = measure(*sizes(__doc__, "burst size for the indexing-cost measure"))
    print(f"machine: {machine()}")
    per_m = 1e6 / r["records"]
    print(f"log: {r['records']:,} records, {r['log_bytes'] / 2**20:.0f} MiB; index {r['index_bytes'] / 2**20:.0f} MiB "
          f"= {r['index_bytes'] / r['log_bytes']:.3f} × the log (target ≤ 0.5 ×)")
    print(f"index rebuild: {r['rebuild_s']:.1f} s (≈ {r['rebuild_s'] * per_m:.0f} s per 1M, target ≤ 30 s), "
          f"CPU {r['rebuild_cpu']:.1f} s (≈ {r['rebuild_cpu'] * per_m:.0f} s per 1M)")
    print(f"{'query':<16}{'p50':>9}{'p95':>9}   vs grep -c ({r['grep'] * 1e3:.0f} ms)")
    for name, q in r["queries"].items():
        print(f"{name:<16}{q['p50'] * 1e3:>7.1f}ms{q['p95'] * 1e3:>7.1f}ms   {r['grep'] / q['p50']:.0f} × faster"
              f"   {q['query']}")
    print(f"persist-cli search, whole process: {r['cli_search'] * 1e3:.0f} ms (target for the query: p50 ≤ 50 ms)")
    slower = 1 - r["rate_index_on"] / r["rate_index_off"]
    print(f"recording with indexer: {r['rate_index_on']:,.0f} msg/s, without: {r['rate_index_off']:,.0f} msg/s "
          f"→ {slower * 100:+.1f} % slower (target ≤ 10 %)")


if __name__ == "__main__":
    main()
