#!/usr/bin/env python3
"""Recording speed: persist-daemon against a bare pyzmq SUB and a naive recorder, in one run.

    .venv/bin/python scripts/bench_record.py [--messages 200000] [--quick] [--no-index]

One broker (``persist-cli broker``) on free loopback ports; one publisher sends
a burst of realistic ~400-byte JSON agent messages. Three receivers take the
same burst in turn:

* bare     — a pyzmq SUB that receives the frames as the daemon does and only
             counts (the ceiling for any Python recorder);
* floor    — the least any Python recorder of SPEC section 4 records must do:
             receive, check the JSON, sha256 the frames, one line per message,
             batched writes; no enrichment, ids, times, rotation or fsync
             until the end (what persist can at best approach, not a rival);
* naive    — json.loads + enrich + json.dumps + open/append/fsync per message;
* persist  — persist-daemon with enrichment on and ``--fsync batch``.

Each rate is wall time from the first send to the last message received or
recorded. ``--instructions`` also counts, with callgrind, the CPU instructions
each receiver spends per message (all its threads: libzmq's I/O thread, the
daemon's bus proxy; not the broker's or the publisher's): two bursts of
different sizes, the difference divided by the difference in messages, so
start-up cancels out. Instruction counts are the same whatever the neighbours
do, where wall-clock rates on a shared machine are not.

Bare and persist run in alternation, ``--rounds`` times each, and the
medians are compared, so that a noisy neighbour on a shared machine weighs on
both. Prints rates, the ratios the targets are set in (persist ≥ 0.6 × bare,
≥ 30 × naive), loss, and the daemon's peak RSS.
"""

from __future__ import annotations

import argparse
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Daemon, machine, memory_mb, payloads, publisher, start_broker, wait_until_receiving

BARE = r"""
import sys, time, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.SUB); s.setsockopt(zmq.RCVHWM, 0)
s.setsockopt(zmq.SUBSCRIBE, b""); s.connect(sys.argv[1]); n = int(sys.argv[2])
while s.recv_multipart()[0] == b"probe":
    print("ready", flush=True)
    break
got = 0
while got < n:  # receive as persist-daemon does: zmq.Frame.more, no getsockopt per frame
    frame = s.recv(copy=False)
    got += frame.bytes != b"probe"
    while frame.more:
        frame = s.recv(copy=False)
        frame.bytes
print(time.time(), flush=True)
"""

