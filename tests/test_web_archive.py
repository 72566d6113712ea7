"""``persist-cli --archive URL web`` (issue 13): the web page over the PostgreSQL archive, every node.

Two log dirs written by the library (nodes ``alpha`` and ``beta``, one thread spanning both) are shipped by
the real shipper process into a fresh database; then each page is checked against ``persist-cli --archive
URL search|thread|threads --json``, the live stream against rows shipped after it opened (none missed, none
twice, resumed from its last id), the message page of a binary payload, that browsing writes nothing, and
that an archive gone away is one line. The browser test is in ``test_web_browser.py``."""

from __future__ import annotations

import html
import http.client
import json
import re
import time
from urllib.parse import urlencode

import pytest
from libdir import Built, run_cli
from pgdb import archived, database, ship_until
from webproc import WebServer

psycopg = pytest.importorskip("psycopg")

T0 = time.time() - 600
CROSS = [("alpha", "planner", "coder", "request", "design the cache eviction policy"),
         ("beta", "coder", "planner", "response", "LRU with a zebra-striped lock per shard"),
         ("alpha", "planner", "coder", "critique", "the lock per shard starves writers"),
         ("beta", "coder", "planner", "revision", "readers now yield to writers")]


def system(b: Built, topic: str, payload: dict) -> None:
    """A ``$persist/<topic>`` record, as the daemon writes one about itself."""
    from persist.daemon.log.record import encode, system_message

    b.seq += 1
    b.writer.append(encode(system_message(topic, payload, b.clock_ns), b.seq, {}))
    b.clock_ns += b.step_ns


def say(b: Built, sender: str, text: str, at: float | None = None, **meta) -> None:
    b.send(b"agent.chat", json.dumps({"sender": sender, "text": text, **meta}).encode(), at=at)


class Nodes:
    def __init__(self, root, url):
        self.url = url
        self.logs = {name: Built(root / name, start=T0, step=0.01) for name in ("alpha", "beta")}

    def ship(self) -> None:
        for name, b in self.logs.items():
            ship_until(b.root, self.url, name, b.seq)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    with database() as url:
        n = Nodes(tmp_path_factory.mktemp("web-archive"), url)
        alpha, beta = n.logs["alpha"], n.logs["beta"]
        system(beta, "start", {"pid": 1})
        for i in range(6):
            say(alpha, "planner", f"alpha note {i} about the zebra cache", thread_id="t-alpha")
            say(beta, "coder", f"beta note {i}", thread_id="t-beta")
        for i, (node, sender, recipient, kind, text) in enumerate(CROSS):
            say(n.logs[node], sender, text, at=T0 + 60 + i, recipient=recipient, kind=kind, thread_id="t-cross")
        beta.send(b"agent.blob", b"\x89PNG\r\n\x1a\n\x00\x01\xfe")
        system(beta, "checkpoint", {"id": "c-1", "reason": "timer", "label": "halfway"})
        system(alpha, "gap", {"missing": 3})
        n.ship()
        yield n
        for b in n.logs.values():
            b.close()


@pytest.fixture(scope="module")
def server(nodes):
    s = WebServer(nodes.logs["alpha"].root, before=("--archive", nodes.url))
    yield s
    s.stop()


