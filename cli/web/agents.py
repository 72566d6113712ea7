"""Agents: who talks to whom (an SVG graph, an arrow per sender → recipient with its count; an arrow
opens those messages), each agent's messages and its rate over the last two minutes (counted by ``tail``), and the agents that joined and
left (the daemon's ``$persist/agent`` records) on a time axis.

Counts come from the source (``Source.edges``: a log dir's index, counted incrementally, or the archive's
rows); messages are read from the JSONL or the archive's ``line``.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from persist.cli.web import show, svg
from persist.daemon.log import times

EDGE_LIMIT = 200  # messages listed for one arrow
EVERYONE = "*"  # the recipient of a message to no one in particular, in an arrow's URL


def routes(viewer) -> list[Route]:
    source = viewer.source

    def page(request: Request) -> Response:
        counted = source.edges()
        edges = [svg.Edge(s, r, n, "/agents/edge?" + urlencode({"sender": s, "recipient": EVERYONE if r is None else r}))
                 for (s, r), n in counted.items()]
        recent = viewer.tail.sender_rates()
        presence = source.system(("$persist/agent",))
        sent: dict[str, int] = {}
        received: dict[str, int] = {}
        for (s, r), n in counted.items():
            sent[s] = sent.get(s, 0) + n
            if r is not None:
                received[r] = received.get(r, 0) + n
        agents = [{"name": a, "colour": show.colour(a), "sent": sent.get(a, 0), "received": received.get(a, 0),
                   "per_min": recent.get(a, 0.0)}
                  for a in sorted(set(sent) | set(received), key=lambda a: -sent.get(a, 0))]
        marks, changes = [], []
        for e in presence:
            payload = e.rec.get("payload") if isinstance(e.rec.get("payload"), dict) else {}
            name, event = str(payload.get("agent", "?")), str(payload.get("event", "?"))
            at = times.epoch(e.rec["received_at"])
            label = f"{name} {event} · {times.show(e.rec['received_at'])}" + (
                f" ({payload['reason']})" if payload.get("reason") else "")
            where = show.where(e)
            marks.append(svg.Mark(name, at, label, where["href"], event))
            changes.append({**where, "seq": e.seq, "time": times.show(e.rec["received_at"]), "agent": name, "event": event,
                            "reason": payload.get("reason"), "pid": payload.get("pid"), "colour": show.colour(name)})
        lanes = sorted({m.lane for m in marks})
        return viewer.page(request, "agents.html", tab="agents", graph=svg.graph(edges, show.colour), agents=agents,
                           edges=sorted(edges, key=lambda e: -e.count),
                           presence=svg.time_axis(marks, lanes, show.tick),
                           changes=changes[::-1])

    def edge(request: Request) -> Response:
        sender = request.query_params.get("sender", "")
        recipient = request.query_params.get("recipient", EVERYONE)
        found = source.edge_entries(sender, None if recipient == EVERYONE else recipient, EDGE_LIMIT)
        shown = [show.row(e) for e in found]
        return viewer.page(request, "edge.html", tab="agents", sender=sender,
                           recipient="everyone" if recipient == EVERYONE else recipient, rows=shown, limit=EDGE_LIMIT)

    return [Route("/agents", page), Route("/agents/edge", edge)]
