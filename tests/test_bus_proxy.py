"""The daemon's bus proxy (XSUB → zmq.proxy_steerable → inproc XPUB → the loop's SUB) against a bad day.

The broker (``persist-cli broker``) never drops (``XPUB_NODROP``): when the daemon cannot keep up, the
wait reaches the publishers. Whatever the daemon puts between the broker and its loop must keep that:
a backlog longer than ``daemon.receive_hwm`` waits (in the broker, or in the publisher), it is never
dropped silently inside the daemon.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import zmq

from persist.daemon.bus import Bus
from persist.daemon.config import DaemonSection
from procs import heavy


def _flood_count(daemon) -> int:
    return sum(1 for e in daemon.records() if e.rec["topic"] == "flood")


def _settled(daemon, timeout: float = 60.0) -> int:
    """The number of flood records once it has stopped growing."""
    deadline, last = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = _flood_count(daemon)
        if now == last:
            return now
        last = now
    return last


@heavy
def test_a_backlog_longer_than_receive_hwm_waits_and_is_not_dropped(recorder):
    """receive_hwm 1000, 10,000 messages sent while the daemon cannot read: before the proxy, the
    daemon's full queue pushed back over TCP into the broker (XPUB_NODROP) and all 10,000 were recorded;
    an inproc XPUB without XPUB_NODROP drops everything beyond its pipe (about 2 × receive_hwm) silently,
    with no gap record, and status then says the dropped messages are still 'waiting'."""
    daemon, p = recorder("[daemon]\nreceive_hwm = 1000\nfsync = 'off'\n")
    pid = daemon.daemon_pid()
    sent = 10_000
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(sent):
            p.send(b"flood", b'{"i":%d,"pad":"%s"}' % (i, b"x" * 100))
        time.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    recorded = _settled(daemon)
    gaps = [e.rec for e in daemon.records() if e.rec["topic"] == "$persist/gap"]
    assert recorded == sent, f"{sent - recorded} of {sent} messages lost silently (gap records: {gaps})"
    assert daemon.status()["receive_queue"]["messages"] == 0


def test_a_signal_on_the_proxy_thread_does_not_zero_the_receive_queue():
    """A process-directed signal (SIGHUP, SIGUSR1, SIGTERM) goes to any thread that does not block it, so
    also to the proxy's, whenever the main thread already has one pending (in an fsync, say). Its poll
    returns EINTR, pyzmq calls zmq_proxy_steerable again, and the proxy's STATISTICS start again from 0:
    status then says nothing waits ('waiting 0') until the proxy has forwarded as much again as the loop
    took in all before."""
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)  # the daemon's handlers are Python ones too
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    cfg = DaemonSection()
    cfg.connect, cfg.bind = [f"tcp://127.0.0.1:{port}"], []
    bus = Bus(ctx, cfg)
    try:
        def arrived(n):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (bus.waiting() or {}).get("messages") != n:
                time.sleep(0.02)

        time.sleep(0.3)  # the subscription reaches the PUB
        for _ in range(1000):
            pub.send_multipart([b"t", b"x" * 10])
        arrived(1000)
        assert len(bus.receive(10_000, 1 << 30)[0]) == 1000
        signal.pthread_kill(bus.proxy.thread.ident, signal.SIGUSR1)
        time.sleep(0.2)
        for _ in range(500):
            pub.send_multipart([b"t", b"x" * 10])
        arrived(500)
        assert bus.waiting() == {"messages": 500, "bytes": 500 * 11, "frames": 1000}
        assert len(bus.receive(10_000, 1 << 30)[0]) == 500
    finally:
        bus.close()
        pub.close(linger=0)
        ctx.term()
        signal.signal(signal.SIGUSR1, previous)


@heavy
def test_a_reload_that_drops_a_prefix_under_load_leaves_nothing_counted_as_waiting(recorder, workdir):
    """SIGHUP narrows [daemon] subscribe while a publisher floods a topic it no longer covers: the messages
    already on their way are counted as forwarded by the proxy, then filtered out by its inner XPUB, and
    never taken by the loop; status (and persist-cli status: 'waiting N messages ... received, not yet
    recorded') says they wait, for ever, on an idle daemon whose queue is empty."""
    daemon, p = recorder("[daemon]\nfsync = 'off'\nsubscribe = ['']\n")
    stop = threading.Event()

    def flood():
        i = 0
        while not stop.is_set():
            p.send(b"b.flood", b'{"i":%d}' % i)
            i += 1
            if i % 200 == 0:
                time.sleep(0.001)

    t = threading.Thread(target=flood)
    t.start()
    try:
        time.sleep(1.0)
        (workdir / "persist.toml").write_text("[daemon]\nfsync = 'off'\nsubscribe = ['a.']\n")
        os.kill(daemon.daemon_pid(), signal.SIGHUP)
        time.sleep(1.0)
    finally:
        stop.set()
        t.join()
    time.sleep(2.0)  # idle: everything there was to record is recorded
    assert daemon.status()["subscribe"] == ["a."]
    assert daemon.status()["receive_queue"] == {"messages": 0, "bytes": 0, "frames": 0}
