"""The threads list and one thread as a conversation.

The list is ``persist-cli threads`` (``Source.threads``: from a log dir the same rows as ``search.threads``,
tallied incrementally; from the archive ``query.threads``). A thread is ``persist-cli thread``'s records, in
recorded order, shown a window at a time (``WINDOW`` turns around the one asked for, more as the reader
scrolls), so a thread of 10,000 turns opens as fast as one of ten: its rows come from the index, and only
the window's records are read from the log. Within the window: each agent in its colour, a response
linked to the request it answers, tool calls folded, critique and revision phases marked where they
begin, and the gaps and restores the daemon recorded between its turns. "Copy as prompt" is
``persist-cli thread --format prompt --max-tokens N``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from persist.cli.web import show
from persist.cli.web.app import number
from persist.cli.web.source import Turn
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
                req["answered_by"], req["answered_by_label"] = t["anchor"], t["label"]
                t["answers"], t["answers_label"] = req["anchor"], req["label"]


def routes(viewer) -> list[Route]:
    source = viewer.source

    def listing(request: Request) -> Response:
        limit = number(request.query_params.get("limit"), 100, 1, 100000)
        found = source.threads(limit)
        rows = [{**t, "first": times.show(t["first_at"]), "last": times.show(t["last_at"]),
                 "agents": [(p, show.colour(p)) for p in t["participants"]]} for t in found]
        return viewer.page(request, "threads.html", tab="threads", threads=rows, limit=limit,
                           more=len(found) == limit, nodes=any(t.get("nodes") for t in found))

    def turns(tid: str, rows: list[Turn], start: int, end: int, at: tuple[int, int] | None) -> dict[str, Any]:
        """The window ``rows[start:end]`` as a conversation, with what the daemon recorded between its turns
        (``at``: the index and seq of the turn a link points at)."""
        part = rows[start:end]
        entries = source.turn_entries(part)
        shown = [show.row(e) for e in entries]
        _pairs(shown, entries)
        order: dict[str, int] = {}
        for r in rows:
            if r.sender is not None:
                order.setdefault(r.sender, len(order))
        right = list(order)[1:2] if len(order) == 2 else []  # two agents: one on each side
        items: list[dict[str, Any]] = []
        events = [(e, show.row(e)) for e in source.between(part, EVENTS)]
        merged = sorted([(source.order(e), 0, start + i, t) for i, (e, t) in enumerate(zip(entries, shown))] +
                        [(source.order(e), 1, -1, ev) for e, ev in events], key=lambda x: x[:2])
        previous = None
        for _, is_event, i, item in merged:
            if is_event:
                item["event"] = item["topic"].removeprefix("$persist/")
                items.append({"type": "event", "r": item})
                continue
            if item["kind"] in show.PHASES and item["kind"] != previous:
                items.append({"type": "phase", "kind": item["kind"]})
            previous = item["kind"]
            item["right"] = item["sender"] in right
            item["folded"] = item["kind"] in show.FOLDED
            item["target"] = at is not None and i == at[0] and item["seq"] == at[1]
            items.append({"type": "turn", "r": item})
        return {"items": items, "start": start, "end": end, "total": len(rows), "tid": tid, "qtid": quote(tid, safe=""),
                "window": WINDOW}

    def thread(request: Request) -> Response:
        tid = request.path_params["tid"]
        seq = number(request.query_params.get("at"), -1, -1)
        rows = source.thread(tid)
        if not rows:
            return viewer.page(request, "thread_missing.html", status=404, tab="threads", tid=tid,
                               close=source.close_threads(tid))
        at = source.locate(rows, seq, request.query_params) if seq >= 0 else None
        start = max(0, at - BEFORE) if at is not None else 0
        window = turns(tid, rows, start, min(len(rows), start + WINDOW), None if at is None else (at, seq))
        agents = sorted({r.sender for r in rows if r.sender is not None})
        summary = {"turns": len(rows), "tokens": sum(r.tokens or 0 for r in rows), "first": times.show(rows[0].received_at),
                   "last": times.show(rows[-1].received_at), "agents": [(a, show.colour(a)) for a in agents]}
        return viewer.page(request, "thread.html", tab="threads", summary=summary,
                           budget=PROMPT_TOKENS, **window)

    def more(request: Request) -> Response:
        tid = request.path_params["tid"]
        q = request.query_params
        rows = source.thread(tid)
        start = number(q.get("start"), 0, 0, len(rows))
        end = number(q.get("end"), start + WINDOW, start, min(len(rows), start + WINDOW))
        return viewer.page(request, "_turns.html", **turns(tid, rows, start, end, None))

    def prompt(request: Request) -> Response:
        """``persist-cli thread ID --format prompt --max-tokens N``, reading only the newest turns it needs."""
        tid = request.path_params["tid"]
        raw = request.query_params.get("max_tokens", str(PROMPT_TOKENS)).strip()
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 15:  # "²" is a digit to isdigit, not to int
            return HTMLResponse('<p class="error-line">max tokens must be a whole number (0: every turn)</p>')
        budget = int(raw) or None
        rows = source.thread(tid)
        suffix: list[Entry] = []
        used, end = 0, len(rows)
        while end > 0 and (budget is None or used <= budget):
            begin = max(0, end - 200)
            chunk = source.turn_entries(rows[begin:end])
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
