"""``persist-cli web`` in a real browser (issue 13): headless Chromium (Debian's, through Playwright) against a
real broker, daemon and web server, all processes on free ports.

One stage for the module (a broker, a daemon, a seeded conversation, the server, the browser); each test
publishes its own messages under its own names. Every page's screenshot is saved (``PERSIST_WEB_SCREENSHOTS``,
default /tmp/persist-web-screenshots; the README's are copied from there).
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from dataclasses import dataclass

import pytest
import zmq
from procs import Broker, Daemon, Publisher, eventually, heavy, short_tmpdir, wait_for
from webproc import SCREENSHOTS, WebServer, chromium_or_fail, launch

from persist.daemon.control import ask
from persist.daemon.log import agents

pytestmark = heavy  # timed against a live daemon: never beside another CPU-heavy test
VIEW = {"width": 1360, "height": 860}
SSE_OPEN = "document.addEventListener('htmx:sseOpen', () => { window.__sseOpen = (window.__sseOpen || 0) + 1; });"

SEED = [  # the conversation the screenshots show
    ("planner", "claude_code", "request", "Please add exponential backoff to the retry loop in client.py; "
                                          "the API rate-limits us at 10 requests a second."),
    ("claude_code", "planner", "tool_call", '{"tool": "read_file", "path": "client.py"}'),
    ("claude_code", "planner", "tool_result", "def fetch(url):\n    for attempt in range(5):\n        try:\n"
                                              "            return session.get(url)\n        except RateLimited:\n"
                                              "            time.sleep(1)"),
    ("claude_code", "planner", "response", "Done: fetch() now waits 0.5 s, 1 s, 2 s … up to 30 s between "
                                           "attempts, and gives up after 8."),
    ("gemini_cli", "claude_code", "critique", "Without jitter every client retries at the same moment; "
                                              "add full jitter and honour Retry-After."),
    ("claude_code", "gemini_cli", "revision", "Added full jitter (random 0…backoff) and Retry-After; "
                                              "tests cover both."),
    ("planner", "claude_code", "response", "Approved. Merging fix-retry-42."),
]


@dataclass
class Stage:
    daemon: Daemon
    pub: Publisher
    web: WebServer
    browser: object

    def say(self, sender: str, text: str, recipient: str | None = None, thread: str | None = None,
            kind: str | None = None, topic: bytes = b"agent.chat") -> None:
        msg = {"sender": sender, "text": text}
        msg.update({k: v for k, v in (("recipient", recipient), ("thread_id", thread), ("kind", kind)) if v})
        self.pub.send(topic, json.dumps(msg).encode())

    def recorded(self, text: str, n: int = 1) -> list:
        """Wait until ``n`` records containing ``text`` are in the log; return them."""
        return wait_for(lambda: (found := [e for e in self.daemon.records() if text.encode() in e.line])
                        and len(found) >= n and found, what=f"{n} records with {text!r}")

    def page(self):
        context = self.browser.new_context(viewport=VIEW)
        context.add_init_script(SSE_OPEN)
        return context.new_page()


@pytest.fixture(scope="module")
def stage():
    chromium_or_fail()
    from playwright.sync_api import sync_playwright

    root = short_tmpdir()
    broker = Broker()
    daemon = Daemon(root / "logs", "--connect", broker.backend).start()
    ctx = zmq.Context()
    pub = Publisher(ctx, broker.frontend)
    pub.join(daemon)
    playwright = sync_playwright().start()
    web = browser = None
    try:
        st = Stage(daemon, pub, None, None)
        joined = agents.register(daemon.log, "planner")
        for i, (sender, recipient, kind, text) in enumerate(SEED):
            st.say(sender, text, recipient, "fix-retry-42", kind)
            if i == 3:
                st.recorded("gives up after 8")
                assert ask(daemon.log.control_endpoint, "checkpoint before-review", timeout_ms=30000)["ok"]
        st.say("planner", "Next: document the backoff in README.md", "gemini_cli", "docs-7", "request")
        st.say("gemini_cli", "README section drafted; see PR 43.", "planner", "docs-7", "response")
        st.recorded("README section drafted")
        eventually(lambda: any(b'"event":"joined"' in e.line for e in daemon.records()))  # for the agents page
        joined.unlink()
        web = st.web = WebServer(daemon.log_dir)
        browser = st.browser = launch(playwright)
        yield st
    finally:
        if browser is not None:
            browser.close()
        playwright.stop()
        if web is not None:
            web.stop()
        pub.close()
        ctx.destroy(linger=0)
        daemon.stop()
        broker.kill()
        shutil.rmtree(root, ignore_errors=True)


def live(stage, query: str = ""):
    page = stage.page()
    said: list[str] = []
    page.on("console", lambda m: said.append(m.text))
    page.goto(stage.web.url + query)
    try:
        page.wait_for_function("window.__sseOpen >= 1", timeout=5000)
    except Exception:
        raise AssertionError(f"the live view's event stream did not open: {said} {stage.web.errors()}") from None
    return page


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def test_a_published_message_appears_in_the_live_view_within_a_second(stage):
    page = live(stage)
    word = f"live-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    stage.say("claude_code", f"tests pass: {word}", "planner", "fix-retry-42", "response")
    page.locator("#rows .rec[data-seq]", has_text=word).wait_for(timeout=5000)
    assert time.monotonic() - start < 1.0, f"shown after {time.monotonic() - start:.3f} s"
    shot(page, "live")
    page.fill("input[name=sender]", "filter-bob")  # a filter keeps streaming, and only what it lets through
    page.wait_for_function("window.__sseOpen >= 2", timeout=5000)
    stage.say("filter-alice", f"not shown {word}")
    stage.say("filter-bob", f"shown {word}")
    page.locator("#rows .rec[data-seq]", has_text=f"shown {word}").wait_for(timeout=5000)
    assert page.locator("#rows .rec[data-seq]", has_text="not shown").count() == 0
    assert page.locator("#rows .rec[data-seq]").count() == 1
    page.context.close()


def test_pause_stops_the_live_view_and_resume_catches_up_with_nothing_missing(stage):
    page = live(stage)
    page.click("#pause")
    page.wait_for_selector("#resume")
    tag = uuid.uuid4().hex[:8]
    for i in range(30):
        stage.say("planner", f"paused-{tag} {i}")
    stage.recorded(f"paused-{tag}", 30)
    page.wait_for_timeout(600)
    assert page.locator("#rows .rec[data-seq]", has_text=f"paused-{tag}").count() == 0, "paused: nothing new shown"
    page.click("#resume")
    page.wait_for_function(f"[...document.querySelectorAll('#rows .rec[data-seq]')].filter(r => r.textContent.includes('paused-{tag}'))"
                           ".length >= 30", timeout=5000)
    page.wait_for_timeout(300)
    rows = page.eval_on_selector_all("#rows .rec[data-seq]", "rs => rs.map(r => [Number(r.dataset.seq), r.textContent])")
    mine = [(seq, int(re.search(rf"paused-{tag} (\d+)", text).group(1))) for seq, text in rows if f"paused-{tag}" in text]
    assert [i for _, i in mine] == list(range(29, -1, -1)), "all 30, newest first, none twice"
    assert [s for s, _ in mine] == list(range(mine[0][0], mine[0][0] - 30, -1))
    stage.say("planner", f"after-resume-{tag}")  # and it is live again
    page.locator("#rows .rec[data-seq]", has_text=f"after-resume-{tag}").wait_for(timeout=5000)
    page.context.close()


def test_search_finds_the_message_and_opens_its_thread_there(stage):
    word = f"quokka{uuid.uuid4().hex[:8]}"
    thread = f"search-{uuid.uuid4().hex[:8]}"
    for i in range(3):
        stage.say("planner", f"turn {i} before", "claude_code", thread, "request")
    stage.say("claude_code", f"the {word} lives in client.py", "planner", thread, "response")
    stage.recorded(word)
    page = stage.page()
    page.goto(stage.web.origin + "/search")
    for _ in range(10):  # the indexer makes a record searchable within a second
        page.fill("#q", word)
        page.press("#q", "Enter")
        page.wait_for_timeout(300)
        if page.locator("tr.hit").count():
            break
    assert page.locator("tr.hit").count() == 1
    assert page.locator("tr.hit mark").inner_text() == word
    page.click("tr.hit a.open-hit")
    page.wait_for_url(re.compile(rf"/thread/{thread}\?at=\d+#m\d+$"))
    target = page.locator(".turn.target")
    assert word in target.inner_text() and target.get_attribute("data-sender") == "claude_code"
    page.context.close()


def test_a_thread_page_shows_its_turns_in_order_with_the_right_agents(stage):
    thread = f"order-{uuid.uuid4().hex[:8]}"
    said = [("planner", "claude_code", "request"), ("claude_code", "planner", "response"),
            ("gemini_cli", "claude_code", "critique"), ("claude_code", "gemini_cli", "revision")] * 2
    for i, (sender, recipient, kind) in enumerate(said):
        stage.say(sender, f"{thread} turn {i}", recipient, thread, kind)
    stage.recorded(f"{thread} turn 7")
    page = stage.page()
    page.goto(f"{stage.web.origin}/thread/{thread}")
    turns = page.eval_on_selector_all(".turn", "ts => ts.map(t => [t.dataset.sender, t.querySelector('.body').innerText])")
    assert turns == [(s, f"{thread} turn {i}") for i, (s, _, _) in enumerate(said)] or \
        turns == [[s, f"{thread} turn {i}"] for i, (s, _, _) in enumerate(said)]
    assert page.locator(".phase.critique").count() == 2 and page.locator(".phase.revision").count() == 2
    assert page.locator("#turn-count").inner_text() == "8"
    colours = page.eval_on_selector_all(".turn", "ts => ts.map(t => getComputedStyle(t).borderLeftColor)")
    by_agent = {}
    for (sender, _, _), c in zip(said, colours):
        by_agent.setdefault(sender, set()).add(c)
    assert all(len(c) == 1 for c in by_agent.values()) and len({next(iter(c)) for c in by_agent.values()}) == 3
    page.goto(f"{stage.web.origin}/thread/fix-retry-42")
    page.click("#copy-prompt")
    prompt = page.locator("#prompt-text")
    prompt.wait_for()
    assert prompt.input_value().startswith("Conversation so far (oldest first):")
    shot(page, "thread")
    page.context.close()


def test_the_graph_shows_the_edges_that_were_published(stage):
    tag = uuid.uuid4().hex[:6]
    alpha, beta, gamma = f"alpha-{tag}", f"beta-{tag}", f"gamma-{tag}"
    for _ in range(3):
        stage.say(alpha, "to beta", beta)
    for _ in range(2):
        stage.say(beta, "to alpha", alpha)
    stage.say(gamma, "to everyone")
    stage.recorded(f'"sender": "{gamma}"')
    page = stage.page()

    def edges():
        page.goto(stage.web.origin + "/agents")
        return {(e["s"], e["r"]): int(e["n"]) for e in page.eval_on_selector_all(
            "svg.graph a.edge", "es => es.map(e => ({s: e.dataset.sender, r: e.dataset.recipient, n: e.dataset.count}))")
            if tag in e["s"]}

    found = wait_for(lambda: (got := edges()) and len(got) == 3 and got, timeout=10, what="three edges")
    assert found == {(alpha, beta): 3, (beta, alpha): 2, (gamma, ""): 1}
    page.goto(stage.web.origin + "/agents")
    shot(page, "agents")
    page.locator(f'svg.graph a.edge[data-sender="{alpha}"] text.edge-count').click()
    page.wait_for_url(re.compile(r"/agents/edge\?"))
    assert page.locator("#rows .rec[data-seq]").count() == 3
    page.context.close()


def test_a_binary_payload_shows_as_hex_with_its_checksum_checked(stage):
    page = live(stage)
    blob = bytes([0x00, 0xFF, 0x10, 0x80]) + b"persist" + bytes(range(0xF0, 0x100))
    stage.pub.send(b"bin.frame", blob)
    record = stage.recorded("bin.frame")[0]
    row = page.locator(f"#m{record.seq}")
    row.wait_for(timeout=5000)
    assert "bytes of binary" in row.text_content()
    row.locator(".seq a").click()
    page.wait_for_url(re.compile(rf"/message/{record.seq}$"))
    hexed = page.locator('.frame[data-as="hex"] pre').inner_text()
    assert hexed.startswith("00000000  00 ff 10 80 70 65 72 73 69 73 74 f0 f1 f2 f3 f4  ....persist.....")
    assert page.locator("#checksum.ok").count() == 1 and record.rec["meta"]["sha256"] in page.locator("#checksum").inner_text()
    shot(page, "message")
    page.context.close()


def test_a_bad_token_is_refused(stage):
    web = WebServer(stage.daemon.log_dir, "--token", "browser-token-0123456789")
    try:
        page = stage.page()
        refused = page.goto(web.origin + "/?token=browser-token-wrong-000000")
        assert refused.status == 403 and "a valid token is needed" in page.inner_text("body")
        assert page.goto(web.origin + "/threads").status == 403
        assert page.goto(web.url).status == 200
        page.wait_for_function("window.__sseOpen >= 1", timeout=5000)  # the event stream passes with the cookie
        word = f"tokened-{uuid.uuid4().hex[:8]}"
        stage.say("planner", word)
        page.locator("#rows .rec[data-seq]", has_text=word).wait_for(timeout=5000)
        assert page.goto(web.origin + "/threads").status == 200
        page.context.close()
    finally:
        web.stop()


def test_every_page_loads_with_the_network_blocked(stage):
    context = stage.browser.new_context(viewport=VIEW)
    context.add_init_script(SSE_OPEN)
    asked: list[str] = []

    def only_the_server(route):
        asked.append(route.request.url)
        if route.request.url.startswith(stage.web.origin + "/"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", only_the_server)
    page = context.new_page()
    failed: list[str] = []
    page.on("requestfailed", lambda r: r.failure != "net::ERR_ABORTED" and failed.append(f"{r.url} {r.failure}"))
    page.on("pageerror", lambda e: failed.append(str(e)))
    page.goto(stage.web.url)
    page.wait_for_function("window.__sseOpen >= 1", timeout=5000)
    assert page.evaluate("htmx.version") == "2.0.11"
    page.wait_for_timeout(2200)  # the sparkline refreshes every 2 s
    pages = {"threads": "/threads", "thread-fix": "/thread/fix-retry-42", "search-backoff": "/search?q=backoff",
             "message-1": "/message/1", "agents-page": "/agents", "timeline": "/timeline",
             "checkpoint": "/checkpoint/before-review"}
    for name, path in pages.items():
        response = page.goto(stage.web.origin + path)
        assert response.status == 200, path
        page.wait_for_load_state("load")
        if name in ("threads", "timeline", "checkpoint", "search-backoff"):
            shot(page, name.removesuffix("-backoff"))
    assert asked and all(url.startswith(stage.web.origin + "/") for url in asked), \
        [u for u in asked if not u.startswith(stage.web.origin)]
    assert not failed, failed  # (a request cut short by leaving its page is ERR_ABORTED)
    assert any(u.endswith("/static/htmx-2.0.11.min.js") for u in asked)
    context.close()


def test_a_record_shipped_to_the_archive_appears_in_its_live_view(stage, tmp_path):
    """``persist-cli --archive URL web``: a record the shipper lands after the page opened shows, with its
    node; paused, then resumed, the page gets what landed meanwhile, once each."""
    from libdir import Built
    from pgdb import database, ship_until

    def say(b: Built, text: str) -> None:
        b.send(b"agent.chat", json.dumps({"sender": "shipped-agent", "text": text}).encode(), at=time.time())

    b = Built(tmp_path / "north")
    with database() as url:
        say(b, "first one")
        ship_until(b.root, url, "north", b.seq)
        web = WebServer(tmp_path, "--archive", url)
        try:
            st = Stage(None, None, web, stage.browser)  # the module's browser, another server
            page = live(st)
            word = f"shipped-{uuid.uuid4().hex[:8]}"
            say(b, word)
            ship_until(b.root, url, "north", b.seq)
            row = page.locator("#rows .rec[data-seq]", has_text=word)
            row.wait_for(timeout=5000)
            assert row.get_attribute("data-node") == "north" and f"north #{b.seq}" in row.inner_text()
            shot(page, "archive-live")
            page.click("#pause")
            page.wait_for_selector("#resume")
            for i in range(5):
                say(b, f"paused-{word} {i}")
            ship_until(b.root, url, "north", b.seq)
            page.wait_for_timeout(700)
            assert page.locator("#rows .rec[data-seq]", has_text=f"paused-{word}").count() == 0
            page.click("#resume")
            page.wait_for_function(f"[...document.querySelectorAll('#rows .rec[data-seq]')].filter(r => "
                                   f"r.textContent.includes('paused-{word}')).length >= 5", timeout=5000)
            page.wait_for_timeout(700)  # and then no row twice
            seqs = page.eval_on_selector_all("#rows .rec[data-seq]", "rs => rs.map(r => Number(r.dataset.seq))")
            assert seqs == list(range(b.seq, 0, -1)), seqs
            page.context.close()
        finally:
            web.stop()
            b.close()
