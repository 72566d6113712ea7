"""``persist-cli web`` without a browser (issue 13): its command-line rules, its guard, that each page shows
what the CLI shows over a log the library wrote, that it changes nothing in the log, and that big threads
are paged. The browser tests against a real daemon are in ``test_web_browser.py``."""

from __future__ import annotations

import hashlib
import html
import json
import re
import time

import pytest
from libdir import Built, cli
from webproc import WebServer

TALK = [("planner", "claude_code", "request", "plan the retry loop with exponential backoff"),
        ("claude_code", "planner", "response", "retry loop drafted in client.py"),
        ("claude_code", "planner", "tool_call", "run pytest tests/test_client.py"),
        ("planner", "claude_code", "critique", "the backoff never caps"),
        ("claude_code", "planner", "revision", "backoff capped at 30 s"),
        ("gemini_cli", None, "broadcast", "I will review client.py next")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    b = Built(tmp_path_factory.mktemp("web") / "logs", start=time.time() - 300, step=0.25)
    for i, (sender, recipient, kind, text) in enumerate(TALK * 5):
        msg = {"sender": sender, "kind": kind, "text": f"{text} ({i})", "thread_id": "fix-42" if i < 20 else "doc-7"}
        if recipient:
            msg["recipient"] = recipient
        b.send(b"agent.chat", json.dumps(msg).encode())
        if i == 10:
            b.checkpoint(label="halfway")
    b.send(b"agent.blob", b"\x89PNG\r\n\x1a\n\x00\x01\xfe")
    b.rotate()
    b.send(b"agent.chat", b'{"sender":"planner","recipient":"gemini_cli","thread_id":"doc-7","text":"after the rotation"}')
    b.close()
    return b


@pytest.fixture(scope="module")
def server(built):
    s = WebServer(built.root)
    yield s
    s.stop()


def seqs(html: str, pattern: str) -> list[int]:
    return [int(s) for s in re.findall(pattern, html)]


def test_pages_show_what_the_cli_shows(built, server):
    cli_hits = [json.loads(x)["seq"] for x in cli(built.root, "search", "backoff", "--json", "--limit", "50").stdout.splitlines()]
    status, page = server.get("/search?q=backoff&limit=50")
    assert status == 200 and seqs(page, r'<tr class="hit" data-seq="(\d+)"') == cli_hits
    assert "<mark>backoff</mark>" in page

    turns = [json.loads(x)["seq"] for x in cli(built.root, "thread", "fix-42", "--json").stdout.splitlines()]
    status, page = server.get("/thread/fix-42")
    assert status == 200 and seqs(page, r'class="turn[^"]*" id="m(\d+)"') == turns

    threads = [json.loads(x) for x in cli(built.root, "threads", "--json").stdout.splitlines()]
    status, page = server.get("/threads")
    assert re.findall(r'data-thread="([^"]+)"', page) == [t["thread_id"] for t in threads] == ["doc-7", "fix-42"]

    recent = [json.loads(x)["seq"] for x in cli(built.root, "recent", "-n", "100", "--reverse", "--json").stdout.splitlines()]
    status, page = server.get("/")
    assert seqs(page, r'<div id="m(\d+)" class="rec') == recent

    status, page = server.get("/search?q=backoff&since=yesterday-ish")
    assert "since &#39;yesterday-ish&#39; is not a time" in page, "a bad --since is one line, as the CLI says it"


def test_a_conversation_pairs_folds_and_marks_phases(server):
    status, page = server.get("/thread/fix-42")
    assert status == 200
    assert '<a class="pair" href="#m1">↩ answers #1</a>' in page and "↪ answered by #2" in page
    assert page.count("<details>") == 3, "each tool_call folded"
    assert page.count('<div class="phase critique">') == 3 and page.count('<div class="phase revision">') == 3
    assert "<b>20</b> turns" not in page and '<b id="turn-count">20</b>' in page


def test_copy_as_prompt_is_thread_format_prompt_with_its_budget(built, server):
    expected = cli(built.root, "thread", "fix-42", "--format", "prompt", "--max-tokens", "60")
    status, page = server.get("/prompt/fix-42?max_tokens=60")
    text = re.search(r'<textarea id="prompt-text" readonly>(.*?)</textarea>', page, re.S).group(1)
    assert text.replace("&#39;", "'").replace("&gt;", ">") == "\n".join(expected.stdout.splitlines()[1:])
    left_out = int(re.search(r"\((\d+) earlier", expected.stdout).group(1))
    assert f"{left_out} earlier turn(s) left out to fit 60 tokens" in page


def test_message_shows_frames_as_text_json_or_hex_and_checks_its_checksum(built, server):
    blob = next(e for e in built.records() if e.rec["topic"] == "agent.blob")
    status, page = server.get(f"/message/{blob.seq}")
    assert status == 200 and '<div class="frame" data-as="hex">' in page
    assert "00000000  89 50 4e 47 0d 0a 1a 0a 00 01 fe" in page and "image/png, 11 bytes" in page
    assert '<dd id="checksum" class="ok">' in page and blob.rec["meta"]["sha256"] in page
    status, page = server.get("/message/1")
    assert '<div class="frame" data-as="json">' in page and '"recipient": "claude_code"' in html.unescape(page)
    assert server.get("/message/99999")[0] == 404


def test_agents_timeline_and_checkpoint_pages(built, server):
    status, page = server.get("/agents")
    edges = {(s, r): int(n) for s, r, n in re.findall(
        r'class="edge" data-sender="([^"]*)" data-recipient="([^"]*)" data-count="(\d+)"', page)}
    assert edges == {("planner", "claude_code"): 10, ("claude_code", "planner"): 15, ("gemini_cli", ""): 5,
                     ("planner", "gemini_cli"): 1}
    status, page = server.get("/agents/edge?sender=planner&recipient=claude_code")
    assert len(seqs(page, r'<div id="m(\d+)" class="rec')) == 10
    status, page = server.get("/timeline")
    assert status == 200 and "halfway" in page and "seg-0000000000000032.jsonl begins" in page
    status, page = server.get("/checkpoint/halfway")
    assert status == 200 and "the <b>21</b> record(s) recorded since would be set aside" in page


def test_a_thread_of_thousands_of_turns_is_paged(tmp_path):
    b = Built(tmp_path / "logs")
    for i in range(1200):
        b.send(b"agent.chat", json.dumps({"sender": ["a", "b"][i % 2], "thread_id": "long", "text": f"turn {i}"}).encode())
    b.close()
    s = WebServer(b.root)
    try:
        status, page = s.get("/thread/long?at=700")
        shown = seqs(page, r'class="turn[^"]*" id="m(\d+)"')
        assert shown[0] == 680 and len(shown) == 200 and re.search(r'class="turn( right)? target" id="m700"', page)
        assert "/turns/long?start=879&end=1079" in page and "▲ 679 earlier turns" in page
        status, more = s.get("/turns/long?start=879&end=1079")
        assert seqs(more, r'class="turn[^"]*" id="m(\d+)"') == list(range(880, 1080))
    finally:
        s.stop()


def test_the_server_changes_nothing_in_the_log(built, server):
    def files():
        return {p.relative_to(built.root): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in built.root.rglob("*") if p.is_file() and "metadata_index" not in p.parts}

    before = files()
    for path in ("/", "/threads", "/thread/fix-42", "/search?q=retry", "/message/3", "/agents", "/timeline",
                 "/checkpoint/halfway", "/prompt/fix-42", "/live/rate", "/agents/edge?sender=planner&recipient=*"):
        assert server.get(path)[0] == 200, path
    assert files() == before and not (built.root / "daemon.lock").exists()


def test_read_only_and_host_guard(server):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, body = server.get("/", method=method)
        assert status == 405 and body == "persist web is read-only: GET only\n"
    status, body = server.get("/", headers={"Host": "evil.example:80"})
    assert status == 403 and "does not answer for host 'evil.example'" in body


def test_a_token_is_required_and_a_bad_one_refused(built):
    s = WebServer(built.root, "--token", "correct-horse-battery")
    try:
        assert s.url.endswith("/?token=correct-horse-battery")
        assert s.get("/threads")[0] == 403
        status, body = s.get("/threads?token=wrong-horse-battery-x")
        assert status == 403 and body.startswith("persist web: a valid token is needed")
        assert s.get("/threads", {"Cookie": "persist_token=wrong"})[0] == 403
        assert s.get("/threads?token=correct-horse-battery")[0] == 200
        assert s.get("/threads", {"Cookie": "persist_token=correct-horse-battery"})[0] == 200
        assert s.get("/threads", {"Authorization": "Bearer correct-horse-battery"})[0] == 200
    finally:
        s.stop()


def test_binding_beyond_loopback_makes_a_token_and_refuses_requests_without_it(built):
    s = WebServer(built.root, "--bind", "0.0.0.0")
    try:
        token = re.search(r"\?token=([A-Za-z0-9_-]{32})$", s.url).group(1)
        port = s.origin.rsplit(":", 1)[1]
        s.origin = f"http://127.0.0.1:{port}"  # requests stay on this machine
        assert s.get("/")[0] == 403 and s.get(f"/?token={token}")[0] == 200
    finally:
        s.stop()


@pytest.mark.parametrize("args, words", [
    (["--token", "short"], "--token must be at least 16 characters"),
    (["--port", "70000"], "--port"),
    (["--bind", "no.such.host.invalid"], "--bind 'no.such.host.invalid' is not an address"),
    (["--archive", "postgresql://web:hunter2@nowhere.invalid/db"], "archive postgresql://web@nowhere.invalid/db: "),
    (["--archive", "not a url"], "archive (an unparsable archive URL): "),
])
def test_bad_flags_are_one_line(built, args, words):
    result = cli(built.root, "web", *args)
    assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "hunter2" not in result.stderr + result.stdout


def test_a_missing_log_dir_is_one_line(tmp_path):
    result = cli(tmp_path / "nowhere", "web")
    assert result.returncode == 2 and "does not exist; pass --log-dir" in result.stderr


def test_hostile_requests_get_an_answer_not_a_traceback(built):
    s = WebServer(built.root, "--token", "correct-horse-battery")
    try:
        ok = {"Cookie": "persist_token=correct-horse-battery"}
        status, body = s.get("/message/99999999999999999999", ok)  # past SQLite's integers
        assert status == 404 and "#99999999999999999999" in body
        status, body = s.get("/prompt/fix-42?max_tokens=%C2%B2", ok)  # a digit to str.isdigit, not to int
        assert status == 200 and "whole number" in body
        status, body = s.get("/prompt/fix-42?max_tokens=" + "9" * 5000, ok)
        assert status == 200 and "whole number" in body
        odd = {"Cookie": 'persist_token="\\x"; $$$=;;', "Authorization": "Bearer correct-horse-battery"}
        assert s.get("/threads", odd)[0] == 200  # another local app's odd cookie is no reason to fail
        assert "Traceback" not in s.errors()
    finally:
        s.stop()


def test_the_live_tail_reads_on_after_a_failed_read(tmp_path, monkeypatch):
    import asyncio

    from persist.cli.web import tail as tail_module
    from persist.daemon.log import reader

    b = Built(tmp_path / "logs")
    b.send(b"agent.chat", b'{"text": "before"}')
    monkeypatch.setattr(tail_module, "RETRY", 0.05)
    real, failures = reader.lines, []

    def flaky(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise OSError("the disk hiccuped")
        return real(*args, **kwargs)

    loop = asyncio.new_event_loop()
    t = tail_module.LogTail(b.log)
    try:
        monkeypatch.setattr(tail_module.reader, "lines", flaky)
        sub = t.subscribe(loop)
        b.send(b"agent.chat", b'{"text": "after the hiccup"}')
        got = loop.run_until_complete(sub.get(10))
        assert failures and [e.rec["payload"]["text"] for e in got] == ["after the hiccup"]
        assert t.error is None  # said while it lasted, gone once a read worked
    finally:
        t.stop()
        loop.close()
        b.close()


def test_counts_kept_by_the_server_follow_a_log_made_again(tmp_path):
    import shutil

    from persist.cli.web.source import LogSource
    from persist.daemon import index

    def make(sender: str) -> Built:
        shutil.rmtree(tmp_path / "logs", ignore_errors=True)
        b = Built(tmp_path / "logs")
        for i in range(5):
            b.send(b"agent.chat", json.dumps({"sender": sender, "recipient": "ops", "thread_id": f"{sender}-t",
                                              "text": f"hello {i}"}).encode())
        b.close()
        index.rebuild(b.log)
        return b

    b = make("ghp-looking-sender")
    source = LogSource(b.log)
    assert source.edges() == {("ghp-looking-sender", "ops"): 5}
    assert [t["thread_id"] for t in source.threads(10)] == ["ghp-looking-sender-t"]
    make("[REDACTED]")  # as after redact apply: the same seqs, other rows, the index made again
    assert source.edges() == {("[REDACTED]", "ops"): 5}  # nothing of the old counts is kept
    assert [t["thread_id"] for t in source.threads(10)] == ["[REDACTED]-t"]


def test_a_live_page_that_never_reads_is_dropped_by_the_bytes_it_holds_not_only_by_count(monkeypatch):
    import asyncio
    from pathlib import Path

    from persist.cli.web import tail as tail_module
    from persist.daemon.log.entry import Entry

    monkeypatch.setattr(tail_module, "MAX_QUEUE_BYTES", 1 << 20)
    loop = asyncio.new_event_loop()
    try:
        sub = tail_module.Subscriber(loop)
        big = [Entry({"seq": 1}, b"x" * (600 << 10), Path("seg"))]  # two of these are past the bound, in 2 records
        assert sub.offer(big) and sub.offer(big)
        assert not sub.offer(big)  # dropped: its browser reconnects and catches up from the log
        loop.run_until_complete(asyncio.sleep(0))
        assert sub.queue.qsize() == 3 and sub.queue.get_nowait() == big
    finally:
        loop.close()
