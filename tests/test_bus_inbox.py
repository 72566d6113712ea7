"""The bus's inbox (what was taken off the SUB socket, not yet recorded, counted for status) against a bad day.

The broker (``persist-cli broker``) never drops (``XPUB_NODROP``): when the daemon cannot keep up, the
wait reaches the publishers. Whatever the daemon puts between the broker and its loop must keep that:
a backlog longer than ``daemon.receive_hwm`` waits (in the broker, or in the publisher), it is never
dropped silently inside the daemon. (A proxy thread that counted what it forwarded did drop, through an
inproc XPUB, and lost its counts to signals and reloads: these tests are what it failed.)
"""

from __future__ import annotations

import os
import signal
import threading
import time

import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from persist.daemon import inbox as inbox_module
from persist.daemon.bus import Bus
from persist.daemon.config import DaemonSection
from persist.daemon.inbox import Inbox
from procs import heavy

MESSAGES = st.lists(st.lists(st.binary(max_size=300), min_size=1, max_size=4), max_size=60)


@settings(max_examples=60, deadline=None)
@given(MESSAGES, st.lists(st.integers(1, 20), min_size=1, max_size=20), st.integers(1, 400))
def test_the_inbox_gives_back_every_message_whole_and_in_order_and_counts_them(messages, takes, chunk):
    """Messages put in from a real socket come back as they were sent (frames, empty ones too, and
    order), across buffers of any size, taken in batches of any size; the counts always say what is left."""
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    endpoint = f"inproc://inbox-{id(messages)}-{time.monotonic_ns()}"
    a.bind(endpoint)
    b.connect(endpoint)
    saved, inbox_module.CHUNK = inbox_module.CHUNK, chunk
    try:
        for m in messages:
            a.send_multipart(m)
        box, got = Inbox(), []
        filled = box.fill(b.recv, 10 ** 6, 1 << 30)
        assert filled == len(messages) == len(box)
        assert box.bytes == sum(map(len, sum(messages, [])))
        for n in takes * 10:
            batch, nbytes = box.take(n, 1 << 30)
            assert nbytes == sum(map(len, sum(batch, [])))
            got += batch
            assert len(box) == len(messages) - len(got)
            assert box.bytes == sum(map(len, sum(messages[len(got):], [])))
        got += box.take(10 ** 6, 1 << 30)[0]
        assert got == messages
        assert not box.chunks, "every buffer read through is let go"
    finally:
        inbox_module.CHUNK = saved
        a.close(linger=0)
        b.close(linger=0)


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
    daemon's full queue pushes back over TCP into the broker (XPUB_NODROP) and all 10,000 are recorded;
    (an inproc XPUB without XPUB_NODROP dropped everything beyond its pipe silently, with no gap record,
    and status then said the dropped messages were still 'waiting')."""
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
    assert daemon.status()["receive_queue"] == {"messages": 0, "bytes": 0, "full": False}


def test_the_inbox_counts_what_waits_exactly_and_holds_half_of_receive_hwm():
    """What the socket holds is taken into the inbox and counted to the byte; the inbox stops at half of
    receive_hwm (the socket holds the other half, then TCP pushes back) and says it is full; a signal
    or a reload changes no count (the counts are the inbox's own, no other thread keeps them)."""
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    cfg = DaemonSection()
    cfg.connect, cfg.bind, cfg.receive_hwm = [f"tcp://127.0.0.1:{port}"], [], 1000
    bus = Bus(ctx, cfg)
    try:
        def arrived(n):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and bus.waiting()["messages"] != n:
                bus.take()
                time.sleep(0.02)
            return bus.waiting()

        while not bus.receive(10, 1 << 30)[0]:  # the subscription reaches the PUB
            pub.send_multipart([b"probe", b""])
            time.sleep(0.05)
        time.sleep(0.2)
        bus.receive(10_000, 1 << 30)
        for _ in range(300):
            pub.send_multipart([b"t", b"x" * 10])
        assert arrived(300) == {"messages": 300, "bytes": 300 * 11, "full": False}
        os.kill(os.getpid(), signal.SIGUSR1)
        batch, nbytes = bus.receive(100, 1 << 30)
        assert (len(batch), nbytes) == (100, 1100)
        assert bus.waiting() == {"messages": 200, "bytes": 200 * 11, "full": False}
        for _ in range(2000):
            pub.send_multipart([b"t", b"x" * 10])
        assert arrived(500) == {"messages": 500, "bytes": 500 * 11, "full": True}, "half of receive_hwm"
        got = 0
        while got < 2200:
            got += len(bus.receive(1000, 1 << 30)[0])
        assert got == 2200 and bus.waiting() == {"messages": 0, "bytes": 0, "full": False}, "all of them, none lost"
    finally:
        bus.close()
        pub.close(linger=0)
        ctx.term()
        signal.signal(signal.SIGUSR1, previous)


@heavy
def test_a_reload_that_drops_a_prefix_under_load_leaves_nothing_counted_as_waiting(recorder, workdir):
    """SIGHUP narrows [daemon] subscribe while a publisher floods a topic it no longer covers: once the
    daemon is idle, status says nothing waits (a proxy's counts once said the messages its inner XPUB
    filtered out waited for ever)."""
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
    assert daemon.status()["receive_queue"] == {"messages": 0, "bytes": 0, "full": False}
