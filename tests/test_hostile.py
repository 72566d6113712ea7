"""The recorder against a hostile publisher and long faults (SPEC section 11).

Every case is a real daemon on a real broker: what a publisher sends is either
recorded byte for byte or counted in a gap record, the daemon never stops, and
the next ordinary message is still recorded and found.
"""

from __future__ import annotations

import os
import re
import signal
import time

import orjson
import pytest
import zmq

from persist.daemon.log.record import MAX_DEPTH, decode_frames, frames_sha256, is_system
from libdir import cli
from procs import Daemon, eventually, heavy, memory_mb, wait_for

HOSTILE = [
    [b"deep.newline", b"[" * 300 + b"\n1" + b"]" * 300],  # killed the daemon (orjson.dumps recursion)
    [b"deep.line", b"[" * 300 + b"]" * 300],  # broke search, threads, export, the indexer
    [b"deep.1024", b"[" * 1024 + b"]" * 1024],  # made a line the reader could not parse
    [b"deep.1025", b"[" * 1025 + b"]" * 1025],  # not JSON to any parser here: text
    [b"deep.object", b'{"a":' * 254 + b"1" + b"}" * 254],
    [b"deep.limit", b"[" * MAX_DEPTH + b"]" * MAX_DEPTH],  # the deepest kept as JSON
    [b"seq", b'{"sender":"mallory","sender_seq":-9223372036854775808}'],
    [b"seq", b'{"sender":"mallory","sender_seq":18446744073709551615}'],  # killed it logging the gap
    [b"seq", b'{"sender":"mallory","sender_seq":1180591620717411303424}'],
    [b"seq", b'{"sender":{"not":"a name"},"sender_seq":5}'],
    [b"big.ints", b"[123456789012345678901234567890,-99999999999999999999999,1e400]"],
    [b"\xff\xfe topic", b"\x00\x01binary\xff"],
    [b"many.frames", *[b"%d" % i for i in range(300)]],
    [b""],
    [b"", b"", b""],
    [b"$persist/gap", b'{"reason":"not_running","text":"a forgery"}'],
]


def lines_parse_and_serialise(log) -> None:
    for path in sorted(log.segments.glob("*.jsonl")) + [log.active]:
        for line in path.read_bytes().splitlines():
            orjson.dumps(orjson.loads(line))  # neither raises: every reader can take every line




@heavy
def test_no_message_stops_the_recorder_or_breaks_a_reader(recorder):
    daemon, p = recorder()
    for frames in HOSTILE:
        p.send(*frames)
    p.send(b"agent.chat", b'{"sender":"alice","text":"after the storm, a zebracorn"}')
    def published():
        return [e for e in daemon.records() if e.rec["topic"] != "warmup" and not is_system(e.rec)]

    recs = wait_for(lambda: len(r := published()) > len(HOSTILE) and r, what="every message recorded")
    assert daemon.proc.poll() is None, daemon.errors()
    assert [e.frames() for e in recs[:-1]] == HOSTILE, "each recorded byte for byte, in order"
    for e in recs:
        assert e.rec["meta"]["sha256"] == frames_sha256(e.frames())
    by_topic = {e.rec["topic"]: e.rec for e in recs}
    assert by_topic["deep.line"]["meta"]["payload_note"].startswith("JSON nested deeper")
    assert by_topic["deep.limit"]["payload"] is not None and "payload_note" not in by_topic["deep.limit"]["meta"]
    assert by_topic["$persist/gap"]["origin"] == "bus", "a forged daemon record is marked as the bus's"
    lines_parse_and_serialise(daemon.log)

    found = wait_for(lambda: (r := cli(daemon.log_dir, "search", "zebracorn", "--json")).returncode == 0
                     and r.stdout, what="the normal message to be searchable")
    assert orjson.loads(found.splitlines()[0])["payload"]["text"].endswith("zebracorn")
    forged = cli(daemon.log_dir, "search", "forgery", "--json")
    assert forged.returncode == 0 and orjson.loads(forged.stdout)["origin"] == "bus", "searchable like any message"
    indexer_log = (daemon.log.root / "metadata_index" / "indexer.log").read_text()
    assert '"level":"error"' not in indexer_log and "Traceback" not in indexer_log, "the indexer took every record"
    for command in (["threads"], ["export", "--format", "csv"], ["export", "--format", "markdown"],
                    ["export", "--format", "jsonl"], ["index", "rebuild"], ["verify"]):
        result = cli(daemon.log_dir, *command)
        assert result.returncode == 0, (command, result.stderr)
        assert "Traceback" not in result.stderr
    assert eventually(lambda: daemon.status()["indexer_pid"], timeout=15), "an indexer runs again after the rebuild"

    last = daemon.status()["last_seq"]
    daemon.kill9()
    daemon.start()
    assert not list(daemon.log.recovery.glob("torn-*")), "no whole record is taken for a torn one"
    assert [e.seq for e in daemon.records()] == list(range(1, len(daemon.records()) + 1))
    assert daemon.records()[last - 1].seq == last


def test_a_forged_stop_record_does_not_hide_a_crash(recorder):
    daemon, p = recorder()
    p.send(b"$persist/stop", b'{"pid":1,"recorded":0}')
    wait_for(lambda: any(e.rec.get("origin") == "bus" for e in daemon.records()), what="the forged record")
    daemon.kill9()
    daemon.start()
    gaps = [e.rec["payload"] for e in daemon.records() if is_system(e.rec) and e.rec["topic"] == "$persist/gap"]
    assert [g["reason"] for g in gaps] == ["not_running"], "the crash is recorded as a gap"
    dry = cli(daemon.log_dir, "replay", "--dry-run")
    assert b"$persist/stop" in dry.stdout.encode(), "replay sends the publisher's message like any other"


