"""Search, threads and replay: over a log dir the format library wrote, searched in-process
(click's CliRunner); against a real daemon, broker and indexer where only they show it (a word
searchable within a second, the indexer killed or outliving a daemon, a rebuild under a
running indexer); replay pacing as a real process into a real socket."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from datetime import datetime

import orjson
import pytest
import zmq

from libdir import Built, cli
from persist.daemon import index
from procs import BIN, eventually, heavy, process_gone, short_tmpdir, wait_for


def hits(log_dir, *args):
    result = cli(log_dir, "search", *args, "--json")
    assert result.returncode == (0 if result.stdout else 1), result.stderr  # 1: no match, as grep
    return [orjson.loads(x) for x in result.stdout.splitlines()]


def indexed(log_dir, *args):
    """For waits: the hits once there are some, else a falsy value — never an assertion, so an
    index the indexer has not made yet (search exits non-zero) only means: not yet."""
    result = cli(log_dir, "search", *args, "--json")
    return result.returncode == 0 and [orjson.loads(x) for x in result.stdout.splitlines()]


def hit_count(log_dir, *args) -> int:
    """How many hits a search has now; 0 while there is no index yet."""
    return len(indexed(log_dir, *args) or [])


def wait_indexed(log_dir, query, n=None, timeout=20.0):
    """Wait until ``query`` has hits (exactly ``n`` if given), then assert, saying what was seen."""
    if n is None:
        found = eventually(lambda: indexed(log_dir, query), timeout, interval=0.05)
        assert found, f"no hit for {query!r} within {timeout:.0f} s"
        return found
    ok = eventually(lambda: hit_count(log_dir, query) == n, timeout, interval=0.05)
    assert ok, f"{query!r} has {hit_count(log_dir, query)} hits after {timeout:.0f} s, expected {n}"


TALK = [
    (b"agent.chat", {"sender": "claude", "recipient": "gemini", "thread_id": "fix-42", "kind": "request",
                     "text": "Please review the retry loop in flush(); it spins when the socket closes"}),
    (b"agent.review", {"sender": "gemini", "recipient": "claude", "thread_id": "fix-42", "kind": "critique",
                       "text": "The backoff is unbounded. Cap it at thirty seconds."}),
    (b"tools.grep", {"sender": "tool_server", "continuation_id": "fix-42", "kind": "tool_result",
                     "result": "store.py:88: while not sent: retry()"}),
    (b"agent.chat", {"sender": "planner", "thread_id": "plan-7", "text": "Next: migrate the database schema"}),
    (b"agent.chat", {"sender": "claude", "recipient": "gemini", "thread_id": "fix-42", "kind": "revision",
                     "text": "Revised: exponential backoff capped at 30 s, with a test that kills the peer"}),
]


def built_talk(root, *more: list[bytes]) -> Built:
    """The conversation above (and ``more`` messages), written by the library and indexed."""
    built = Built(root)
    for topic, body in TALK:
        built.send(topic, orjson.dumps(body))
    for frames in more:
        built.send(*frames)
    built.close()
    assert cli(built.root, "index", "rebuild").returncode == 0
    return built


@pytest.fixture(scope="module")
def talk():
    """One log for every test that only reads it (search, thread, threads, replay)."""
    root = short_tmpdir()
    yield built_talk(root / "logs")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def talk_live(recorder):
    """The same conversation recorded by a real daemon, whose indexer keeps the index current."""
    daemon, p = recorder()
    for topic, body in TALK:
        p.send(topic, orjson.dumps(body))
    daemon.wait_records(len(TALK))
    return daemon, p


@heavy
def test_a_word_published_a_second_ago_is_found(talk_live):
    daemon, p = talk_live
    p.send(b"agent.chat", b'{"sender":"claude","text":"the word is xylophone"}')
    t0 = time.monotonic()
    found = eventually(lambda: indexed(daemon.log_dir, "xylophone"), timeout=10, interval=0.05)
    took = time.monotonic() - t0
    assert found, "a word published 10 s ago is still not found"
    assert found[0]["payload"]["text"] == "the word is xylophone"
    assert took < 3.0, f"searchable after {took:.2f} s"


def test_ranking_phrases_prefixes_and_filters(talk):
    wait_indexed(talk.root, "backoff", 2)
    assert {h["meta"]["sender"] for h in hits(talk.root, "backoff")} == {"gemini", "claude"}
    assert [h["meta"]["sender"] for h in hits(talk.root, '"retry loop"')] == ["claude"]
    assert len(hits(talk.root, "migrat*")) == 1
    assert len(hits(talk.root, "backoff NOT thirty")) == 1
    assert len(hits(talk.root, "retry OR schema")) == 3
    assert [h["meta"]["kind"] for h in hits(talk.root, "backoff", "--sender", "claude")] == ["revision"]
    assert hits(talk.root, "backoff", "--topic", "agent.review", "--kind", "critique")[0]["meta"]["sender"] == "gemini"
    assert hits(talk.root, "backoff", "--thread", "plan-7") == []
    assert hits(talk.root, "backoff", "--since", "2999-01-01") == []
    assert len(hits(talk.root, "backoff", "--until", "now", "--limit", "1")) == 1
    human = cli(talk.root, "search", "backoff")
    assert "gemini" in human.stdout and "Cap it at thirty" in human.stdout


def test_json_hits_are_the_records_exactly(talk):
    wait_indexed(talk.root, "schema")
    result = cli(talk.root, "search", "schema", "--json")
    (line,) = result.stdout.encode().splitlines(keepends=True)
    assert line in [e.line for e in talk.records()]


def test_thread_in_order_across_topics_and_tools(talk):
    wait_indexed(talk.root, "backoff", 2)
    recs = [orjson.loads(x) for x in cli(talk.root, "thread", "fix-42", "--format", "json").stdout.splitlines()]
    assert [r["topic"] for r in recs] == ["agent.chat", "agent.review", "tools.grep", "agent.chat"]
    assert [r["seq"] for r in recs] == sorted(r["seq"] for r in recs)
    prompt = cli(talk.root, "thread", "fix-42", "--format", "prompt").stdout
    assert "tool_server: store.py:88" in prompt and "planner" not in prompt
    cut = cli(talk.root, "thread", "fix-42", "--max-tokens", "40", "--format", "prompt").stdout
    assert "left out" in cut and "Revised" in cut and "Please review" not in cut
    listing = [orjson.loads(x) for x in cli(talk.root, "threads", "--json").stdout.splitlines()]
    fix = next(t for t in listing if t["thread_id"] == "fix-42")
    assert fix["turns"] == 4 and fix["participants"] == ["claude", "gemini", "tool_server"]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["search", 'unbalanced "quote'], 1, ["no match"]),  # not FTS5: searched as plain words, exit 1 as grep
        (["search", "AND"], 1, ["no match"]),
        (["thread", "fix-4"], 2, ["no thread 'fix-4'", "did you mean fix-42"]),
        (["replay", "--to", "nonsense"], 2, ["--to", "not a ZeroMQ endpoint"]),
        (["replay", "--to", "tcp://127.0.0.1:9", "--wait", "0.5", "--as-fast"], 1, ["no subscriber"]),
    ],
)
def test_bad_input_is_one_line(talk, args, code, words):
    wait_indexed(talk.root, "backoff")
    result = cli(talk.root, *args)
    assert result.returncode == code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    for w in words:
        assert w in result.stderr


def test_missing_index_says_to_rebuild_and_rebuild_works(workdir):
    log = built_talk(workdir / "logs").log
    for p in index.index_dir(log).glob("index.sqlite*"):
        p.unlink()
    result = cli(log.root, "search", "backoff")
    assert result.returncode == 0 and "backoff" in result.stdout, "no indexer at work: search makes the index itself"
    assert cli(log.root, "index", "rebuild").returncode == 0
    assert len(hits(log.root, "backoff")) == 2


def test_index_rebuild_while_the_daemon_records(talk_live):
    daemon, p = talk_live
    wait_indexed(daemon.log_dir, "backoff")
    assert cli(daemon.log_dir, "index", "rebuild").returncode == 0
    p.send(b"agent.chat", b'{"text":"after the rebuild: quokka"}')
    assert eventually(lambda: indexed(daemon.log_dir, "quokka"), timeout=20, interval=0.05), \
        "the restarted indexer did not index a new record within 20 s"
    assert len(hits(daemon.log_dir, "backoff")) == 2


@heavy
def test_indexer_killed_mid_way_resumes_without_duplicates(recorder):
    daemon, p = recorder()
    n = 20_000
    for i in range(n):
        p.send(b"bulk", b'{"text":"bulk message number %d"}' % i)
    db_path = index.index_path(daemon.log)

    def indexed():
        try:
            with sqlite3.connect(db_path) as db:
                return db.execute("SELECT count(*) FROM records WHERE topic='bulk'").fetchone()[0]
        except sqlite3.Error:
            return 0

    assert eventually(lambda: indexed() > 0, timeout=20), "the indexer indexed nothing within 20 s"
    pid = daemon.status()["indexer_pid"]
    os.kill(pid, signal.SIGKILL)
    partial = indexed()
    daemon.wait_records(n, timeout=60)
    assert eventually(lambda: indexed() == n, timeout=60, interval=0.1), \
        f"the restarted indexer has {indexed()} of {n} records after 60 s"
    assert daemon.status()["indexer_pid"] != pid
    with index.connect(db_path) as db:  # with persist_text: the integrity check reads the words back from the log
        seqs = [s for (s,) in db.execute("SELECT seq FROM records ORDER BY seq")]
        fts = db.execute("SELECT count(*) FROM fts_docsize").fetchone()[0]  # one row per document FTS5 holds
        db.execute("INSERT INTO fts(fts, rank) VALUES ('integrity-check', 1)")  # its words are the log's
    assert len(seqs) == len(set(seqs)) == fts, "no duplicates"
    assert seqs == [e.seq for e in daemon.records()], "complete"
    assert partial < n, "the kill really was mid-way"


def replay_into(ctx, log_dir, *args) -> tuple:
    """``persist-cli replay ARGS`` (in-process) into a SUB socket of ours that a thread keeps
    serving (a bound socket only subscribes while someone uses it); the run's result and every
    message that arrived, including any that came after the replay ended (there must be none)."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    got, finished = [], threading.Event()

    def receive():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sub.poll(300):
                got.append(sub.recv_multipart())
            elif finished.is_set():  # the replay is over and nothing more came for 0.3 s
                return

    t = threading.Thread(target=receive)
    t.start()
    try:
        result = cli(log_dir, "replay", *args, "--to", f"tcp://127.0.0.1:{port}")
    finally:
        finished.set()
        t.join()
        sub.close(linger=0)
    return result, got


