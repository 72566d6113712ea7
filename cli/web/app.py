"""The Starlette application: each page module's routes, the Jinja2 templates, the vendored static files,
and the ``guard`` in front of all of them.

``Viewer`` is what every page is handed: the ``source`` (a log dir or the archive: ``source.Source``), the
``tail`` (the live records) and ``page`` (a template rendered as a response). A source that cannot answer
(an index being made, an archive gone away) is one line on the page, never a traceback.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from persist.cli.web.guard import Guard
from persist.cli.web.source import Source
from persist.daemon.log.errors import SearchIndexError

HERE = Path(__file__).parent
HTMX = "htmx-2.0.11.min.js"
HTMX_SSE = "htmx-ext-sse-2.2.4.min.js"


@dataclass
class Viewer:
    source: Source
    templates: Jinja2Templates

    @property
    def tail(self):
        return self.source.tail

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("log_dir", self.source.label)
        return self.templates.TemplateResponse(request, name, {"htmx": HTMX, "htmx_sse": HTMX_SSE, **context},
                                               status_code=status)


def warm(source: Source, unavailable: tuple[type[Exception], ...]) -> None:
    """Count what the threads and agents pages need before anyone asks (a log without an index yet, an archive
    that does not answer, are skipped: the page says so when asked)."""
    try:
        source.warm()
    except (SearchIndexError, *unavailable):
        pass


def number(text: str | None, default: int, low: int = 0, high: int = 1 << 62) -> int:
    """A whole-number query parameter, kept within ``low``..``high``; ``default`` when missing or not a number."""
    try:
        return min(max(int(text), low), high) if text not in (None, "") else default
    except ValueError:
        return default


async def index_busy(request: Request, exc: Exception) -> Response:
    """The search index cannot answer yet (an indexer is making it): one line, 503, try again."""
    return PlainTextResponse(f"persist web: {exc}\n", status_code=503)


def create(source: Source, token: str | None = None, hosts: set[str] | None = None) -> Guard:
    """The whole application over ``source``, guarded (``token``: required on every request when set)."""
    from persist.cli.web import agents, live, message, search, threads, timeline

    viewer = Viewer(source, Jinja2Templates(directory=str(HERE / "templates")))
    viewer.templates.env.globals["log_name"] = source.name
    unavailable = getattr(source, "unavailable", ())  # the source's own "cannot answer now" errors

    async def cannot_answer(request: Request, exc: Exception) -> Response:
        """The source does not answer (an archive gone away, a query cut off): one line on the page, 503."""
        return viewer.page(request, "error.html", status=503, error=source.explain(exc))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=warm, args=(viewer.source, unavailable), name="persist-web-warm", daemon=True).start()
        yield
        viewer.tail.stop()

    routes = [*live.routes(viewer), *threads.routes(viewer), *search.routes(viewer), *message.routes(viewer),
              *agents.routes(viewer), *timeline.routes(viewer),
              Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")]
    handlers = {SearchIndexError: index_busy, **{kind: cannot_answer for kind in unavailable}}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    return Guard(app, token, hosts)