def cli_json(url: str, *args: str) -> list[dict]:
    r = run_cli("--archive", url, "--json", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_pages_show_what_the_archive_commands_show(nodes, server):
    hits = [(h["node"], h["record"]["seq"]) for h in cli_json(nodes.url, "search", "zebra", "--limit", "50")]
    status, page = server.get("/search?q=zebra&limit=50")
    assert status == 200, page
    assert [(n, int(s)) for s, n in re.findall(r'<tr class="hit" data-seq="(\d+)" data-node="([^"]+)"', page)] == hits
    assert {n for n, _ in hits} == {"alpha", "beta"} and "<mark>zebra</mark>" in page
    assert "websearch_to_tsquery" in server.get("/search")[1], "the form says which query language it takes"

    turns = [(t["node"], t["record"]["seq"]) for t in cli_json(nodes.url, "thread", "t-cross")]
    assert [n for n, _ in turns] == ["alpha", "beta", "alpha", "beta"], "the thread spans both nodes, in order"
    status, page = server.get("/thread/t-cross")
    assert status == 200, page
    shown = re.findall(r'class="turn[^"]*" id="[^"]+" style="[^"]*" data-seq="(\d+)" data-node="([^"]+)"', page)
    assert [(n, int(s)) for s, n in shown] == turns
    for node, seq in turns:  # each turn names its node
        assert f">{node} #{seq}</a>" in page
    assert "↩ answers alpha #" in page, "a response on beta answers the request on alpha"

    threads = [t["thread_id"] for t in cli_json(nodes.url, "threads")]
    status, page = server.get("/threads")
    assert re.findall(r'data-thread="([^"]+)"', page) == threads and set(threads) == {"t-cross", "t-alpha", "t-beta"}
    assert '<td class="nodes">alpha, beta</td>' in page

    status, page = server.get("/thread/t-cros")
    assert status == 404 and 'href="/thread/t-cross"' in page, "a near miss offers the thread"


def test_a_binary_message_shows_hex_and_its_checksum(nodes, server):
    blob = next(e for e in nodes.logs["beta"].records() if e.rec["topic"] == "agent.blob")
    status, page = server.get(f"/message/{blob.seq}?node=beta")
    assert status == 200, page
    assert 'data-as="hex"' in page and "89 50 4e 47 0d 0a 1a 0a 00 01 fe" in page
    assert "✓ the frames match meta.sha256" in page and '<code id="node">beta</code>' in page
    assert server.get(f"/message/{blob.seq}?node=alpha")[0] == 404, "the same seq on another node is not it"


def test_agents_and_timeline_across_nodes(server):
    status, page = server.get("/agents")
    assert status == 200 and re.search(r"<td>planner</td><td>coder</td><td class=\"num\"><a [^>]*>2</a>", page), page
    status, page = server.get("/agents/edge?" + urlencode({"sender": "coder", "recipient": "planner"}))
    assert re.findall(r'data-node="([^"]+)"', page) == ["beta", "beta"]

    status, page = server.get("/timeline")
    assert status == 200
    lanes = re.findall(r'<tr class="event-row lane-(\w+)"><td class="time">[^<]*</td><td><span class="badge">\w+</span>'
                       r'</td><td class="seq">(\w+) #\d+</td>', page)
    assert sorted(lanes) == [("checkpoint", "beta"), ("gap", "alpha"), ("start", "beta")]
    assert 'id="cannot-show"' in page and "manifests" in page


def sse_events(server, after: str, until, timeout: float = 30.0) -> list[tuple[str, list[tuple[str, int]]]]:
    """The live stream from ``after``: each event's id and its records' (node, seq), until ``until(events)``."""
    host, port = server.origin.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request("GET", "/live/events?" + urlencode({"after": after}))
    resp = conn.getresponse()
    events, ident, rows = [], None, []
    deadline = time.monotonic() + timeout
    try:
        while not until(events):
            assert time.monotonic() < deadline, events
            line = resp.fp.readline().decode()
            if line.startswith("id: "):
                ident = line[4:].strip()
            elif line.startswith("data: "):
                rows += [(n, int(s)) for s, n in re.findall(r'data-seq="(\d+)" data-node="([^"]+)"', line)]
            elif line == "\n" and ident is not None:
                events.append((ident, rows))
                ident, rows = None, []
    finally:
        conn.close()
    return events


def test_live_picks_up_what_is_shipped_after_it_opened(nodes, server):
    status, page = server.get("/")
    assert status == 200
    shown = {(n, int(s)) for s, n in re.findall(r'data-seq="(\d+)" data-node="([^"]+)"', page)}
    assert ("beta", nodes.logs["beta"].seq) in shown
    after = html.unescape(re.search(r'id="last-seq" name="after" value="([^"]*)"', page).group(1))

    # beta's new records are older than alpha's, and land first: neither order may hide a row
    for i in range(3):
        say(nodes.logs["alpha"], "planner", f"late alpha {i}", at=time.time())
    for i in range(4):
        say(nodes.logs["beta"], "coder", f"late beta {i}", at=time.time() - 300)
    ship_until(nodes.logs["beta"].root, nodes.url, "beta", nodes.logs["beta"].seq)
    ship_until(nodes.logs["alpha"].root, nodes.url, "alpha", nodes.logs["alpha"].seq)
    expected = [("alpha", s) for s in range(nodes.logs["alpha"].seq - 2, nodes.logs["alpha"].seq + 1)] + [
        ("beta", s) for s in range(nodes.logs["beta"].seq - 3, nodes.logs["beta"].seq + 1)]

    events = sse_events(server, after, lambda evs: sum(len(r) for _, r in evs) >= len(expected))
    got = [row for _, rows in events for row in rows]
    assert sorted(got) == sorted(expected) and len(got) == len(set(got)), "each new row once, none from before"

    # resumed from the last id it showed (a browser's Last-Event-ID): only what landed since
    say(nodes.logs["alpha"], "planner", "after the pause")
    ship_until(nodes.logs["alpha"].root, nodes.url, "alpha", nodes.logs["alpha"].seq)
    more = sse_events(server, events[-1][0], lambda evs: bool(evs))
    assert [row for _, rows in more for row in rows] == [("alpha", nodes.logs["alpha"].seq)]


def written(url: str) -> tuple:
    with psycopg.connect(url) as conn:
        return (*conn.execute("SELECT tup_inserted, tup_updated, tup_deleted FROM pg_stat_database "
                              "WHERE datname = current_database()").fetchone(),
                archived(url), conn.execute("SELECT * FROM persist_position ORDER BY node").fetchall())


def test_browsing_every_page_writes_nothing_and_never_shows_the_password(nodes):
    url = nodes.url.replace("postgres@", "postgres:hunter2@")  # trust auth: any password passes
    for i in range(3):  # three records just now: the rate's last two minutes are counted at start
        say(nodes.logs["beta"], "coder", f"just now {i}", at=time.time())
    ship_until(nodes.logs["beta"].root, nodes.url, "beta", nodes.logs["beta"].seq)
    time.sleep(1.2)  # the shippers' counters are flushed (at most once a second per session)
    before = written(nodes.url)
    s = WebServer(nodes.logs["beta"].root, "--archive", url)
    try:
        blob = next(e for e in nodes.logs["beta"].records() if e.rec["topic"] == "agent.blob")
        pages = ["/", "/threads", "/thread/t-cross", "/turns/t-cross?start=0&end=2", "/prompt/t-cross?max_tokens=0",
                 "/search?q=zebra", f"/message/{blob.seq}?node=beta", "/agents", "/agents/edge?sender=planner&recipient=coder",
                 "/timeline", "/checkpoint/c-1", "/live/rate", "/live/panel?system=0"]
        for path in pages:
            status, page = s.get(path)
            assert status in (200, 404) and "hunter2" not in page, path
        assert s.get("/checkpoint/c-1")[0] == 404
        assert re.search(r"peak [1-9]\d*/s", s.get("/live/rate")[1])
        assert re.search(r'<td><span class="agent" [^>]*>coder</span></td><td class="num">\d+</td>\s*'
                         r'<td class="num">\d+</td><td class="num">1\.5</td>', s.get("/agents")[1]), "3 a 2 min"
        assert "hunter2" not in s.errors() and "hunter2" not in s.url
    finally:
        s.stop()
    time.sleep(1.2)
    assert written(nodes.url) == before

    from persist.daemon.archive import query
    with query.connect_read_only(nodes.url) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("DELETE FROM persist_records")


def test_an_archive_gone_away_is_one_line_on_the_page(tmp_path):
    from persist.daemon import archive

    with database() as url:
        with archive.connect(url) as conn:
            archive.migrate(conn)
        s = WebServer(tmp_path, "--archive", url)
        try:
            assert s.get("/threads")[0] == 200
            with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
                admin.execute(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")
            status, page = s.get("/threads")
            assert status == 503 and re.search(r'<p class="error-line">archive postgresql://[^:]+:\d+/persist_test_\w+: ',
                                               page), page
            assert s.get("/search?q=x")[0] == 503
            assert "Traceback" not in s.errors(), s.errors()
        finally:
            s.stop()
