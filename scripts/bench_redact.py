#!/usr/bin/env python3
"""Redaction's cost: persist-daemon's recording rate with ``[redact] enabled`` on vs off, in one run.

    .venv/bin/python scripts/bench_redact.py [--messages 200000] [--quick] [--rounds 3] [--leaky 1.0]

One broker on free loopback ports; one publisher sends the same burst of
realistic ~400-byte agent messages (``benchlib.payloads``) to a daemon with
redaction off, then one with the built-in rules on, ``--rounds`` times in
alternation (index off in both, so only redaction differs), and the medians
are compared: a noisy neighbour weighs on both. ``--leaky`` percent of the
messages carry a real-looking secret (a GitHub token, an AWS key id, an
Anthropic key in turn), which the "on" daemon must replace; the run checks
that it did. Besides the rates (wall time, first send to last record), the
daemon's own CPU time per message (``/proc/<pid>/stat``, all its threads) is
compared, which a busy neighbour on a shared machine disturbs far less than
wall time. Also prints what the redactor costs per message in-process (best
of five), on messages without and with a secret. Target: on ≤ 15 % slower.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import orjson
from bench_record import burst
from benchlib import Daemon, machine, payloads, publisher, start_broker, wait_until_receiving

from persist.daemon.log.record import Message
from persist.daemon.redact import Redactor
from persist.daemon.redact.rules import builtin

SECRETS = ["ghp_" + "Zq7Lm2Nx8Rt4Vb6Yc1Wd3Hf5Jk9Ps0Ta2Ue4", "AKIA" + "QX7ZL2MN4RT6VB3Y",
           "sk-ant-api03-" + "Xy7" * 31 + "AA"]


def leaky(msgs: list[bytes], percent: float) -> tuple[list[bytes], int]:
    """``msgs`` with a secret pasted into ``percent`` % of them (evenly spread); how many."""
    if percent <= 0:
        return msgs, 0
    every = max(1, round(100 / percent))
    out, n = [], 0
    for i, m in enumerate(msgs):
        if i % every == every // 2:
            body = orjson.loads(m)
            body["content"] += f" here is the key: {SECRETS[n % len(SECRETS)]}"
            m, n = orjson.dumps(body), n + 1
        out.append(m)
    return out, n


def in_process(msgs: list[bytes]) -> tuple[float, float]:
    """µs per message the redactor takes (best of five passes), on messages without a secret and with one."""
    r = Redactor(builtin(), key=b"k" * 32)
    plain = [Message.from_frames([b"agent.chat", m], 0) for m in msgs[:20000]]
    secret = [Message.from_frames([b"agent.chat", leaky([m], 100)[0][0]], 0) for m in msgs[:2000]]
    out = []
    for batch in (plain, secret):
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for msg in batch:
                r.message(msg)
            best = min(best, time.perf_counter() - t)
        out.append(best / len(batch) * 1e6)
    return out[0], out[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def record_burst(backend: str, pub, msgs: list[bytes], log_dir: Path, config: Path) -> tuple[float, float]:
    """``(msg/s, daemon CPU µs per message)`` for one daemon recording the burst ``msgs``."""
    daemon = Daemon(log_dir, "--connect", backend, "--config", str(config)).start()
    try:
        wait_until_receiving(daemon, pub)
        base = daemon.status()["recorded"]
        time.sleep(0.5)
        cpu = cpu_seconds(daemon.proc.pid)
        t0 = burst(pub, msgs)
        deadline = time.time() + 600
        while daemon.status()["recorded"] < base + len(msgs) and time.time() < deadline:
            time.sleep(0.01)
        t_end = time.time()
        cpu = cpu_seconds(daemon.proc.pid) - cpu
    finally:
        daemon.stop()
    return len(msgs) / (t_end - t0), cpu / len(msgs) * 1e6


def measure(n: int, rounds: int, percent: float) -> dict:
    msgs, secrets = leaky(payloads(n), percent)
    work = Path(tempfile.mkdtemp(prefix="persist-bench-", dir="/tmp"))
    configs = {}
    for name, on in (("off", "false"), ("on", "true")):
        configs[name] = work / f"{name}.toml"
        configs[name].write_text(f"[index]\nenabled = false\n[redact]\nenabled = {on}\n")
    broker, frontend, backend = start_broker()
    pub = publisher(frontend)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    redacted = []
    try:
        for i in range(rounds):
            for name in ("off", "on"):
                log_dir = work / f"{name}-{i}"
                rate, us = record_burst(backend, pub, msgs, log_dir, configs[name])
                rates[name].append(rate)
                cpu[name].append(us)
                if name == "on":
                    data = b"".join(p.read_bytes() for p in log_dir.rglob("*.jsonl"))
                    redacted.append((data.count(b'"redacted":['), any(s.encode() in data for s in SECRETS)))
                shutil.rmtree(log_dir, ignore_errors=True)
    finally:
        pub.close(linger=0)
        broker.kill()
        shutil.rmtree(work, ignore_errors=True)
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    cpu_on, cpu_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    return {"messages": n, "secrets": secrets, "on": on, "off": off, "cost": 1 - on / off, "rates": rates,
            "cpu": cpu, "cpu_on": cpu_on, "cpu_off": cpu_off, "cpu_cost": cpu_on / cpu_off - 1, "redacted": redacted}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="a CI-sized run (50k messages)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of off and on (medians)")
    ap.add_argument("--leaky", type=float, default=1.0, help="percent of messages carrying a secret")
    args = ap.parse_args()
    n = 50_000 if args.quick else args.messages
    plain_us, secret_us = in_process(payloads(20_000))
    r = measure(n, args.rounds, args.leaky)
    print(f"machine: {machine()}; {n} messages, {r['secrets']} with a secret ({args.leaky:g} %); "
          f"medians of {args.rounds} alternating rounds, index off")
    print("off rounds: " + ", ".join(f"{x:,.0f}" for x in r["rates"]["off"]))
    print("on rounds:  " + ", ".join(f"{x:,.0f}" for x in r["rates"]["on"]))
    print("off CPU µs/msg: " + ", ".join(f"{x:.1f}" for x in r["cpu"]["off"]))
    print("on CPU µs/msg:  " + ", ".join(f"{x:.1f}" for x in r["cpu"]["on"]))
    print(f"recording rate, redaction on {r['on']:,.0f} msg/s, off {r['off']:,.0f} msg/s: "
          f"{r['cost'] * 100:+.1f} % slower (target ≤ 15 %)")
    print(f"daemon CPU per message, on {r['cpu_on']:.1f} µs, off {r['cpu_off']:.1f} µs: "
          f"{r['cpu_cost'] * 100:+.1f} %")
    print(f"records redacted per 'on' round: {[c for c, _ in r['redacted']]} (expected {r['secrets']}); "
          f"a secret left in a log: {any(left for _, left in r['redacted'])}")
    print(f"in-process: {plain_us:.2f} µs per message without a secret, {secret_us:.1f} µs with one")


if __name__ == "__main__":
    main()
