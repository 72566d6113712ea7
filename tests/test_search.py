"""Search, threads and replay against a real daemon, a real broker and a real SQLite index."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time

import orjson
import pytest
import zmq

from persist.daemon import index
from procs import BIN, process_gone, run, wait_for


def cli(log_dir, *args, **kw):
    return run("persist-cli", *args, "--log-dir", str(log_dir), **kw)


def hits(log_dir, *args):
    result = cli(log_dir, "search", *args, "--json")
    assert result.returncode == 0, result.stderr
    return [orjson.loads(x) for x in result.stdout.splitlines()]


def indexed(log_dir, *args):
    """For wait_for: the hits once there are some (the indexer may not have made the index yet)."""
    result = cli(log_dir, "search", *args, "--json")
    return result.returncode == 0 and [orjson.loads(x) for x in result.stdout.splitlines()]


@pytest.fixture
def talk(recorder):
    daemon, p = recorder()
    msgs = [
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
    for topic, body in msgs:
        p.send(topic, orjson.dumps(body))
    daemon.wait_records(len(msgs))
    return daemon, p


def test_a_word_published_a_second_ago_is_found(talk):
    daemon, p = talk
    p.send(b"agent.chat", b'{"sender":"claude","text":"the word is xylophone"}')
    t0 = time.monotonic()
    found = wait_for(lambda: indexed(daemon.log_dir, "xylophone"), timeout=10, interval=0.05, what="search hit")
    took = time.monotonic() - t0
    assert found[0]["payload"]["text"] == "the word is xylophone"
    assert took < 3.0, f"searchable after {took:.2f} s"


def test_ranking_phrases_prefixes_and_filters(talk):
    daemon, _ = talk
    wait_for(lambda: len(hits(daemon.log_dir, "backoff")) == 2, what="indexed")
    assert {h["meta"]["sender"] for h in hits(daemon.log_dir, "backoff")} == {"gemini", "claude"}
    assert [h["meta"]["sender"] for h in hits(daemon.log_dir, '"retry loop"')] == ["claude"]
    assert len(hits(daemon.log_dir, "migrat*")) == 1
    assert len(hits(daemon.log_dir, "backoff NOT thirty")) == 1
    assert len(hits(daemon.log_dir, "retry OR schema")) == 3
    assert [h["meta"]["kind"] for h in hits(daemon.log_dir, "backoff", "--sender", "claude")] == ["revision"]
    assert hits(daemon.log_dir, "backoff", "--topic", "agent.review", "--kind", "critique")[0]["meta"]["sender"] == "gemini"
    assert hits(daemon.log_dir, "backoff", "--thread", "plan-7") == []
    assert hits(daemon.log_dir, "backoff", "--since", "2999-01-01") == []
    assert len(hits(daemon.log_dir, "backoff", "--until", "now", "--limit", "1")) == 1
    human = cli(daemon.log_dir, "search", "backoff")
    assert "gemini" in human.stdout and "Cap it at thirty" in human.stdout


def test_json_hits_are_the_records_exactly(talk):
    daemon, _ = talk
    wait_for(lambda: indexed(daemon.log_dir, "schema"), what="indexed")
    result = cli(daemon.log_dir, "search", "schema", "--json")
    (line,) = result.stdout.encode().splitlines(keepends=True)
    assert line in [e.line for e in daemon.records()]


def test_thread_in_order_across_topics_and_tools(talk):
    daemon, _ = talk
    wait_for(lambda: len(hits(daemon.log_dir, "backoff")) == 2, what="indexed")
    recs = [orjson.loads(x) for x in cli(daemon.log_dir, "thread", "fix-42", "--format", "json").stdout.splitlines()]
    assert [r["topic"] for r in recs] == ["agent.chat", "agent.review", "tools.grep", "agent.chat"]
    assert [r["seq"] for r in recs] == sorted(r["seq"] for r in recs)
    prompt = cli(daemon.log_dir, "thread", "fix-42", "--format", "prompt").stdout
    assert "tool_server: store.py:88" in prompt and "planner" not in prompt
    cut = cli(daemon.log_dir, "thread", "fix-42", "--max-tokens", "40", "--format", "prompt").stdout
    assert "left out" in cut and "Revised" in cut and "Please review" not in cut
    listing = [orjson.loads(x) for x in cli(daemon.log_dir, "threads", "--json").stdout.splitlines()]
    fix = next(t for t in listing if t["thread_id"] == "fix-42")
    assert fix["turns"] == 4 and fix["participants"] == ["claude", "gemini", "tool_server"]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["search", 'unbalanced "quote'], 2, ["not valid FTS5"]),
        (["search", "AND"], 2, ["not valid FTS5"]),
        (["thread", "fix-4"], 2, ["no thread 'fix-4'", "did you mean fix-42"]),
        (["replay", "--to", "nonsense"], 2, ["--to", "not a ZeroMQ endpoint"]),
        (["replay", "--to", "tcp://127.0.0.1:9", "--wait", "0.5", "--as-fast"], 1, ["no subscriber"]),
    ],
)
def test_bad_input_is_one_line(talk, args, code, words):
    daemon, _ = talk
    wait_for(lambda: indexed(daemon.log_dir, "backoff"), what="indexed")
    result = cli(daemon.log_dir, *args)
    assert result.returncode == code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    for w in words:
        assert w in result.stderr


def test_missing_index_says_to_rebuild_and_rebuild_works(talk):
    daemon, _ = talk
    daemon.stop()
    for p in index.index_dir(daemon.log).glob("index.sqlite*"):
        p.unlink()
    result = cli(daemon.log_dir, "search", "backoff")
    assert result.returncode == 1 and "index rebuild" in result.stderr
    assert cli(daemon.log_dir, "index", "rebuild").returncode == 0
    assert len(hits(daemon.log_dir, "backoff")) == 2


def test_index_rebuild_while_the_daemon_records(talk):
    daemon, p = talk
    wait_for(lambda: indexed(daemon.log_dir, "backoff"), what="indexed")
    assert cli(daemon.log_dir, "index", "rebuild").returncode == 0
    p.send(b"agent.chat", b'{"text":"after the rebuild: quokka"}')
    wait_for(lambda: indexed(daemon.log_dir, "quokka"), timeout=20, what="the restarted indexer to index again")
    assert len(hits(daemon.log_dir, "backoff")) == 2


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

    wait_for(lambda: indexed() > 0, what="indexing to begin")
    pid = daemon.status()["indexer_pid"]
    os.kill(pid, signal.SIGKILL)
    partial = indexed()
    daemon.wait_records(n, timeout=60)
    wait_for(lambda: indexed() == n, timeout=60, what="the restarted indexer to catch up")
    assert daemon.status()["indexer_pid"] != pid
    with sqlite3.connect(db_path) as db:
        seqs = [s for (s,) in db.execute("SELECT seq FROM records ORDER BY seq")]
        fts = db.execute("SELECT count(*) FROM fts").fetchone()[0]
    assert len(seqs) == len(set(seqs)) == fts, "no duplicates"
    assert seqs == [e.seq for e in daemon.records()], "complete"
    assert partial < n, "the kill really was mid-way"


def test_replay_as_fast_yields_exactly_the_published_frames(talk, ctx, broker):
    daemon, p = talk
    odd = [[b"agent.bin", b"\xff\x00\xfe"], [b"agent.multi", b'{"a":1}', b"extra", b"\x00"], [b"solo frame"],
           [b"agent.pretty", b'{\n "x": 2\n}\n']]
    for frames in odd:
        p.send(*frames)
    daemon.wait_records(9)
    expected = [e.frames() for e in daemon.records() if not e.rec["topic"].startswith("$persist/")]
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    got = []

    def receive():
        while sub.poll(5000):
            got.append(sub.recv_multipart())

    t = threading.Thread(target=receive)
    t.start()
    result = cli(daemon.log_dir, "replay", "--as-fast", "--to", f"tcp://127.0.0.1:{port}")
    t.join()
    assert result.returncode == 0, result.stderr
    assert got == expected, "same frames, byte for byte, in recorded order, no $persist/ records"
    assert all(not f[0].startswith(b"$persist") for f in got)


def test_replay_pacing_and_selection(talk, ctx):
    daemon, p = talk
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    dry = cli(daemon.log_dir, "replay", "--dry-run", "--topic", "agent.review", "--topic", "tools.")
    assert [orjson.loads(x)["topic"] for x in dry.stdout.splitlines()] == ["agent.review", "tools.grep"]
    proc = subprocess.Popen([str(BIN / "persist-cli"), "replay",
                             "--thread", "fix-42", "--rate", "1000", "--to", f"tcp://127.0.0.1:{port}",
                             "--log-dir", str(daemon.log_dir)], stderr=subprocess.PIPE, text=True)
    got = []
    while len(got) < 4 and sub.poll(10000):
        got.append(sub.recv_multipart())
    assert proc.wait(10) == 0
    assert [f[0] for f in got] == [b"agent.chat", b"agent.review", b"tools.grep", b"agent.chat"]


def test_the_indexer_does_not_outlive_a_killed_daemon(recorder):
    daemon, _ = recorder()
    pid = wait_for(lambda: daemon.status()["indexer_pid"], what="the indexer")
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
