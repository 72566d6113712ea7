"""The live page (the start page): the newest records at once, then each new one as it is recorded
(server-sent events, swapped in by htmx's SSE extension), with filters that keep streaming, pause and
resume, and the rate sparkline.

Records are chosen as ``persist-cli recent`` chooses them (``Source.newest``, ``select.matches``). Each
event (the records of one read) carries the stream's position (``source.Cursor``: a log dir's newest seq, the
archive's newest seq per node and epoch) as the SSE id and as the page's ``#last-seq``: resume (and a browser
reconnecting with ``Last-Event-ID``) asks for the records after it, read from the source first
(``Source.backlog``) and then from the ``tail``, each admitted once by the cursor, so nothing is missed and
nothing shown twice.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from markupsafe import escape
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from persist.cli.web import show, svg
from persist.cli.web.source import Cursor
from persist.daemon.log import select
from persist.daemon.log.reader import Entry

FIRST = 100  # records shown when the page opens
FILTERS = ("topic", "sender", "kind", "thread")
KEEPALIVE = 15.0  # seconds between comments on a quiet stream (a closed browser is noticed)
GATHER = 0.03  # seconds records are gathered into one event after the first: at most ~30 swaps a second


def filters_of(request: Request) -> dict[str, Any]:
    """The page's filters as ``select.matches`` takes them (an empty field: no filter)."""
    q = request.query_params
    chosen: dict[str, Any] = {k: q.get(k) or None for k in FILTERS}
    chosen["system"] = q.get("system", "1") != "0"
    return chosen


def query_of(filters: dict[str, Any], **more: Any) -> str:
    pairs = {k: v for k, v in filters.items() if k in FILTERS and v}
    if not filters.get("system", True):
        pairs["system"] = "0"
    return urlencode({**pairs, **{k: v for k, v in more.items() if v is not None}})


def routes(viewer) -> list[Route]:
    row_template = viewer.templates.get_template("_row.html")
    source = viewer.source
    unavailable = getattr(source, "unavailable", ())

    def event(entries: list[Entry], cursor: Cursor) -> str:
        """One SSE event for the records of one read: their rows (newest first, as the list shows them) in one
        ``chunk`` that goes in above the rows shown, one element for the page to take in however many came."""
        html = '<div class="chunk">' + "".join(row_template.render(r=show.row(e)) for e in reversed(entries)) + "</div>" + (
            f'<input type="hidden" id="last-seq" name="after" value="{escape(cursor.token)}" hx-swap-oob="true">')
        return "event: record\nid: %s\n%s\n\n" % (cursor.token, "\n".join("data: " + x for x in html.splitlines()))

    def newest(filters: dict[str, Any]) -> tuple[list[dict[str, Any]], Cursor]:
        entries, cursor = source.newest(FIRST, filters)
        return [show.row(e) for e in entries], cursor

    def page(request: Request) -> Response:
        filters = filters_of(request)
        rows, last = newest(filters)
        return viewer.page(request, "live.html", tab="live", rows=rows, last=last.token, filters=filters,
                           query=query_of(filters, after=last.token), rate=svg.sparkline(viewer.tail.rate()))

    def panel(request: Request) -> Response:
        filters = filters_of(request)
        rows, last = newest(filters)
        return viewer.page(request, "_panel.html", rows=rows, last=last.token, filters=filters,
                           query=query_of(filters, after=last.token))

    def stream_box(request: Request) -> Response:
        filters = filters_of(request)
        after = source.cursor(request.query_params.get("after"))
        token = after.token if after.given else ""
        return viewer.page(request, "_stream.html", paused=request.query_params.get("paused") == "1", last=token,
                           last_label=after.label if after.given else "", query=query_of(filters, after=token or None))

    def rate(request: Request) -> Response:
        error = viewer.tail.error  # the source not answering: said on the page, where the rate is
        return HTMLResponse(svg.sparkline(viewer.tail.rate()) + (
            f'<span class="error-line" id="source-error">{escape(error)}</span>' if error else ""))

    async def events(request: Request) -> Response:
        filters = filters_of(request)
        cursor = source.cursor(request.headers.get("last-event-id") or request.query_params.get("after"))
        sub = await run_in_threadpool(viewer.tail.subscribe, asyncio.get_running_loop())

        async def stream():
            try:
                yield "retry: 1000\n\n"
                if cursor.given:  # what was recorded after it, before what the tail hands out (no position: only that)
                    try:
                        async for chunk in iterate_in_threadpool(source.backlog(cursor)):
                            wanted = [e for e in chunk if cursor.admit(e) and select.matches(e.rec, **filters)]
                            if wanted:
                                yield event(wanted, cursor)
                    except unavailable:
                        return  # the source does not answer now: the browser reconnects from the last event's id
                while True:
                    try:
                        batch = await sub.get(KEEPALIVE, GATHER)
                    except asyncio.TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if batch is None:
                        return  # too slow to keep up: the browser reconnects with Last-Event-ID and catches up
                    wanted = [e for e in batch if cursor.admit(e) and select.matches(e.rec, **filters)]
                    if wanted:
                        yield event(wanted, cursor)
            finally:
                viewer.tail.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return [Route("/", page), Route("/live/panel", panel), Route("/live/stream", stream_box),
            Route("/live/rate", rate), Route("/live/events", events)]
