"""Shared pieces of the benchmarks: realistic messages, a broker, big logs, the machine."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from persist.daemon.log.layout import LogDir, segment_name
from persist.daemon.log.record import Message, encode
from procs import BIN, Daemon, memory_mb  # noqa: E402,F401  (the harness the tests use; memory_mb for the benches)

AGENTS = ["claude_code", "gemini_cli", "planner", "tool_server", "critic"]
KINDS = ["request", "response", "tool_call", "tool_result", "critique"]
WORDS = ("session store retry loop flush socket backoff peer test patch review database schema migration "
         "token budget planner critique revision cache latency timeout checkpoint replay thread").split()
_SYLLABLES = "ka lo mi ne ru sa ti vo ze pa qu ri do fe gu ha ji ke".split()
# A Zipf-like vocabulary: a few very common words, a long tail of rare ones, the
# project words among them, as in real conversation text.
VOCABULARY = [a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in ("", "n", "s")][:3000]
for _i, _w in enumerate(WORDS):
    VOCABULARY.insert(40 + _i * 60, _w)
ZIPF = [1 / (rank + 1) for rank in range(len(VOCABULARY))]
SEGMENT = 256 * 1024 * 1024


def message(i: int, rnd: random.Random, counters: dict[str, int]) -> bytes:
    """A realistic agent message of about 400 bytes, with its sender's own sequence number."""
    sender, recipient = rnd.sample(AGENTS, 2)
    counters[sender] = counters.get(sender, 0) + 1
    text = " ".join(rnd.choices(VOCABULARY, ZIPF, k=36))
    body = {
        "sender": sender,
        "recipient": recipient,
        "thread_id": f"thread-{i % 997:04d}",
        "kind": rnd.choice(KINDS),
        "sender_seq": counters[sender],
        "ts": time.time(),
        "content": f"{text}. ref={i:08d}",
        "tools": ["grep", "pytest"],
    }
    return json.dumps(body).encode()


def payloads(n: int, seed: int = 7) -> list[bytes]:
    rnd, counters = random.Random(seed), {}
    return [message(i, rnd, counters) for i in range(n)]


def start_broker() -> tuple[subprocess.Popen, str, str]:
    """``persist-cli broker`` on free ports: (process, frontend, backend)."""
    proc = subprocess.Popen(
        [BIN / "persist-cli", "broker", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*"],
        stderr=subprocess.PIPE, text=True,
    )
    m = re.search(r"connect to (\S+), subscribers to (\S+)", proc.stderr.readline())
    return proc, m.group(1), m.group(2)


def publisher(frontend: str) -> zmq.Socket:
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(frontend)
    return pub


def build_log(root: Path, nbytes: int | None = None, records: int | None = None) -> int:
    """A log dir of realistic records (rotated into 256 MiB segments), enriched as the daemon enriches them
    (its built-in enrichers with the default config); returns the record count."""
    from persist.daemon import enrich
    from persist.daemon.config import EnrichSection

    log = LogDir(root)
    log.create()
    templates = payloads(5000, seed=3)
    enriched = enrich.pipeline(EnrichSection())
    seq, written, first, buf = 0, 0, 1, []
    out = open(log.active, "wb")
    now = time.time_ns()
    while (nbytes is not None and written < nbytes) or (records is not None and seq < records):
        seq += 1
        msg = Message.from_frames([b"agent.chat", templates[seq % len(templates)]], now + seq * 1000)
        line = encode(msg, seq, enriched(msg))
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


def machine() -> str:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"pyzmq {zmq.__version__}, SQLite {__import__('sqlite3').sqlite_version}")


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def wait_until_receiving(daemon: Daemon, pub: zmq.Socket) -> None:
    """Probe until the daemon records something (the slow joiner), using its status, not the files."""
    base = daemon.status()["recorded"]
    while daemon.status()["recorded"] == base:
        pub.send_multipart([b"probe", b"{}"])
        time.sleep(0.05)


def sizes(doc: str, burst_help: str) -> tuple[int, int]:
    """The command line of a benchmark over a big log and a recording burst:
    ``--records`` (1,000,000), ``--messages`` (100,000) or ``--quick`` (100k and 30k); returns both."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--messages", type=int, default=100_000, help=burst_help)
    ap.add_argument("--quick", action="store_true", help="100k records, a 30k-message burst")
    args = ap.parse_args()
    return (100_000, 30_000) if args.quick else (args.records, args.messages)
