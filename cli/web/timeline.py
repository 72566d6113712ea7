"""The timeline: checkpoints, gaps, restores, retention, rotations and daemon starts and stops on one time
axis, newest listed first; and one checkpoint: its manifest and what a restore to it would bring back.

Checkpoints are ``Source.checkpoints`` (a log dir's manifests, what ``checkpoints list`` shows; the archive
has only the daemons' ``$persist/checkpoint`` records, the manifests staying in each node's log dir),
rotations the segments' first records, the rest the daemon's own records. Read-only: the page shows what
``restore`` would do and never does it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from persist.cli.web import show, svg
from persist.daemon.log import times
from persist.daemon.log.errors import CheckpointError

LANES = ("checkpoint", "gap", "restore", "retention", "rotation", "start", "stop")
SYSTEM = tuple(f"$persist/{lane}" for lane in LANES if lane not in ("checkpoint", "rotation"))
SHOWN_TURNS = 50  # the newest turns a checkpoint page shows


def routes(viewer) -> list[Route]:
    source = viewer.source

    def events() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for m in source.checkpoints():
            found.append({"lane": "checkpoint", "at": m.get("created_at"), "seq": m.get("last_seq"),
                          "label": m.get("where_label") or f"#{m.get('last_seq')}",
                          "what": f"{m['id']}" + (f" “{m['label']}”" if m.get("label") else "") + f" · {m.get('reason')}"
                                  f" · up to #{m.get('last_seq')}",
                          "href": m["href"], "css": "labelled" if m.get("label") else ""})
        for name, first in source.rotations():
            where = show.where(first)
            found.append({"lane": "rotation", "at": first.rec.get("received_at"), "seq": first.seq,
                          "label": where["label"], "what": f"{name} begins" + (f" on {where['node']}" if where["node"] else ""),
                          "href": where["href"], "css": "rotation"})
        for e in source.system(SYSTEM):
            lane, r = e.rec["topic"].removeprefix("$persist/"), show.row(e)
            found.append({"lane": lane, "at": e.rec.get("received_at"), "seq": e.seq, "label": r["label"],
                          "what": r["short"], "href": r["href"], "css": lane})
        found = [f for f in found if f["at"]]
        for f in found:
            f["time"] = times.show(f["at"])
        return sorted(found, key=lambda f: times.epoch(f["at"]))

    def page(request: Request) -> Response:
        found = events()
        marks = [svg.Mark(f["lane"], times.epoch(f["at"]), f"{f['lane']}: {f['what']} · {f['time']}", f["href"], f["css"])
                 for f in found]
        lanes = [lane for lane in LANES if any(f["lane"] == lane for f in found)]
        return viewer.page(request, "timeline.html", tab="timeline", axis=svg.time_axis(marks, lanes, show.tick),
                           events=found[::-1], cannot_show=getattr(source, "timeline_cannot_show", None))

    def checkpoint(request: Request) -> Response:
        try:
            m, entries, after = source.checkpoint(request.path_params["ident"], SHOWN_TURNS)
        except CheckpointError as exc:
            return viewer.page(request, "error.html", status=404, tab="timeline", error=str(exc))
        return viewer.page(request, "checkpoint.html", tab="timeline", m=m, created=times.show(m.get("created_at")),
                           turns=[show.row(e) for e in entries], after=after, shown=SHOWN_TURNS)

    return [Route("/timeline", page), Route("/checkpoint/{ident}", checkpoint)]