FLOOR = r"""
import hashlib, os, sys, time, orjson, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.SUB); s.setsockopt(zmq.RCVHWM, 0)
s.setsockopt(zmq.SUBSCRIBE, b""); s.connect(sys.argv[1]); n = int(sys.argv[2])
fd = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
while s.recv_multipart()[0] == b"probe":
    print("ready", flush=True)
    break
got, lines, loads, sha256 = 0, [], orjson.loads, hashlib.sha256
while got < n:
    frame = s.recv(copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = s.recv(copy=False)
        frames.append(frame.bytes)
    if frames[0] == b"probe":
        continue
    topic, payload = frames
    got += 1
    loads(payload)  # only valid JSON may be written verbatim
    digest = sha256(len(topic).to_bytes(8, "big") + topic + len(payload).to_bytes(8, "big") + payload).hexdigest()
    lines.append(b'{"seq":%d,"topic":"%b","meta":{"bytes":%d,"sha256":"%b"},"payload":%b}\n'
                 % (got, topic, len(payload), digest.encode(), payload))
    if len(lines) == 1000:
        os.write(fd, b"".join(lines))
        lines = []
os.write(fd, b"".join(lines))
os.fdatasync(fd)
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


def burst(pub, msgs: list[bytes]) -> float:
    t0 = time.time()
    send = pub.send_multipart
    for p in msgs:
        send([b"agent.chat", p])
    return t0


CALLGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def collected(stderr: str) -> int:
    """The instructions callgrind counted, from its summary on stderr."""
    return int(re.findall(r"Collected : (\d+)", stderr)[-1])


def run_script(script: str, backend: str, pub, msgs: list[bytes], *extra: str, wrapper: list[str] = ()) -> float:
    """The rate of one receiver script over the burst; under ``wrapper`` (callgrind), the instructions it took."""
    proc = subprocess.Popen([*wrapper, sys.executable, "-c", script, backend, str(len(msgs)), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE if wrapper else None, text=True)
    while not select.select([proc.stdout], [], [], 0.05)[0]:
        pub.send_multipart([b"probe", b"{}"])
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    t0 = burst(pub, msgs)
    t_end = float(proc.stdout.readline())
    if wrapper:
        return collected(proc.communicate()[1])
    proc.wait()
    return len(msgs) / (t_end - t0)


def count_persist(backend: str, pub, msgs: list[bytes], log_dir: Path, config: Path) -> int:
    """The instructions persist-daemon (under callgrind, indexing off) takes from start to stop around a burst.
    It is watched through its log file, never asked: a status request costs the daemon instructions too."""
    daemon = Daemon(log_dir, "--connect", backend, "--config", str(config), wrapper=CALLGRIND).start(wait=False)

    def recorded(topic: bytes) -> bool:
        try:
            with open(daemon.log.active, "rb") as f:
                f.seek(max(0, f.seek(0, 2) - 4096))
                return b'"topic":"%b"' % topic in f.read()
        except FileNotFoundError:
            return False

    while not recorded(b"probe"):
        pub.send_multipart([b"probe", b"{}"])
        time.sleep(0.5)
    burst(pub, msgs)
    pub.send_multipart([b"end", b"{}"])
    while not recorded(b"end"):
        time.sleep(0.5)
    daemon.stop(timeout=300)
    return collected(daemon.errors())


def instructions(small: int = 5_000, large: int = 25_000, naive_share: int = 10) -> dict[str, float]:
    """Instructions per message of bare, floor, naive and persist: (count(large) - count(small)) / (large - small).
    The naive recorder gets a tenth of the messages (it fsyncs each)."""
    msgs = payloads(large)
    work = Path(tempfile.mkdtemp(prefix="persist-bench-", dir="/tmp"))
    config = work / "persist.toml"
    config.write_text("[index]\nenabled = false\n")
    broker, frontend, backend = start_broker()
    pub = publisher(frontend)
    counts: dict[str, list[int]] = {"bare": [], "floor": [], "naive": [], "persist": []}
    try:
        for n in (small, large):
            counts["bare"].append(run_script(BARE, backend, pub, msgs[:n], wrapper=CALLGRIND))
            counts["floor"].append(run_script(FLOOR, backend, pub, msgs[:n], str(work / f"floor-{n}.jsonl"),
                                              wrapper=CALLGRIND))
            counts["naive"].append(run_script(NAIVE, backend, pub, msgs[:n // naive_share],
                                              str(work / f"naive-{n}.jsonl"), wrapper=CALLGRIND))
            counts["persist"].append(count_persist(backend, pub, msgs[:n], work / f"logs-{n}", config))
    finally:
        pub.close(linger=0)
        broker.kill()
        shutil.rmtree(work, ignore_errors=True)
    per = {name: (c[1] - c[0]) / (large - small) for name, c in counts.items()}
    per["naive"] *= naive_share
    return per


def print_instructions(per: dict[str, float]) -> None:
    print("CPU instructions per message (callgrind; the receiver's own process, all its threads):")
    for name in ("bare", "floor", "naive", "persist"):
        print(f"  {name:<10}{per[name]:>10,.0f}   {per[name] / per['bare']:.2f} × bare")
    print(f"  persist does {per['naive'] / per['persist']:.0f} × less work than naive per message; "
          f"bare ÷ persist = {per['bare'] / per['persist']:.2f} (the rate ratio it bounds, target ≥ 0.6)")


def run_persist(backend: str, pub, msgs: list[bytes], log_dir: Path, *args: str) -> dict:
    daemon = Daemon(log_dir, "--connect", backend, *args).start()
    wait_until_receiving(daemon, pub)
    base = daemon.status()["recorded"]
    time.sleep(0.5)
    n = len(msgs)
    t0 = burst(pub, msgs)
    deadline = time.time() + 600
    waiting = 0  # the most the daemon's status said was waiting in its receive queue
    while (status := daemon.status())["recorded"] < base + n and time.time() < deadline:
        waiting = max(waiting, (status["receive_queue"] or {}).get("messages", 0))
        time.sleep(0.005)
    t_end = time.time()
    rss = memory_mb(daemon.proc.pid)
    time.sleep(2.5)
    rss_after = memory_mb(daemon.proc.pid, "VmRSS")  # a burst's memory is given back once recorded
    daemon.stop()
    records = daemon.records()
    seqs = [e.seq for e in records]
    return {
        "rate": n / (t_end - t0),
        "lost": n - sum(e.rec["topic"] == "agent.chat" for e in records),
        "gap_records": sum(e.rec["topic"] == "$persist/gap" for e in records),
        "seq_continuous": seqs == list(range(1, len(seqs) + 1)),
        "rss_mb": rss,
        "rss_after_mb": rss_after,
        "waiting": waiting,
    }


def measure(n: int, naive_n: int = 2000, index: bool = True, baselines: bool = True, rounds: int = 3) -> dict:
    """Median rates of bare, naive and persist on the same burst of ``n`` messages, in alternation."""
    msgs = payloads(n)
    work = Path(tempfile.mkdtemp(prefix="persist-bench-", dir="/tmp"))
    config = work / "persist.toml"
    config.write_text(f"[index]\nenabled = {'true' if index else 'false'}\n")
    broker, frontend, backend = start_broker()
    pub = publisher(frontend)
    bare, floor, naive, runs = [], [], [], []
    try:
        for i in range(rounds):
            if baselines:
                bare.append(run_script(BARE, backend, pub, msgs))
                floor.append(run_script(FLOOR, backend, pub, msgs, str(work / f"floor-{i}.jsonl")))
                naive.append(run_script(NAIVE, backend, pub, msgs[:naive_n], str(work / "naive.jsonl")))
            runs.append(run_persist(backend, pub, msgs, work / f"logs-{i}", "--config", str(config)))
    finally:
        pub.close(linger=0)
        broker.kill()
        shutil.rmtree(work, ignore_errors=True)
    persist = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
    persist["rss_mb"] = max(r["rss_mb"] for r in runs)
    persist["rss_after_mb"] = max(r["rss_after_mb"] for r in runs)
    persist["waiting"] = max(r["waiting"] for r in runs)
    persist["lost"] = sum(r["lost"] for r in runs)
    persist["seq_continuous"] = all(r["seq_continuous"] for r in runs)
    result = {"messages": n, "bytes_avg": sum(map(len, msgs)) / n, "rounds": rounds, "persist": persist,
              "persist_rates": [r["rate"] for r in runs]}
    if baselines:
        result.update(bare=statistics.median(bare), floor=statistics.median(floor), naive=statistics.median(naive),
                      bare_rates=bare)
    return result


def profile_cost(n: int, rounds: int = 3) -> dict:
    """Recording rates with envelope profiles matched (the default) and switched off, in alternation,
    on messages no profile matches: what looking for an envelope costs."""
    msgs = payloads(n)
    work = Path(tempfile.mkdtemp(prefix="persist-bench-", dir="/tmp"))
    configs = {}
    for name, disable in (("on", "[]"), ("off", '["profiles"]')):
        configs[name] = work / f"{name}.toml"
        configs[name].write_text(f"[index]\nenabled = false\n[enrich]\ndisable = {disable}\n")
    broker, frontend, backend = start_broker()
    pub = publisher(frontend)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for i in range(rounds):
            for name in ("off", "on"):
                rates[name].append(run_persist(backend, pub, msgs, work / f"{name}-{i}", "--config",
                                               str(configs[name]))["rate"])
    finally:
        pub.close(linger=0)
        broker.kill()
        shutil.rmtree(work, ignore_errors=True)
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return {"on": on, "off": off, "cost": 1 - on / off}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--naive-messages", type=int, default=2_000)
    ap.add_argument("--quick", action="store_true", help="a CI-sized run (50k messages)")
    ap.add_argument("--no-index", action="store_true", help="record without the search indexer")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of bare and persist (medians)")
    ap.add_argument("--instructions", action="store_true",
                    help="also count CPU instructions per message with callgrind (slow: a few minutes)")
    ap.add_argument("--profile-cost", action="store_true",
                    help="only: recording with envelope profiles on vs off (messages no profile matches)")
    args = ap.parse_args()
    if args.profile_cost:
        c = profile_cost(50_000 if args.quick else args.messages, args.rounds)
        print(f"envelope profiles on {c['on']:,.0f} msg/s, off {c['off']:,.0f} msg/s: "
              f"{c['cost'] * 100:+.1f} % (target ≤ 5 %)")
        return
    r = measure(50_000 if args.quick else args.messages, args.naive_messages, index=not args.no_index,
                rounds=args.rounds)
    p, bare, naive = r["persist"], r["bare"], r["naive"]
    print(f"machine: {machine()}; {r['messages']} messages of {r['bytes_avg']:.0f} bytes avg; "
          f"medians of {r['rounds']} alternating rounds")
    print("bare rounds:    " + ", ".join(f"{x:,.0f}" for x in r["bare_rates"]))
    print("persist rounds: " + ", ".join(f"{x:,.0f}" for x in r["persist_rates"]))
    print(f"{'receiver':<10}{'msg/s':>12}   ratio")
    print(f"{'bare':<10}{bare:>12,.0f}   1.00 × bare")
    print(f"{'floor':<10}{r['floor']:>12,.0f}   {r['floor'] / bare:.2f} × bare (the least a SPEC record costs)")
    print(f"{'naive':<10}{naive:>12,.0f}   {naive / bare:.3f} × bare")
    print(f"{'persist':<10}{p['rate']:>12,.0f}   {p['rate'] / bare:.2f} × bare (target ≥ 0.6), "
          f"{p['rate'] / naive:.0f} × naive (target ≥ 30)")
    print(f"persist loss over all rounds: {p['lost']} (target 0), gap records: {p['gap_records']}; seq continuous: "
          f"{p['seq_continuous']}")
    print(f"daemon RSS: {p['rss_mb']:.0f} MB at the peak of the burst (it waits in the receive queue), "
          f"{p['rss_after_mb']:.0f} MB 2.5 s after it was recorded (target ≤ 80); status said at most "
          f"{p['waiting']:,} messages were waiting")
    if args.instructions:
        print_instructions(instructions())


if __name__ == "__main__":
    main()
