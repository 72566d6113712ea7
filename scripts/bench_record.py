#!/usr/bin/env python3
"""Recording speed: persist-daemon against a bare pyzmq SUB and a naive recorder, in one run.

    .venv/bin/python scripts/bench_record.py [--messages 200000] [--quick]

One broker (``persist-cli broker``) on free loopback ports; one publisher sends
a burst of realistic ~400-byte JSON agent messages. Three receivers take the
same burst in turn:

* bare     — a pyzmq SUB that only counts (the ceiling for any Python recorder);
* naive    — json.loads + enrich + json.dumps + open/append/fsync per message;
* persist  — persist-daemon with enrichment on and ``--fsync batch``.

Each rate is wall time from the first send to the last message received or
recorded. Prints rates, the ratios the targets are set in (persist ≥ 0.6 ×
bare, ≥ 30 × naive), loss, and the daemon's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

BIN = Path(sys.executable).parent
AGENTS = ["claude_code", "gemini_cli", "planner", "tool_server", "critic"]
KINDS = ["request", "response", "tool_call", "tool_result", "critique"]


def message(i: int, rnd: random.Random, counters: dict[str, int]) -> bytes:
    """A realistic agent message of about 400 bytes, with its sender's own sequence number."""
    sender, recipient = rnd.sample(AGENTS, 2)
    counters[sender] = counters.get(sender, 0) + 1
    body = {
        "sender": sender,
        "recipient": recipient,
        "thread_id": f"thread-{i % 97:04d}",
        "kind": rnd.choice(KINDS),
        "sender_seq": counters[sender],
        "ts": time.time(),
        "content": "Reviewed the patch to the session store; the retry loop in flush() can spin "
        "when the socket closes mid-write. Suggest a bounded backoff and a test that "
        f"kills the peer. ref={i:08d}",
        "tools": ["grep", "pytest"],
    }
    return json.dumps(body).encode()


def start_broker() -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [BIN / "persist-cli", "broker", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*"],
        stderr=subprocess.PIPE, text=True,
    )
    m = re.search(r"connect to (\S+), subscribers to (\S+)", proc.stderr.readline())
    return proc, m.group(1), m.group(2)


BARE = r"""
import sys, time, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.SUB); s.setsockopt(zmq.RCVHWM, 0)
s.setsockopt(zmq.SUBSCRIBE, b""); s.connect(sys.argv[1]); n = int(sys.argv[2])
while s.recv_multipart()[0] == b"probe":
    print("ready", flush=True)
    break
got = 0
while got < n:
    got += s.recv_multipart()[0] != b"probe"
print(time.time(), flush=True)
"""

NAIVE = r"""
import json, os, sys, time, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.SUB); s.setsockopt(zmq.RCVHWM, 0)
s.setsockopt(zmq.SUBSCRIBE, b""); s.connect(sys.argv[1]); n = int(sys.argv[2]); path = sys.argv[3]
while s.recv_multipart()[0] == b"probe":
    print("ready", flush=True)
    break
got = 0
while got < n:
    topic, payload = s.recv_multipart()
    if topic == b"probe":
        continue
    msg = json.loads(payload)
    rec = {"topic": topic.decode(), "received_at": time.time(), "payload": msg,
           "meta": {"sender": msg.get("sender"), "thread_id": msg.get("thread_id"), "bytes": len(payload)}}
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n"); f.flush(); os.fsync(f.fileno())
    got += 1
print(time.time(), flush=True)
"""


def publisher(frontend: str) -> zmq.Socket:
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(frontend)
    return pub


def burst(pub: zmq.Socket, payloads: list[bytes]) -> float:
    t0 = time.time()
    send = pub.send_multipart
    for p in payloads:
        send([b"agent.chat", p])
    return t0


def probe_until(pub: zmq.Socket, seen) -> None:
    while not seen():
        pub.send_multipart([b"probe", b"{}"])
        time.sleep(0.05)


def run_script(script: str, backend: str, pub: zmq.Socket, payloads: list[bytes], *extra: str) -> float:
    proc = subprocess.Popen([sys.executable, "-c", script, backend, str(len(payloads)), *extra],
                            stdout=subprocess.PIPE, text=True)
    probe_until(pub, lambda: select.select([proc.stdout], [], [], 0)[0])
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    t0 = burst(pub, payloads)
    t_end = float(proc.stdout.readline())
    proc.wait()
    return len(payloads) / (t_end - t0)


def run_persist(backend: str, pub: zmq.Socket, payloads: list[bytes], log_dir: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from procs import Daemon  # the same harness the tests use

    daemon = Daemon(log_dir, "--connect", backend).start()
    probe_until(pub, lambda: daemon.status()["recorded"] > 2)
    base = daemon.status()["recorded"]
    time.sleep(0.5)
    n = len(payloads)
    t0 = burst(pub, payloads)
    deadline = time.time() + 600
    while daemon.status()["recorded"] < base + n and time.time() < deadline:
        time.sleep(0.005)
    t_end = time.time()
    rss_kb = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{daemon.proc.pid}/status").read_text()).group(1))
    daemon.stop()
    records = daemon.records()
    seqs = [e.seq for e in records]
    return {
        "rate": n / (t_end - t0),
        "lost": n - sum(e.rec["topic"] == "agent.chat" for e in records),
        "gap_records": sum(e.rec["topic"] == "$persist/gap" for e in records),
        "seq_continuous": seqs == list(range(1, len(seqs) + 1)),
        "rss_mb": rss_kb / 1024,
        "log_mb": sum(p.stat().st_size for p in daemon.log.segment_files()) / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--naive-messages", type=int, default=2_000)
    ap.add_argument("--quick", action="store_true", help="a CI-sized run (50k messages)")
    args = ap.parse_args()
    n = 50_000 if args.quick else args.messages
    rnd = random.Random(7)
    counters: dict[str, int] = {}
    payloads = [message(i, rnd, counters) for i in range(n)]
    work = Path(tempfile.mkdtemp(prefix="persist-bench-", dir="/tmp"))
    broker, frontend, backend = start_broker()
    pub = publisher(frontend)
    try:
        bare = run_script(BARE, backend, pub, payloads)
        naive = run_script(NAIVE, backend, pub, payloads[: args.naive_messages], str(work / "naive.jsonl"))
        persist = run_persist(backend, pub, payloads, work / "logs")
    finally:
        pub.close(linger=0)
        broker.kill()
        shutil.rmtree(work, ignore_errors=True)
    size = sum(map(len, payloads)) / n
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"pyzmq {zmq.__version__}; {n} messages of {size:.0f} bytes avg")
    print(f"{'receiver':<10}{'msg/s':>12}   ratio")
    print(f"{'bare':<10}{bare:>12,.0f}   1.00 × bare")
    print(f"{'naive':<10}{naive:>12,.0f}   {naive / bare:.3f} × bare")
    print(f"{'persist':<10}{persist['rate']:>12,.0f}   {persist['rate'] / bare:.2f} × bare (target ≥ 0.6), "
          f"{persist['rate'] / naive:.0f} × naive (target ≥ 30)")
    print(f"persist loss: {persist['lost']} (target 0), gap records: {persist['gap_records']}; seq continuous: {persist['seq_continuous']}; "
          f"peak RSS {persist['rss_mb']:.1f} MB (target ≤ 80); log {persist['log_mb']:.1f} MiB")


if __name__ == "__main__":
    main()
