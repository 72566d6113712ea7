"""The publisher helper as an agent uses it: a real agent process, a broker that stalls, a daemon."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
import zmq

from persist.agent.publisher import Publisher, Undelivered
from procs import Broker, Daemon, heavy, wait_for

AGENT = """
import sys
from persist.agent.publisher import Publisher, Undelivered
frontend, log_dir, count, close_timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
p = Publisher("burst-agent", frontend, log_dir=log_dir, close_timeout=close_timeout)
p.send("agent.burst", {"i": 0})
p.flush(30)
print("flushed", flush=True)
sys.stdin.readline()  # the test stalls the broker (or not), then says go
for i in range(1, count):
    p.send("agent.burst", {"i": i})
try:
    p.close()
except Undelivered as exc:
    print("undelivered", exc.count, flush=True)
    sys.exit(3)
print("delivered", flush=True)
"""


def start_agent(broker, log_dir, count: int, close_timeout: float) -> subprocess.Popen:
    agent = subprocess.Popen([sys.executable, "-c", AGENT, broker.frontend, str(log_dir), str(count), str(close_timeout)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert agent.stdout.readline() == "flushed\n"
    return agent


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def burst_values(daemon) -> list[int]:
    return [e.rec["payload"]["i"] for e in daemon.user_records() if e.rec["topic"] == "agent.burst"]


@contextmanager
def stopped(proc: subprocess.Popen):
    """``proc`` SIGSTOPped (and seen stopped) for the block; continued however the block ends."""
    proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: process_state(proc.pid) == "T", what=f"pid {proc.pid} to stop")
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


def go(agent: subprocess.Popen) -> None:
    agent.stdin.write("go\n")
    agent.stdin.flush()


@heavy
def test_an_agent_that_exits_right_after_a_burst_into_a_stalled_broker_loses_nothing(start_daemon, broker, log_dir):
    daemon = start_daemon()
    agent = start_agent(broker, log_dir, 20_001, close_timeout=60)
    with stopped(broker.proc):
        go(agent)
        time.sleep(1.5)
    out, _ = agent.communicate(timeout=90)
    assert (agent.returncode, out) == (0, "delivered\n")
    assert sorted(burst_values(daemon)) == list(range(20_001)), "every message the agent sent is in the log, once"
    assert daemon.stop() == 0, daemon.errors()[-3000:]


def test_close_raises_with_the_exact_count_it_could_not_deliver(start_daemon, broker, log_dir):
    daemon = start_daemon()
    agent = start_agent(broker, log_dir, 501, close_timeout=1.0)
    with stopped(broker.proc):
        go(agent)
        out, _ = agent.communicate(timeout=60)
    assert (agent.returncode, out) == (3, "undelivered 500\n"), "close() names the 500 sent while the broker was stopped"
    assert daemon.stop() == 0, daemon.errors()[-3000:]


def test_close_never_takes_a_daemon_too_stopped_to_answer_for_no_daemon(start_daemon, broker, log_dir):
    """A daemon that records the log dir but does not answer (stopped here; busy with a burst on a bad
    day) is waited for until close_timeout, then Undelivered counts every message not confirmed: never
    the quiet return meant for a log dir nobody records (the cold review: 17,001 lost, close() fine)."""
    daemon = start_daemon()
    agent = start_agent(broker, log_dir, 301, close_timeout=2.0)
    with stopped(daemon.proc):
        go(agent)
        out, _ = agent.communicate(timeout=60)
    assert (agent.returncode, out) == (3, "undelivered 301\n")
    assert daemon.stop() == 0, daemon.errors()[-3000:]


@heavy
def test_the_broker_waits_for_a_stalled_daemon_instead_of_dropping(log_dir):
    broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "--hwm", "20")
    daemon = Daemon(log_dir, "--connect", broker.backend).start()
    try:
        pub = Publisher("nodrop-agent", broker.frontend, log_dir=log_dir, close_timeout=60)
        blob = "x" * 20_000  # 2,000 of them are far more than the kernel's socket buffers hold
        with stopped(daemon.proc):
            threading.Timer(1.5, daemon.proc.send_signal, [signal.SIGCONT]).start()
            for i in range(2_000):
                pub.send("agent.burst", {"i": i, "blob": blob})
        pub.close()
        assert sorted(burst_values(daemon)) == list(range(2_000)), "nothing dropped at the broker's high-water mark"
        assert daemon.stop() == 0, daemon.errors()[-3000:]
    finally:
        broker.kill()
        if daemon.proc.poll() is None:
            daemon.kill9()


def test_close_counts_messages_lost_between_two_that_arrived(start_daemon, broker, log_dir, ctx):
    """A hole inside what arrived (here forged on the bus: numbers 2..4 skipped) is counted too."""
    daemon = start_daemon()
    pub = Publisher("holey-agent", broker.frontend, log_dir=log_dir, close_timeout=10)
    pub.send("agent.chat", {"i": 1})
    pub.flush()
    forger = ctx.socket(zmq.PUB)
    forger.connect(broker.frontend)
    wait_for(lambda: forger.send_multipart([b"warmup.forger", b'{"probe":true}']) or
             any(e.rec["topic"] == "warmup.forger" for e in daemon.records()), what="the daemon to hear the forger")
    forger.send_multipart([b"agent.chat", b'{"sender":"holey-agent","sender_seq":5}'])  # once: a second 5 is no skip
    wait_for(lambda: any(e.rec["payload"].get("sender_seq") == 5 for e in daemon.user_records()), what="the skip")
    pub.send("agent.chat", {"i": 2})
    with pytest.raises(Undelivered) as raised:
        pub.close()
    assert raised.value.count == 3, "numbers 2, 3 and 4 were found missing by the daemon"
    assert daemon.stop() == 0, daemon.errors()[-3000:]
