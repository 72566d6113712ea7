"""How one record is shown on every page: its time as ``times.show`` gives it, its speaker and text as
``persist.daemon.log.render`` gives them (what ``recent`` and ``thread`` print), and a colour per agent.

Plain values for the templates; nothing here reads the log.
"""

from __future__ import annotations

import re
import zlib
from typing import Any
from urllib.parse import urlencode

from persist.daemon.log import render, times
from persist.daemon.log.reader import Entry
from persist.daemon.log.record import is_system, iso_utc

SHORT = 400  # characters of a record's text in a listing (the message page shows it whole)
FOLDED = ("tool_call", "tool_result")  # shown folded in a conversation
PHASES = ("critique", "revision")  # marked where they begin in a conversation


def colour(agent: str | None) -> str:
    """A stable, legible colour for an agent's name (the same on every page and every run)."""
    if not agent:
        return "hsl(0 0% 45%)"
    hue = zlib.crc32(agent.encode()) % 360
    return f"hsl({hue} 62% 38%)"


def tick(epoch: float, span: float) -> str:
    """A time axis's tick: the time as every page shows times (``times.show``), as short as the span allows."""
    shown = times.show(iso_utc(int(epoch * 1e9)))  # 2026-11-24 20:22:01.123 +01:00
    return shown[11:23] if span < 60 else shown[11:19] if span < 86400 else shown[5:16]


def meta(rec: dict[str, Any]) -> dict[str, Any]:
    m = rec.get("meta")
    return m if isinstance(m, dict) else {}


def where(e: Entry) -> dict[str, Any]:
    """How pages name a record: its seq, and for one from the archive its node and epoch (``?node=…``) too;
    ``anchor`` (its element's id in a page), ``label`` (``#12``, ``alpha #12``), ``href`` (its message page) and
    ``at`` (the query that opens its thread there)."""
    node, epoch = getattr(e, "node", None), getattr(e, "epoch", "")
    if node is None:
        return {"node": None, "epoch": None, "where": "", "anchor": f"m{e.seq}", "label": f"#{e.seq}", "href": f"/message/{e.seq}",
                "at": f"at={e.seq}"}
    key = {"node": node, **({"epoch": epoch} if epoch else {})}
    anchor = f"m-{re.sub(r'[^A-Za-z0-9_]', '_', node)}-{e.seq}" + (f"-{zlib.crc32(epoch.encode()):08x}" if epoch else "")
    return {"node": node, "epoch": epoch, "where": urlencode(key), "anchor": anchor, "label": f"{node} #{e.seq}",
            "href": f"/message/{e.seq}?{urlencode(key)}", "at": urlencode({"at": e.seq, **key})}


def row(e: Entry) -> dict[str, Any]:
    """One record as a listing shows it."""
    m = meta(e.rec)
    text = render.payload_text(e.rec, e.line)
    sender = None if m.get("sender") is None else str(m["sender"])
    system = is_system(e.rec)
    return {
        "seq": e.seq,
        "time": times.show(e.rec.get("received_at")),
        "received_at": e.rec.get("received_at"),
        "topic": e.rec.get("topic", ""),
        "speaker": render.speaker(e.rec),
        "sender": sender,
        "recipient": None if m.get("recipient") is None else str(m["recipient"]),
        "thread": None if m.get("thread_id") is None else str(m["thread_id"]),
        "kind": str(m.get("kind") or ("system" if system else "other")),
        "tokens": m.get("tokens"),
        "text": text,
        "short": text if len(text) <= SHORT else text[:SHORT] + "…",
        "system": system,
        "colour": colour(None if system else sender),
        "binary": "payload_b64" in e.rec,
        **where(e),
    }
