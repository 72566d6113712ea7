"""Enrichment (SPEC section 7): small functions that each add a few ``meta`` fields.

An enricher is a callable ``(Message) -> dict | None``. ``pipeline()`` composes
the built-ins (configured from ``[enrich]``) with third-party enrichers from the
``persist.enrichers`` entry-point group, once at start-up. An enricher that
raises costs nothing but a note in ``meta.enrich_error``: the record is kept.
Enrichers read the payload the bus module parsed once; they never re-parse it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

import structlog

from persist.daemon.config import EnrichSection
from persist.daemon.record import Message

Enricher = Callable[[Message], Mapping[str, Any] | None]
KINDS = (
    "request", "response", "broadcast", "tool_call", "tool_result",
    "critique", "revision", "error", "heartbeat", "other",
)  # fmt: skip
KIND_SYNONYMS = {
    "req": "request", "query": "request", "question": "request", "ask": "request",
    "resp": "response", "reply": "response", "answer": "response", "result": "response",
    "tool": "tool_call", "call": "tool_call", "tool_use": "tool_call", "function_call": "tool_call",
    "tool_response": "tool_result", "function_result": "tool_result",
    "review": "critique", "feedback": "critique", "revise": "revision", "fix": "revision",
    "ping": "heartbeat", "keepalive": "heartbeat", "announce": "broadcast", "event": "broadcast",
}  # fmt: skip
log = structlog.get_logger("persist.enrich")


def _first(payload: Any, names: list[str]) -> Any:
    """The first of ``names`` present in a JSON-object payload (dotted names reach inside)."""
    if not isinstance(payload, dict):
        return None
    for name in names:
        value: Any = payload
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return value
    return None


def fields_enricher(fields: dict[str, list[str]]) -> Enricher:
    """Copy, for each ``meta_key: names``, the first present payload field into meta.

    One function for all of them: plain names are a dict lookup each, dotted
    names reach inside nested objects.
    """
    plain = [(key, tuple(names)) for key, names in fields.items() if not any("." in n for n in names)]
    dotted = [(key, names) for key, names in fields.items() if any("." in n for n in names)]

    def payload_fields(msg: Message) -> dict[str, Any] | None:
        payload = msg.value
        if type(payload) is not dict:
            return None
        found = {}
        for key, names in plain:
            for name in names:
                value = payload.get(name)
                if value is not None:
                    found[key] = value
                    break
        for key, names in dotted:
            value = _first(payload, names)
            if value is not None:
                found[key] = value
        return found

    return payload_fields


def kind_enricher(names: list[str]) -> Enricher:
    """``meta.kind``: one of KINDS, from a payload field or from the topic."""

    def kind(msg: Message) -> dict[str, Any]:
        raw = _first(msg.value, names)
        if isinstance(raw, str):
            word = raw.strip().lower().replace("-", "_")
            return {"kind": word if word in KINDS else KIND_SYNONYMS.get(word, "other")}
        topic = msg.topic.lower()
        for word in KINDS[:-1]:
            if word in topic:
                return {"kind": word}
        if isinstance(msg.value, dict) and "error" in msg.value:
            return {"kind": "error"}
        return {"kind": "other"}

    return kind


def tag_enricher(rules: list[dict]) -> Enricher:
    """``meta.tags``: names of the configured rules whose keyword or regex matches."""
    compiled = [
        (r["name"], [k.lower() for k in r.get("keywords", [])], re.compile(r["regex"]) if r.get("regex") else None)
        for r in rules
    ]

    def tags(msg: Message) -> dict[str, Any] | None:
        text = msg.payload_text()
        lower = text.lower()
        found = [
            name
            for name, words, regex in compiled
            if any(w in lower for w in words) or (regex is not None and regex.search(text))
        ]
        return {"tags": found} if found else None

    return tags


def tokens(msg: Message) -> dict[str, Any]:
    """``meta.tokens``: a cheap token estimate (about four bytes a token)."""
    return {"tokens": (len(msg.payload) + 3) // 4}


def builtin(cfg: EnrichSection) -> list[Enricher]:
    """The built-in enrichers, less those named in ``enrich.disable``."""
    fields = {
        "sender": cfg.sender_fields,
        "recipient": cfg.recipient_fields,
        "thread_id": cfg.thread_fields,
        "parent_id": cfg.parent_fields,
        "tier": cfg.tier_fields,
        "sender_seq": [cfg.sender_seq_field],
    }
    found = [fields_enricher({k: v for k, v in fields.items() if k not in cfg.disable})]
    if "kind" not in cfg.disable:
        found.append(kind_enricher(cfg.kind_fields))
    if "tokens" not in cfg.disable:
        found.append(tokens)
    if cfg.tags and "tags" not in cfg.disable:
        found.append(tag_enricher(cfg.tags))
    return found


def plugins(disabled: list[str]) -> list[Enricher]:
    """Third-party enrichers from the ``persist.enrichers`` entry-point group."""
    found = []
    for ep in entry_points(group="persist.enrichers"):
        if ep.name in disabled:
            continue
        try:
            found.append(ep.load())
        except Exception as exc:  # a broken plugin must not stop recording
            log.error("enricher_load_failed", enricher=ep.name, error=repr(exc))
    return found


class Pipeline:
    """Runs every enricher on a message and returns the merged ``meta``."""

    def __init__(self, enrichers: list[Enricher]) -> None:
        self.enrichers = enrichers

    def __call__(self, msg: Message) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for enricher in self.enrichers:
            try:
                added = enricher(msg)
                if added:
                    meta.update(added)
            except Exception as exc:
                errors = meta.setdefault("enrich_error", [])
                errors.append(f"{getattr(enricher, '__name__', enricher)}: {exc!r}"[:300])
        return meta


def pipeline(cfg: EnrichSection) -> Pipeline:
    """Built-ins then plugins, minus those named in ``enrich.disable``."""
    return Pipeline(builtin(cfg) + plugins(cfg.disable))