def test_replay_as_fast_yields_exactly_the_published_frames(workdir, ctx):
    odd = [[b"agent.bin", b"\xff\x00\xfe"], [b"agent.multi", b'{"a":1}', b"extra", b"\x00"], [b"solo frame"],
           [b"agent.pretty", b'{\n "x": 2\n}\n']]
    built = built_talk(workdir / "logs", *odd)
    expected = [e.frames() for e in built.records() if not e.rec["topic"].startswith("$persist/")]
    assert expected[-4:] == odd and len(expected) == 9
    result, got = replay_into(ctx, built.root, "--as-fast")
    assert result.returncode == 0, result.stderr
    assert got == expected, "same frames, byte for byte, in recorded order, no $persist/ records"
    assert all(not f[0].startswith(b"$persist") for f in got)


def test_replay_selection_by_topic_and_thread(talk, ctx):
    """Which messages and in which order (the pacing itself is timed in
    test_replay_is_paced_by_the_recorded_gaps_divided_by_rate)."""
    dry = cli(talk.root, "replay", "--dry-run", "--topic", "agent.review", "--topic", "tools.")
    assert [orjson.loads(x)["topic"] for x in dry.stdout.splitlines()] == ["agent.review", "tools.grep"]
    result, got = replay_into(ctx, talk.root, "--thread", "fix-42", "--rate", "1000")
    assert result.returncode == 0, result.stderr
    assert [f[0] for f in got] == [b"agent.chat", b"agent.review", b"tools.grep", b"agent.chat"]


