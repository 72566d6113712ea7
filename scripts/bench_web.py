#!/usr/bin/env python3
"""The web viewer's speed, measured in a real browser (headless Chromium, Debian's, through Playwright).

    .venv/bin/python scripts/bench_web.py [--records 1000000] [--quick]

* publish → visible in the live view, p50/p99, at 100 and 1,000 msg/s (target p99 ≤ 250 ms): a real broker,
  daemon and ``persist-cli web``; the page's MutationObserver stamps each row as it appears. Beside it the
  part the viewer itself adds: the daemon's receive time (``received_at``) → visible.
* a thread of 10,000 turns and the search page over 1,000,000 records, opened in the browser (navigation to
  the load event, median of 5; target ≤ 1 s each); beside each, ``persist-cli thread`` / ``search`` as a
  whole process over the same log, in the same run.
* the server's resident memory after all of it, and its peak.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    BIN,
    Daemon,
    build_log,
    machine,
    memory_mb,
    percentile,
    publisher,
    start_broker,
    wait_until_receiving,
)
from webproc import WebServer, launch

from persist.daemon.log import times
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import Message, encode

OBSERVE = """
window.__seen = [];
new MutationObserver(ms => { const now = performance.timeOrigin + performance.now();
  for (const m of ms) for (const n of m.addedNodes) if (n.nodeType === 1) for (const r of (n.matches('.rec[data-seq]') ? [n] : n.querySelectorAll('.rec[data-seq]')))
    window.__seen.push([r.textContent, now]); }).observe(document.getElementById('rows'), {childList: true, subtree: true});