@heavy
def test_memory_is_bounded_in_bytes_whatever_topics_and_sizes(recorder):
    daemon, p = recorder()
    pid = daemon.daemon_pid()
    for i in range(200):
        p.send(b"%d" % i + b"t" * (1 << 20), b"{}")
    for _ in range(16):
        p.send(b"big", b'"' + b"x" * (16 << 20) + b'"')
    wait_for(lambda: len(daemon.user_records()) >= 216, timeout=60, what="216 big records")
    rss = eventually(lambda: (mb := memory_mb(pid, "VmRSS")) < 120 and mb, timeout=10) or memory_mb(pid, "VmRSS")
    peak = memory_mb(pid)
    assert rss < 120, f"{rss:.0f} MB kept after the burst (was 798 MB with 1 MiB topics, 295 MB after 16 MiB ones)"
    assert peak < 700, f"peak {peak:.0f} MB (was 982 MB for 16 x 16 MiB)"


@heavy
def test_sigterm_counts_what_it_cannot_drain(workdir, ctx):
    (workdir / "persist.toml").write_text("[daemon]\nstop_drain_s = 0.3\n")
    daemon = Daemon(workdir / "logs", "--config", str(workdir / "persist.toml"), "--bind", "tcp://127.0.0.1:*",
                    "--fsync", "off").start()
    endpoint = daemon.status()["endpoints"][0]
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(endpoint)
    while not any(e.rec["topic"] == "probe" for e in daemon.records()):
        pub.send_multipart([b"probe", b"{}"])  # until subscribed (those before are the slow joiner's)
        time.sleep(0.05)
    sent = 150_000
    body = b'{"sender":"flood","text":"%s"}' % (b"y" * 300)
    pid = daemon.daemon_pid()
    os.kill(pid, signal.SIGSTOP)  # the backlog waits for the daemon, all of it
    try:
        for _ in range(sent):
            pub.send_multipart([b"flood", body])
    finally:
        os.kill(pid, signal.SIGCONT)
    pub.close(linger=30_000)  # every message is in the daemon's hands
    time.sleep(0.5)  # its I/O thread takes the socket buffers into its queue
    began = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - began < 6.0, "SIGTERM to exit within 5 s (one more for a loaded machine)"
    recs = daemon.records()
    recorded = sum(1 for e in recs if e.rec["topic"] == "flood")
    gaps = [e.rec["payload"] for e in recs if is_system(e.rec) and e.rec["topic"] == "$persist/gap"]
    shutdown = [g for g in gaps if g["reason"] == "shutdown"]
    assert shutdown and shutdown[0]["dropped"], "the backlog was larger than a stop drains"
    assert shutdown[0]["count_complete"], shutdown
    assert recorded + shutdown[0]["dropped"] == sent, "every message recorded or counted"
    assert recs[-1].rec["topic"] == "$persist/stop"


@heavy
def test_status_says_how_much_waits_in_the_receive_queue(recorder):
    """libzmq cannot tell a queue's depth: the bus takes what its socket holds into an inbox of its own
    and status counts that, exact to the byte, while a backlog drains and once it is gone."""
    daemon, p = recorder(None, "--fsync", "off")
    assert eventually(lambda: daemon.status()["receive_queue"] == {"messages": 0, "bytes": 0, "full": False})
    topic, body, sent = b"flood", b'{"sender":"flood","text":"%s"}' % (b"y" * 200), 60_000
    pid = daemon.daemon_pid()
    os.kill(pid, signal.SIGSTOP)  # the backlog builds up while the daemon cannot read
    try:
        for _ in range(sent):
            p.send(topic, body)
    finally:
        os.kill(pid, signal.SIGCONT)
    seen = []
    while sum(1 for e in daemon.records() if e.rec["topic"] == "flood") < sent:
        queue = daemon.status()["receive_queue"]
        assert queue["bytes"] == queue["messages"] * (len(topic) + len(body)), queue
        seen.append(queue["messages"])
    assert max(seen) > 0, "a backlog the daemon was busy with was seen waiting"
    assert daemon.status()["receive_queue"]["messages"] == 0
    out = cli(daemon.log_dir, "status").stdout
    assert re.search(r"^waiting +0 messages \(0 B\) received, not yet recorded$", out, re.M), out


def test_replay_into_the_recorded_bus_is_marked(recorder, broker):
    daemon, p = recorder()
    for i in range(5):
        p.send(b"agent.chat", b'{"sender":"a","thread_id":"t1","text":"turn %d"}' % i)
    originals = daemon.wait_records(5)
    result = cli(daemon.log_dir, "replay", "--as-fast", "--to", broker.frontend)
    assert result.returncode == 0, result.stderr
    copies = wait_for(lambda: (c := [e for e in daemon.user_records() if "replay_of" in e.rec["meta"]])
                      and len(c) >= 5 and c, what="the replayed copies")
    assert [e.rec["meta"]["replay_of"] for e in copies] == [e.seq for e in originals]
    assert [e.frames() for e in copies] == [e.frames() for e in originals], "the same bytes"
    plain = [e for e in daemon.user_records() if "replay_of" not in e.rec["meta"]]
    assert len(plain) == 5, "a genuine message is never taken for a replay"


@pytest.mark.parametrize("payload", [b"{}", b"[" * 250 + b"]" * 250])
def test_decode_frames_round_trips_what_the_daemon_writes(payload):
    from persist.daemon.log.record import Message, encode
    msg = Message.from_frames([b"t", payload], time.time_ns())
    line = encode(msg, 1, {})
    assert decode_frames(line) == [b"t", payload]
    orjson.dumps(orjson.loads(line))