def test_the_indexer_does_not_outlive_a_killed_daemon(recorder):
    daemon, _ = recorder()
    pid = wait_for(lambda: daemon.try_status().get("indexer_pid"), what="the indexer")
    daemon.kill9()
    wait_for(lambda: process_gone(pid), what="the orphaned indexer to stop")


def test_search_after_the_daemon_stopped_finds_everything_it_recorded(recorder):
    daemon, p = recorder("[index]\nenabled = false\n")  # nobody keeps the index current
    p.send(b"agent.chat", b'{"sender":"claude","text":"the early bird indexed by hand"}')
    daemon.wait_records(1)
    assert cli(daemon.log_dir, "index", "rebuild").returncode == 0
    p.send(b"agent.chat", b'{"sender":"gemini","text":"a late owl nobody indexed"}')
    daemon.wait_records(2)
    daemon.stop()
    assert [h["payload"]["text"] for h in hits(daemon.log_dir, "owl")] == ["a late owl nobody indexed"]
    assert [h["payload"]["text"] for h in hits(daemon.log_dir, "bird")] == ["the early bird indexed by hand"]


def replay_arrivals(ctx, log_dir, *args, n):
    """Run ``persist-cli replay ARGS`` into a SUB socket of ours; (topic, monotonic arrival) of each message."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    proc = subprocess.Popen([str(BIN / "persist-cli"), "replay", *args, "--to", f"tcp://127.0.0.1:{port}",
                             "--log-dir", str(log_dir)], stderr=subprocess.PIPE, text=True)
    got = []
    try:
        while len(got) < n and sub.poll(15000):
            frames = sub.recv_multipart()
            got.append((frames, time.monotonic()))
        assert proc.wait(15) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        sub.close(linger=0)
    assert len(got) == n, f"replay delivered {len(got)} of {n} messages"
    return got


@heavy
def test_replay_is_paced_by_the_recorded_gaps_divided_by_rate(workdir, ctx):
    built = Built(workdir / "logs", step=0.6)
    for i in range(5):  # recorded 0.6 s apart
        built.send(b"paced.chat", b'{"sender":"pacer","i":%d}' % i)
    built.close()
    recs = built.user_records()
    t = [datetime.fromisoformat(e.rec["received_at"].replace("Z", "+00:00")).timestamp() for e in recs]
    recorded = [b - t[0] for b in t]  # offsets from the first record, as recorded
    assert recorded[-1] > 2.0, f"the records really are spread out: {recorded}"

    paced = replay_arrivals(ctx, built.root, "--topic", "paced.", "--rate", "2", n=5)
    assert [orjson.loads(f[1])["i"] for f, _ in paced] == list(range(5))
    offsets = [a - paced[0][1] for _, a in paced]
    for k, (want, got) in enumerate(zip(recorded, offsets)):
        # replay never sends early; a loaded machine may make it (or our receiving) late, which
        # can only shorten these offsets by as much as the first message was received late
        assert got >= want / 2 * 0.6 - 0.05, f"message {k} arrived at +{got:.3f} s, paced for +{want / 2:.3f} s"
    span, want_span = offsets[-1], recorded[-1] / 2
    # unpaced it would be ~0 s, paced at --rate 1 as recorded (> 2.4 s); 0.7 s of slack for a noisy machine
    assert span <= want_span + 0.7, (f"--rate 2 took {span:.2f} s for what was recorded over {recorded[-1]:.2f} s "
                                     f"(expected ≈ {want_span:.2f} s): the rate was not applied")

    fast = replay_arrivals(ctx, built.root, "--topic", "paced.", "--as-fast", n=5)
    fast_span = fast[-1][1] - fast[0][1]
    assert fast_span < min(0.3, span / 3), f"--as-fast took {fast_span:.2f} s, paced {span:.2f} s"
