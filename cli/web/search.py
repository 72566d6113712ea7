"""The search page: ``persist-cli search`` in a form (``Source.search``: over a log dir the index's query
language and ranking, ``persist.daemon.index.search.search``; over the archive ``persist-cli --archive URL
search``'s, ``websearch_to_tsquery``), the same filters (``Filters``, ``--since``/``--until`` through
``times.parse_when``), hits read back from the JSONL; each hit opens its thread at that message (or the
message itself when it has no thread), its snippet highlighted.
"""

from __future__ import annotations

from urllib.parse import quote

from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from persist.cli.web import show
from persist.cli.web.app import number
from persist.daemon.index.search import Filters
from persist.daemon.log import times
from persist.daemon.log.errors import SearchIndexError

MARKS = ("\ue000", "\ue001")  # snippet highlight, swapped for <mark> once the text is escaped
LIMITS = (20, 50, 200)


def highlighted(snippet: str) -> Markup:
    return Markup(str(escape(" ".join(snippet.split()))).replace(MARKS[0], "<mark>").replace(MARKS[1], "</mark>"))


def routes(viewer) -> list[Route]:
    source = viewer.source

    def page(request: Request) -> Response:
        q = request.query_params
        form = {k: q.get(k, "").strip() for k in ("q", "sender", "topic", "thread", "kind", "since", "until")}
        limit = number(q.get("limit"), 50, 1, 1000)
        hits, error = [], None
        if form["q"]:
            try:
                filters = Filters(form["sender"] or None, form["topic"] or None, form["thread"] or None,
                                  form["kind"] or None, _when(form["since"], "since"), _when(form["until"], "until"))
                for snippet, e in source.search(form["q"], filters, limit, MARKS):
                    r = show.row(e)
                    r["snippet"] = highlighted(snippet)
                    r["message"] = r["href"]
                    if r["thread"]:
                        r["href"] = f"/thread/{quote(r['thread'], safe='')}?{r['at']}#{r['anchor']}"
                    hits.append(r)
            except (SearchIndexError, ValueError) as exc:
                error = str(exc)
        return viewer.page(request, "search.html", tab="search", form=form, hits=hits, error=error, limit=limit,
                           limits=LIMITS, websearch=getattr(source, "websearch", False))

    return [Route("/search", page)]


def _when(text: str, name: str) -> str | None:
    """A since/until field as ``--since``/``--until`` read it."""
    if not text:
        return None
    try:
        return times.parse_when(text)
    except ValueError as exc:
        raise ValueError(f"{name} {text!r} {exc}") from None
