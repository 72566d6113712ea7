"""Enrichment (SPEC section 7): what each record's ``meta`` says about its message.

An enricher is a callable ``(Message) -> dict | None``. ``pipeline()`` composes
the built-ins (configured from ``[enrich]``, run as one pass over the payload:
they are on every message's path) with third-party enrichers from the
``persist.enrichers`` entry-point group, once at start-up. An enricher that
raises, or returns what is not a JSON object, costs nothing but a note in
``meta.enrich_error``: the record and every other enricher's fields are kept.
Enrichers read the payload the bus module parsed once; they never re-parse it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

import orjson

from persist.daemon.config import EnrichSection
from persist.daemon.log import envelope
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.record import Message

Enricher = Callable[[Message], Mapping[str, Any] | None]
KINDS = (
    "request", "response", "broadcast", "tool_call", "tool_result",
    "critique", "revision", "error", "heartbeat", "other",
)  # fmt: skip
KIND_WORDS = frozenset(KINDS)
KIND_SYNONYMS = {
    "req": "request", "query": "request", "question": "request", "ask": "request",
    "resp": "response", "reply": "response", "answer": "response", "result": "response",
    "tool": "tool_call", "call": "tool_call", "tool_use": "tool_call", "function_call": "tool_call",
    "tool_response": "tool_result", "function_result": "tool_result",
    "review": "critique", "feedback": "critique", "revise": "revision", "fix": "revision",
    "ping": "heartbeat", "keepalive": "heartbeat", "announce": "broadcast", "event": "broadcast",
}  # fmt: skip
log = get_logger("persist.enrich")


def _first(payload: Any, names: tuple[str, ...]) -> Any:
    """The first of ``names`` present in a JSON-object payload (dotted names reach inside)."""
    for name in names:
        value: Any = payload
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return value
    return None


def kind_of(raw: Any, msg: Message) -> str:
    """One of KINDS: the payload's own word (or a synonym), else a hint in the topic, else ``other``."""
    if isinstance(raw, str):
        word = raw.strip().lower().replace("-", "_")
        return word if word in KINDS else KIND_SYNONYMS.get(word, "other")
    topic = msg.topic.lower()
    for word in KINDS[:-1]:
        if word in topic:
            return word
    if type(msg.value) is dict and "error" in msg.value:
        return "error"
    return "other"


def builtin(cfg: EnrichSection) -> Enricher:
    """The built-in enrichers (less those in ``enrich.disable``) as one pass over a message.

    Payload fields (``meta_key: names``, the first present wins) are one dict
    lookup per name; dotted names reach inside nested objects. ``kind`` is read
    from its fields, then normalised; ``tokens`` is about four bytes a token;
    ``tags`` are the names of the rules whose keyword or regex matches.
    """
    fields = {
        "sender": cfg.sender_fields,
        "recipient": cfg.recipient_fields,
        "thread_id": cfg.thread_fields,
        "parent_id": cfg.parent_fields,
        "tier": cfg.tier_fields,
        "sender_seq": [cfg.sender_seq_field],
        "kind": cfg.kind_fields,
    }
    wanted = {key: tuple(names) for key, names in fields.items() if key not in cfg.disable}
    plain = tuple((key, names) for key, names in wanted.items() if not any("." in n for n in names))
    dotted = tuple((key, names) for key, names in wanted.items() if any("." in n for n in names))
    profiles = envelope.Profiles([envelope.from_config(t) for t in cfg.profiles])
    matching = "profiles" not in cfg.disable
    always_match = matching and bool(profiles.custom)  # else only a message of over five frames can be Jupyter's
    with_kind = "kind" in wanted
    with_tokens = "tokens" not in cfg.disable
    rules = [] if "tags" in cfg.disable else [
        (r["name"], [k.lower() for k in r.get("keywords", [])], re.compile(r["regex"]) if r.get("regex") else None)
        for r in cfg.tags
    ]

    def builtins(msg: Message) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        payload = msg.value
        env = profiles.match(msg.frames, msg.topic) if always_match or (matching and len(msg.frames) > 5) else None
        if env is not None:  # the body is another frame: fields come from it and its headers
            msg.envelope, payload = env, env.value
            msg.text = msg.frames[env.body].decode("utf-8", "backslashreplace")
        if type(payload) is dict:
            get = payload.get
            for key, names in plain:
                for name in names:
                    value = get(name)
                    if value is not None:
                        meta[key] = value
                        break
            for key, names in dotted:
                value = _first(payload, names)
                if value is not None:
                    meta[key] = value
        if env is not None:
            meta.update((k, v) for k, v in env.fields.items() if k not in cfg.disable)
            meta["profile"], meta["body"] = env.profile, env.body
        if with_kind:
            kind = meta.get("kind")
            meta["kind"] = kind if type(kind) is str and kind in KIND_WORDS else kind_of(kind, msg)  # the usual case
        if with_tokens:
            meta["tokens"] = (len(msg.payload if env is None else msg.frames[env.body]) + 3) // 4
        if rules:
            text = msg.payload_text()
            lower = text.lower()
            tags = [name for name, words, regex in rules
                    if any(w in lower for w in words) or (regex is not None and regex.search(text))]
            if tags:
                meta["tags"] = tags
        return meta

    return builtins


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
    """Runs the built-ins, then each plugin, on a message; returns the merged ``meta``."""

    def __init__(self, builtins: Enricher, more: list[Enricher]) -> None:
        self.builtins = builtins
        self.more = more

    def __call__(self, msg: Message) -> dict[str, Any]:
        try:
            meta = self.builtins(msg)  # a fresh dict: the others add to it
        except Exception as exc:
            meta = {"enrich_error": [_error_note(self.builtins, exc)]}
        for enricher in self.more:
            try:
                added = enricher(msg)
                if added:
                    orjson.dumps(added)  # what cannot be written is refused here, never the whole meta
                    meta.update(added)
            except Exception as exc:
                meta.setdefault("enrich_error", []).append(_error_note(enricher, exc))
        return meta


def _error_note(enricher: Enricher, exc: Exception) -> str:
    return f"{getattr(enricher, '__name__', enricher)}: {exc!r}"[:300]


def pipeline(cfg: EnrichSection) -> Pipeline:
    """Built-ins then plugins, minus those named in ``enrich.disable``."""
    return Pipeline(builtin(cfg), plugins(cfg.disable))
