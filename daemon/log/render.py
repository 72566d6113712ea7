"""Records as a conversation: markdown for people, plain text for an agent's prompt, JSON Lines for scripts,
and CSV (``export``).

Shared by ``restore --print``, ``export``, ``thread`` and ``persist-launch``, so a
conversation reads the same wherever it is printed, its times as ``times.show`` gives them (as ``recent``
prints them). It formats; it never chooses records (``select`` does).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from persist.daemon.log import envelope, times
from persist.daemon.log.envelope import TEXT_FIELDS
from persist.daemon.log.record import decode_frames, is_system

if TYPE_CHECKING:
    from persist.daemon.log.reader import Entry

FORMATS = ("markdown", "prompt", "json")
EXPORT_FORMATS = ("jsonl", "csv", "markdown")
CSV_COLUMNS = ["seq", "received_at", "topic", "sender", "recipient", "thread_id", "kind", "text"]


def payload_text(rec: dict[str, Any], line: bytes | None = None) -> str:
    """The human-readable content of a record's payload; never raises.

    A payload too deeply nested to re-serialise is shown as the exact text
    the publisher sent (taken from ``line``), or a note when there is no line.
    A record whose body is another frame (an envelope, see ``envelope``) shows that body.
    """
    body = envelope.body_text(rec)
    if body is not None:
        return body
    if "payload_b64" in rec:
        return f"<{rec.get('meta', {}).get('bytes', '?')} bytes of binary>"
    payload = rec.get("payload", rec.get("payload_text", ""))
    if isinstance(payload, dict):
        for name in TEXT_FIELDS:
            if isinstance(payload.get(name), str):
                return payload[name]
    if isinstance(payload, str):
        return payload
    if isinstance(rec.get("payload_text"), str):
        return rec["payload_text"]
    try:
        return orjson.dumps(payload).decode()
    except (orjson.JSONEncodeError, TypeError):
        return exact_payload(rec, line)


def exact_payload(rec: dict[str, Any], line: bytes | None) -> str:
    """The payload frame as the publisher sent it, as text."""
    try:
        frames = decode_frames(line, rec) if line is not None else []
    except (KeyError, TypeError, ValueError):
        frames = []
    if not frames:
        return f"<a payload of {rec.get('meta', {}).get('bytes', '?')} bytes, nested too deeply to show>"
    return frames[0 if rec.get("frames") == 1 else 1].decode("utf-8", "replace")


def speaker(rec: dict[str, Any]) -> str:
    meta = rec.get("meta", {})
    if is_system(rec):
        return "persist"
    who = str(meta.get("sender") or "?")
    if meta.get("recipient"):
        who += f" → {meta['recipient']}"
    return who


def lines(entries: Iterable[Entry], fmt: str) -> Iterator[str]:
    """The conversation in ``fmt`` (markdown, prompt or json), a chunk of text at a time."""
    if fmt == "json":
        for e in entries:
            yield e.line.decode().rstrip("\n")
        return
    if fmt == "markdown":
        yield "# Conversation\n"
        for e in entries:
            kind = e.rec.get("meta", {}).get("kind")
            tail = f" · {kind}" if kind and kind != "other" else ""
            yield f"### {speaker(e.rec)} · {times.show(e.rec['received_at'])} · `{e.rec['topic']}`{tail}\n"
            yield payload_text(e.rec, e.line) + "\n"
        return
    yield "Conversation so far (oldest first):"
    for e in entries:
        yield f"[{times.show(e.rec['received_at'])}] {speaker(e.rec)}: {payload_text(e.rec, e.line)}"


def export(entries: Iterable[Entry], fmt: str, out: TextIO) -> int:
    """Write ``entries`` to ``out`` as ``jsonl`` (the lines as on disk), ``csv`` or ``markdown``; how many."""
    n = 0

    def counted() -> Iterator[Entry]:
        nonlocal n
        for e in entries:
            n += 1
            yield e

    if fmt == "csv":
        import csv

        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for e in counted():
            meta = e.rec.get("meta", {})
            writer.writerow([e.seq, e.rec["received_at"], e.rec["topic"], meta.get("sender", ""),
                             meta.get("recipient", ""), meta.get("thread_id", ""), meta.get("kind", ""),
                             payload_text(e.rec, e.line)])
        return n
    for chunk in lines(counted(), "json" if fmt == "jsonl" else "markdown"):
        out.write(chunk + "\n")
    return n