"""
LOADED = "performance.getEntriesByType('navigation')[0].loadEventEnd"


def live_latency(browser, rate: int, seconds: float, work: Path) -> dict:
    """Publish at ``rate`` for ``seconds`` into a daemon; when each message showed in the live view."""
    broker, frontend, backend = start_broker()
    daemon = Daemon(work / f"live-{rate}", "--connect", backend).start()
    pub = publisher(frontend)
    wait_until_receiving(daemon, pub)
    web = WebServer(daemon.log_dir)
    try:
        page = browser.new_page()
        page.goto(web.url)
        page.wait_for_timeout(500)
        page.evaluate(OBSERVE)
        n = int(rate * seconds)
        sent: dict[int, float] = {}
        start = time.perf_counter()
        for i in range(n):
            while time.perf_counter() < start + i / rate:
                time.sleep(0.0005)
            sent[i] = time.time()
            pub.send_multipart([b"bench.live", json.dumps({"sender": "bench", "text": f"m{i} x"}).encode()])
        deadline = time.monotonic() + 10
        while page.evaluate("window.__seen.length") < n and time.monotonic() < deadline:
            time.sleep(0.2)
        seen = page.evaluate("window.__seen")
        received = {int(m.group(1)): times.epoch(e.rec["received_at"]) for e in daemon.records()
                    if e.rec["topic"] == "bench.live" and (m := re.match(r"m(\d+) ", e.rec["payload"]["text"]))}
        shown = {}
        for text, at in seen:
            m = re.search(r"\bm(\d+) x", text)
            if m:
                shown.setdefault(int(m.group(1)), at / 1000)
        total = [shown[i] - sent[i] for i in shown]
        viewer = [shown[i] - received[i] for i in shown if i in received]
        page.close()
        return {"rate": rate, "sent": n, "shown": len(shown), "p50": percentile(total, 50), "p99": percentile(total, 99),
                "viewer_p50": percentile(viewer, 50), "viewer_p99": percentile(viewer, 99),
                "rss": memory_mb(web.proc.pid, "VmRSS")}
    finally:
        web.stop()
        daemon.stop()
        broker.kill()


def open_time(browser, url: str, runs: int = 5) -> float:
    """Median seconds from navigation to the load event, in the browser."""
    page = browser.new_page()
    got = []
    for _ in range(runs):
        page.goto(url)
        got.append(page.evaluate(LOADED) / 1000)
    page.close()
    return statistics.median(got)


def whole_process(*args: str, runs: int = 3) -> float:
    got = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([str(BIN / "persist-cli"), *args], stdout=subprocess.DEVNULL, check=True)
        got.append(time.perf_counter() - t)
    return statistics.median(got)


def long_thread(root: Path, turns: int) -> LogDir:
    """A log of one thread of ``turns`` turns between two agents."""
    log = LogDir(root)
    log.create()
    now = time.time_ns()
    with open(log.active, "wb") as out:
        for seq in range(1, turns + 1):
            sender, recipient = ("planner", "claude_code") if seq % 2 else ("claude_code", "planner")
            body = json.dumps({"sender": sender, "recipient": recipient, "thread_id": "thread-long",
                               "kind": "request" if seq % 2 else "response",
                               "text": f"turn {seq}: the retry loop needs a capped backoff with jitter"}).encode()
            out.write(encode(Message.from_frames([b"agent.chat", body], now + seq * 1000), seq,
                             {"sender": sender, "recipient": recipient, "thread_id": "thread-long", "tokens": 20}))
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100k records, shorter live runs")
    args = ap.parse_args()
    records = 100_000 if args.quick else args.records
    work = Path(tempfile.mkdtemp(prefix="persist-bench-web-", dir="/tmp"))
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = launch(pw)
    rows = []
    try:
        lives = [live_latency(browser, 100, 5 if args.quick else 10, work),
                 live_latency(browser, 1000, 3 if args.quick else 5, work)]
        thread_log = long_thread(work / "thread", 10_000)
        subprocess.run([BIN / "persist-cli", "index", "rebuild", "--log-dir", str(thread_log.root)], check=True,
                       stdout=subprocess.DEVNULL)
        web = WebServer(thread_log.root)
        try:
            thread_s = open_time(browser, web.origin + "/thread/thread-long")
            middle_s = open_time(browser, web.origin + "/thread/thread-long?at=5000")
        finally:
            web.stop()
        thread_cli = whole_process("thread", "thread-long", "--log-dir", str(thread_log.root))
        big = work / "big"
        t = time.perf_counter()
        build_log(big, records=records)
        subprocess.run([BIN / "persist-cli", "index", "rebuild", "--log-dir", str(big)], check=True,
                       stdout=subprocess.DEVNULL)
        build_s = time.perf_counter() - t
        web = WebServer(big)
        try:
            search_s = open_time(browser, web.origin + "/search?q=backoff")
            rare_s = open_time(browser, web.origin + '/search?q="retry loop" AND planner')
            threads_s = open_time(browser, web.origin + "/threads")
            big_thread_s = open_time(browser, web.origin + "/thread/thread-0042")
            live_s = open_time(browser, web.origin + "/")
            message_s = open_time(browser, web.origin + f"/message/{records // 2}")
            agents_s = open_time(browser, web.origin + "/agents")
            rss, peak = memory_mb(web.proc.pid, "VmRSS"), memory_mb(web.proc.pid, "VmHWM")
        finally:
            web.stop()
        search_cli = whole_process("search", "backoff", "--log-dir", str(big))
    finally:
        browser.close()
        pw.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {machine()}; {records:,}-record log built and indexed in {build_s:.0f} s")
    rows.append(("measure", "persist web", "baseline (same run)", "target"))
    for r in lives:
        rows.append((f"publish → visible in the live view, {r['rate']:,} msg/s",
                     f"p50 {r['p50'] * 1e3:.0f} ms, p99 {r['p99'] * 1e3:.0f} ms ({r['shown']:,}/{r['sent']:,} shown)",
                     f"of which received → visible: p50 {r['viewer_p50'] * 1e3:.0f} ms, p99 {r['viewer_p99'] * 1e3:.0f} ms",
                     "p99 ≤ 250 ms"))
    rows.append(("thread page, 10,000 turns (browser, to load)", f"{thread_s * 1e3:.0f} ms (at turn 5,000: "
                 f"{middle_s * 1e3:.0f} ms)", f"persist-cli thread, whole process {thread_cli * 1e3:.0f} ms", "≤ 1 s"))
    rows.append((f"search page, {records:,} records (browser)", f"{search_s * 1e3:.0f} ms (phrase AND word: "
                 f"{rare_s * 1e3:.0f} ms)", f"persist-cli search, whole process {search_cli * 1e3:.0f} ms", "≤ 1 s"))
    rows.append((f"other pages, {records:,} records (browser)",
                 f"live {live_s * 1e3:.0f} ms, threads {threads_s * 1e3:.0f} ms, a 1k-turn thread "
                 f"{big_thread_s * 1e3:.0f} ms, message {message_s * 1e3:.0f} ms, agents {agents_s * 1e3:.0f} ms", "",
                 "≤ 1 s"))
    rows.append(("server RSS", f"{rss:.0f} MB after the 1M-record pages (peak {peak:.0f} MB); "
                 f"{lives[-1]['rss']:.0f} MB after 1,000 msg/s live", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for k, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
