"""The timeline: checkpoints, gaps, restores, retention, rotations and daemon starts and stops on one time
axis, newest listed first; and one checkpoint: its manifest and what a restore to it would bring back.

Checkpoints are ``checkpoints.listing`` (what ``checkpoints list`` shows), rotations the segments'
first records (``reader.segments``), the rest the daemon's own records found through the index. Read-only:
the page shows what ``restore`` would do and never does it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from persist.cli.web import show, svg
from persist.daemon.log import checkpoints, reader, times
from persist.daemon.log.errors import CheckpointError

LANES = ("checkpoint", "gap", "restore", "retention", "rotation", "start", "stop")
SYSTEM = tuple(f"$persist/{lane}" for lane in LANES if lane not in ("checkpoint", "rotation"))
SHOWN_TURNS = 50  # the newest turns a checkpoint page shows


def routes(viewer) -> list[Route]:
    source = viewer.source
    log = source.log

    def events() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for m in checkpoints.listing(log, []):
            found.append({"lane": "checkpoint", "at": m.get("created_at"), "seq": m.get("last_seq"),
                          "what": f"{m['id']}" + (f" “{m['label']}”" if m.get("label") else "") + f" · {m.get('reason')}"
                                  f" · up to #{m.get('last_seq')}",
                          "href": f"/checkpoint/{m['id']}", "css": "labelled" if m.get("label") else ""})
        for seg in reader.segments(log)[1:]:
            first = reader.first_record(seg.path)
            if first is not None:
                found.append({"lane": "rotation", "at": first.rec.get("received_at"), "seq": first.seq,
                              "what": f"{seg.name} begins", "href": f"/message/{first.seq}", "css": "rotation"})
        with source.index(wait=0.5) as db:
            for e in source.entries(source.system_rows(db, SYSTEM)):
                lane = e.rec["topic"].removeprefix("$persist/")
                found.append({"lane": lane, "at": e.rec.get("received_at"), "seq": e.seq,
                              "what": show.row(e)["short"], "href": f"/message/{e.seq}", "css": lane})
        found = [f for f in found if f["at"]]
        for f in found:
            f["time"] = times.show(f["at"])
        return sorted(found, key=lambda f: f["at"])

    def page(request: Request) -> Response:
        found = events()
        marks = [svg.Mark(f["lane"], times.epoch(f["at"]), f"{f['lane']}: {f['what']} · {f['time']}", f["href"], f["css"])
                 for f in found]
        lanes = [lane for lane in LANES if any(f["lane"] == lane for f in found)]
        return viewer.page(request, "timeline.html", tab="timeline", axis=svg.time_axis(marks, lanes, show.tick),
                           events=found[::-1])

    def checkpoint(request: Request) -> Response:
        try:
            m = checkpoints.find(log, request.path_params["ident"])
        except CheckpointError as exc:
            return viewer.page(request, "error.html", status=404, tab="timeline", error=str(exc))
        newest = reader.last_record(log)
        with source.index(wait=0.5) as db:
            turns = [show.row(e) for e in source.entries(source.upto_rows(db, m["last_seq"], SHOWN_TURNS))]
        after = (newest.seq - m["last_seq"]) if newest else 0
        return viewer.page(request, "checkpoint.html", tab="timeline", m=m, created=times.show(m.get("created_at")),
                           turns=turns, after=after, shown=SHOWN_TURNS)

    return [Route("/timeline", page), Route("/checkpoint/{ident}", checkpoint)]
