"""Records as a conversation: markdown for people, plain text for an agent's prompt, JSON Lines for scripts.

Shared by ``restore --print``, ``export`` and (later) ``thread``, so a
conversation reads the same wherever it is printed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from persist.daemon.reader import Entry

TEXT_FIELDS = ("text", "content", "message", "body", "prompt", "response", "result")
FORMATS = ("markdown", "prompt", "json")


def payload_text(rec: dict[str, Any]) -> str:
    """The human-readable content of a record's payload."""
    if "payload_b64" in rec:
        return f"<{rec['meta'].get('bytes', '?')} bytes of binary>"
    payload = rec.get("payload", rec.get("payload_text", ""))
    if isinstance(payload, dict):
        for name in TEXT_FIELDS:
            if isinstance(payload.get(name), str):
                return payload[name]
    if isinstance(payload, str):
        return payload
    return orjson.dumps(payload).decode()


def speaker(rec: dict[str, Any]) -> str:
    meta = rec.get("meta", {})
    if rec.get("topic", "").startswith("$persist/"):
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
            yield f"### {speaker(e.rec)} · {e.rec['received_at']} · `{e.rec['topic']}`{tail}\n"
            yield payload_text(e.rec) + "\n"
        return
    yield "Conversation so far (oldest first):"
    for e in entries:
        yield f"[{e.rec['received_at'][:19]}] {speaker(e.rec)}: {payload_text(e.rec)}"
