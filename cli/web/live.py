"""The live page (the start page): the newest records at once, then each new one as it is recorded
(server-sent events, swapped in by htmx's SSE extension), with filters that keep streaming, pause and
resume, and the rate sparkline.

Records are chosen as ``persist-cli recent`` chooses them (``select.recent``, ``select.matches``). Each
event (the records of one read) carries its newest seq as the SSE id and as the page's ``#last-seq``: resume (and a browser reconnecting
with ``Last-Event-ID``) asks for the records after it, read from the log first and then from the ``tail``,
each seq sent once, so nothing is missed and nothing shown twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from persist.cli.web import show, svg
from persist.cli.web.app import number
from persist.daemon.log import reader, select
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
    log = viewer.source.log

    def event(entries: list[Entry]) -> str:
        """One SSE event for the records of one read: their rows (newest first, as the list shows them) in one
        ``chunk`` that goes in above the rows shown, one element for the page to take in however many came."""
        html = '<div class="chunk">' + "".join(row_template.render(r=show.row(e)) for e in reversed(entries)) + "</div>" + (
            f'<input type="hidden" id="last-seq" name="after" value="{entries[-1].seq}" hx-swap-oob="true">')
        return "event: record\nid: %d\n%s\n\n" % (entries[-1].seq, "\n".join("data: " + x for x in html.splitlines()))

    def newest(filters: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        last = reader.last_record(log)
        rows = [show.row(e) for e in select.recent(log, FIRST, reverse=True, **filters)]
        return rows, (last.seq if last else 0)

    def backlog(after: int) -> Iterator[list[Entry]]:
        """Every record after ``after`` in the log now, in chunks."""
        chunk: list[Entry] = []
        for line in reader.lines(log, viewer.source.position_after(after), after_seq=after):
            e = reader.entry(line.data, line.path)
            if e is not None and e.seq > after:
                chunk.append(e)
                if len(chunk) >= 500:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    def page(request: Request) -> Response:
        filters = filters_of(request)
        rows, last = newest(filters)
        return viewer.page(request, "live.html", tab="live", rows=rows, last=last, filters=filters,
                           query=query_of(filters, after=last), rate=svg.sparkline(viewer.tail.rate()))

    def panel(request: Request) -> Response:
        filters = filters_of(request)
        rows, last = newest(filters)
        return viewer.page(request, "_panel.html", rows=rows, last=last, filters=filters,
                           query=query_of(filters, after=last))

    def stream_box(request: Request) -> Response:
        filters = filters_of(request)
        after = number(request.query_params.get("after"), 0)
        return viewer.page(request, "_stream.html", paused=request.query_params.get("paused") == "1", last=after,
                           query=query_of(filters, after=after))

    def rate(request: Request) -> Response:
        return HTMLResponse(svg.sparkline(viewer.tail.rate()))

    async def events(request: Request) -> Response:
        filters = filters_of(request)
        after = number(request.headers.get("last-event-id") or request.query_params.get("after"), -1, low=-1)
        sub = await run_in_threadpool(viewer.tail.subscribe, asyncio.get_running_loop())

        async def stream():
            sent = after
            try:
                yield "retry: 1000\n\n"
                if after >= 0:
                    async for chunk in iterate_in_threadpool(backlog(after)):
                        wanted = [e for e in chunk if select.matches(e.rec, **filters)]
                        sent = max(sent, chunk[-1].seq)
                        if wanted:
                            yield event(wanted)
                while True:
                    try:
                        batch = await sub.get(KEEPALIVE, GATHER)
                    except asyncio.TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if batch is None:
                        return  # too slow to keep up: the browser reconnects with Last-Event-ID and catches up
                    wanted = [e for e in batch if e.seq > sent and select.matches(e.rec, **filters)]
                    sent = max(sent, batch[-1].seq)
                    if wanted:
                        yield event(wanted)
            finally:
                viewer.tail.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return [Route("/", page), Route("/live/panel", panel), Route("/live/stream", stream_box),
            Route("/live/rate", rate), Route("/live/events", events)]
