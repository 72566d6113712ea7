"""The threads list and one thread as a conversation.

The list is ``persist-cli threads`` (``Source.threads``: the same rows as ``search.threads``, tallied
incrementally). A thread is ``persist-cli thread``'s records, in
recorded order, shown a window at a time (``WINDOW`` turns around the one asked for, more as the reader
scrolls), so a thread of 10,000 turns opens as fast as one of ten: its rows come from the index, and only
the window's records are read from the log. Within the window: each agent in its colour, a response
linked to the request it answers, tool calls folded, critique and revision phases marked where they
begin, and the gaps and restores the daemon recorded between its turns. "Copy as prompt" is
``persist-cli thread --format prompt --max-tokens N``.
"""

from __future__ import annotations

import bisect
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from persist.cli.web import show
from persist.cli.web.app import number
from persist.daemon.index.search import close_threads
from persist.daemon.log import render, times
from persist.daemon.log.reader import Entry
from persist.daemon.log.select import newest_fitting, tokens

WINDOW = 200  # turns shown at once
BEFORE = 20  # turns shown before the one a link opens the thread at
PROMPT_TOKENS = 4000  # the "copy as prompt" budget unless the reader sets another
EVENTS = ("$persist/gap", "$persist/restore")
IDS = ("id", "message_id", "msg_id")  # payload fields a parent_id may name


def _pairs(turns: list[dict[str, Any]], entries: list[Entry]) -> None:
    """Link each response to the request it answers: the one its ``parent_id`` names, else the latest
    unanswered request to its sender (or from its recipient)."""
    open_requests: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    for t, e in zip(turns, entries):
        payload = e.rec.get("payload") if isinstance(e.rec.get("payload"), dict) else {}
        if t["kind"] == "request":
            open_requests.append(t)
            for key in IDS:
                if payload.get(key) is not None:
                    by_id[str(payload[key])] = t
            by_id[str(e.rec.get("id"))] = t
        elif t["kind"] == "response":
            parent = show.meta(e.rec).get("parent_id")
            req = by_id.get(str(parent)) if parent is not None else None
            if req is None:
                req = next((r for r in reversed(open_requests) if r.get("answered_by") is None and (
                    r["recipient"] == t["sender"] or (t["recipient"] and r["sender"] == t["recipient"]))), None)
            if req is not None:
                req["answered_by"], t["answers"] = t["seq"], req["seq"]


def routes(viewer) -> list[Route]:
    source = viewer.source

    def listing(request: Request) -> Response:
        limit = number(request.query_params.get("limit"), 100, 1, 100000)
        found = source.threads(limit)
        rows = [{**t, "first": times.show(t["first_at"]), "last": times.show(t["last_at"]),
                 "agents": [(p, show.colour(p)) for p in t["participants"]]} for t in found]
        return viewer.page(request, "threads.html", tab="threads", threads=rows, limit=limit,
                           more=len(found) == limit)

    def turns(db, tid: str, rows: list[tuple], start: int, end: int, at: int | None) -> dict[str, Any]:
        """The window ``rows[start:end]`` as a conversation, with what the daemon recorded between its turns."""
        part = rows[start:end]
        entries = source.entries([(seg, off) for _, seg, off, *_ in part])
        shown = [show.row(e) for e in entries]
        _pairs(shown, entries)
        order: dict[str, int] = {}
        for r in rows:
            if r[4] is not None:
                order.setdefault(r[4], len(order))
        right = list(order)[1:2] if len(order) == 2 else []  # two agents: one on each side
        items: list[dict[str, Any]] = []
        if part:
            events = [show.row(e) for e in source.entries(source.system_rows(db, EVENTS, part[0][0], part[-1][0]))]
        else:
            events = []
        merged = sorted([(t["seq"], "turn", t) for t in shown] + [(ev["seq"], "event", ev) for ev in events],
                        key=lambda x: x[0])
        previous = None
        for _, what, item in merged:
            if what == "event":
                item["event"] = item["topic"].removeprefix("$persist/")
                items.append({"type": "event", "r": item})
                continue
            if item["kind"] in show.PHASES and item["kind"] != previous:
                items.append({"type": "phase", "kind": item["kind"]})
            previous = item["kind"]
            item["right"] = item["sender"] in right
            item["folded"] = item["kind"] in show.FOLDED
            item["target"] = item["seq"] == at
            items.append({"type": "turn", "r": item})
        return {"items": items, "start": start, "end": end, "total": len(rows), "tid": tid, "qtid": quote(tid, safe=""),
                "window": WINDOW}

    def thread(request: Request) -> Response:
        tid = request.path_params["tid"]
        at = number(request.query_params.get("at"), -1, -1)
        at = None if at < 0 else at
        with source.index(wait=1.0) as db:
            rows = source.thread_rows(db, tid)
            if not rows:
                close = close_threads(db, tid)
                return viewer.page(request, "thread_missing.html", status=404, tab="threads", tid=tid, close=close)
            i = bisect.bisect_left([r[0] for r in rows], at) if at is not None else 0
            start = max(0, i - BEFORE) if at is not None else 0
            window = turns(db, tid, rows, start, min(len(rows), start + WINDOW), at)
        agents = sorted({r[4] for r in rows if r[4] is not None})
        summary = {"turns": len(rows), "tokens": sum(r[3] or 0 for r in rows), "first": times.show(rows[0][5]),
                   "last": times.show(rows[-1][5]), "agents": [(a, show.colour(a)) for a in agents]}
        return viewer.page(request, "thread.html", tab="threads", summary=summary,
                           budget=PROMPT_TOKENS, **window)

    def more(request: Request) -> Response:
        tid = request.path_params["tid"]
        q = request.query_params
        with source.index(wait=0.5) as db:
            rows = source.thread_rows(db, tid)
            start = number(q.get("start"), 0, 0, len(rows))
            end = number(q.get("end"), start + WINDOW, start, min(len(rows), start + WINDOW))
            window = turns(db, tid, rows, start, end, None)
        return viewer.page(request, "_turns.html", **window)

    def prompt(request: Request) -> Response:
        """``persist-cli thread ID --format prompt --max-tokens N``, reading only the newest turns it needs."""
        tid = request.path_params["tid"]
        raw = request.query_params.get("max_tokens", str(PROMPT_TOKENS)).strip()
        if not raw.isdigit():
            return HTMLResponse('<p class="error-line">max tokens must be a whole number (0: every turn)</p>')
        budget = int(raw) or None
        with source.index(wait=0.5) as db:
            rows = [(seg, off) for _, seg, off, *_ in source.thread_rows(db, tid)]
        suffix: list[Entry] = []
        used, end = 0, len(rows)
        while end > 0 and (budget is None or used <= budget):
            begin = max(0, end - 200)
            chunk = source.entries(rows[begin:end])
            used += sum(tokens(e) for e in chunk)
            suffix[:0] = chunk
            end = begin
        kept, _ = newest_fitting(suffix, budget)
        left_out = len(rows) - len(kept)
        text = "\n".join(render.lines(kept, "prompt"))
        return viewer.page(request, "_prompt.html", text=text, kept=len(kept), left_out=left_out, budget=budget,
                           used=sum(tokens(e) for e in kept))

    return [Route("/threads", listing), Route("/thread/{tid:path}", thread), Route("/turns/{tid:path}", more),
            Route("/prompt/{tid:path}", prompt)]
