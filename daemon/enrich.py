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


def field_enricher(meta_key: str, names: list[str]) -> Enricher:
    """Copy the first present payload field of ``names`` into ``meta[meta_key]``."""

    def enrich(msg: Message) -> dict[str, Any] | None:
        value = _first(msg.value, names)
        return None if value is None else {meta_key: value}

    enrich.__name__ = meta_key
    return enrich


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
    found: list[Enricher] = [
        field_enricher("sender", cfg.sender_fields),
        field_enricher("recipient", cfg.recipient_fields),
        field_enricher("thread_id", cfg.thread_fields),
        field_enricher("parent_id", cfg.parent_fields),
        kind_enricher(cfg.kind_fields),
        field_enricher("tier", cfg.tier_fields),
        field_enricher("sender_seq", [cfg.sender_seq_field]),
        tokens,
    ]
    if cfg.tags:
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
    chosen = [e for e in builtin(cfg) if getattr(e, "__name__", "") not in cfg.disable]
    return Pipeline(chosen + plugins(cfg.disable))
