"""Envelopes (SPEC section 15): which frame of a message is its body, and which are headers.

A record keeps every frame byte for byte (``record``); a *profile* only says
what a person means by "the message", so that enrichment, search and the
commands that show text work on the body and its headers:

* ``jupyter``, built in, recognised by its ``<IDS|MSG>`` delimiter:
  ``[topic, <IDS|MSG>, signature, header, parent_header, metadata, content,
  buffers…]``; the body is ``content``, the kind comes from
  ``header.msg_type``, the thread is the request an output answers
  (``parent_header.msg_id``), the sender is the kernel's session;
* ``header-body``: a JSON header frame, then the body, for the topics a
  config profile names with ``use = "header-body"``;
* custom profiles from config (``[[profiles]]``): matched by topic prefix or
  by a frame's exact value; the body frame by index; header fields by dotted
  path (``header.from``, ``body.meta.thread``) onto sender, recipient,
  thread_id, parent_id, kind, tier.

``match`` runs on every message, so a message that matches no profile costs
a comparison or two. What a profile found is written into ``meta``
(``profile``, ``body``: the body's frame index, and the mapped fields), so
readers need no config to find the body again.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

DELIMITER = b"<IDS|MSG>"
TEXT_FIELDS = ("text", "content", "message", "body", "prompt", "response", "result")  # a body's text, by name
FIELDS = ("sender", "recipient", "thread_id", "parent_id", "kind", "tier")
JUPYTER_KINDS = {
    "execute_request": "request", "execute_input": "request", "inspect_request": "request",
    "complete_request": "request", "execute_reply": "response", "execute_result": "response",
    "stream": "response", "display_data": "response", "update_display_data": "response",
    "error": "error", "status": "heartbeat", "comm_open": "broadcast", "comm_msg": "broadcast",
    "comm_close": "broadcast", "clear_output": "other",
}  # fmt: skip


@dataclass(frozen=True)
class Profile:
    """How to read one kind of envelope (see the module docstring)."""

    name: str
    body: int  # the body's frame index
    headers: dict[str, int] = field(default_factory=dict)  # name → frame index of a JSON header
    fields: dict[str, str] = field(default_factory=dict)  # meta key → dotted path from a header name or "body"
    topic: str | None = None  # match: the topic starts with this
    frame: int | None = None  # match: frame ``frame`` is exactly ``value``
    value: bytes | None = None
    kinds: dict[str, str] = field(default_factory=dict)  # the kind field's word → one of enrich.KINDS


@dataclass
class Envelope:
    """What a profile found in one message."""

    profile: str
    body: int  # frame index
    value: Any  # the body parsed as JSON, or None
    fields: dict[str, Any]  # meta fields the headers gave


JUPYTER = Profile("jupyter", body=6, headers={"header": 3, "parent": 4, "metadata": 5},
                  fields={"kind": "header.msg_type", "thread_id": "parent.msg_id", "parent_id": "parent.msg_id",
                          "sender": "header.session", "recipient": "parent.session", "msg_type": "header.msg_type"},
                  kinds=JUPYTER_KINDS)
HEADER_BODY = Profile("header-body", body=2, headers={"header": 1},
                      fields={k: f"header.{k}" for k in FIELDS})


def preset(use: str) -> Profile:
    """A built-in profile a config profile can start from (``use = "header-body"``)."""
    return {"jupyter": JUPYTER, "header-body": HEADER_BODY}[use]


class Profiles:
    """The profiles in force: jupyter always, then the configured ones in order."""

    def __init__(self, custom: list[Profile] | None = None) -> None:
        self.custom = list(custom or [])

    def match(self, frames: list[bytes], topic: str) -> Envelope | None:
        """The envelope of ``frames`` under the first profile that matches, or None."""
        if len(frames) > 5:
            if frames[1] == DELIMITER:
                return read(JUPYTER, frames)
            if frames[0] == DELIMITER:  # no topic frame: every index one to the left
                return read(JUPYTER, frames, -1)
        for profile in self.custom:
            if profile.topic is not None:
                if not topic.startswith(profile.topic):
                    continue
            elif profile.frame is None or profile.frame >= len(frames) or frames[profile.frame] != profile.value:
                continue
            return read(profile, frames)
        return None


def read(profile: Profile, frames: list[bytes], offset: int = 0) -> Envelope | None:
    """Parse ``profile``'s headers and body out of ``frames``; None if the body frame is missing."""
    body = profile.body + offset
    if not 0 <= body < len(frames):
        return None
    parts = {"body": _json(frames[body])}
    for name, index in profile.headers.items():
        if 0 <= index + offset < len(frames):
            parts[name] = _json(frames[index + offset])
    found = {}
    for key, path in profile.fields.items():
        value = lookup(parts, path)
        if value is not None and not isinstance(value, (dict, list)):
            found[key] = profile.kinds.get(value, value) if key == "kind" and isinstance(value, str) else value
    return Envelope(profile.name, body, parts["body"], found)


def lookup(parts: dict[str, Any], path: str) -> Any:
    """``header.a.b`` → parts["header"]["a"]["b"]; None where anything is missing."""
    value: Any = parts
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _json(frame: bytes) -> Any:
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None


PROFILE_KEYS = {"name", "use", "topic", "frame", "value", "body", "headers", "fields", "kinds"}


def from_config(table: dict[str, Any]) -> Profile:
    """A ``[[enrich.profiles]]`` table as a Profile; ValueError naming the key at fault."""
    unknown = set(table) - PROFILE_KEYS
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown key (use {', '.join(sorted(PROFILE_KEYS))})")
    if not isinstance(table.get("name"), str) or not table["name"]:
        raise ValueError("name: every profile needs a name")
    base = preset(table["use"]) if table.get("use") in ("jupyter", "header-body") else None
    if "use" in table and base is None:
        raise ValueError("use: must be jupyter or header-body")
    matchers = ("topic" in table) + ("frame" in table or "value" in table)
    if matchers != 1 or ("frame" in table) != ("value" in table):
        raise ValueError("topic: say how messages are recognised: topic = \"prefix\", or frame = N with value = \"…\"")
    body = table.get("body", base.body if base else None)
    checks = {"topic": (str, table.get("topic", "")), "frame": (int, table.get("frame", 0)),
              "value": (str, table.get("value", "")), "body": (int, body)}
    for key, (kind, value) in checks.items():
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise ValueError(f"{key}: must be {'a frame index (0 or more)' if kind is int else 'text'}, got {value!r}")
    for key in ("headers", "fields", "kinds"):
        value = table.get(key, {})
        want = int if key == "headers" else str
        if not isinstance(value, dict) or not all(isinstance(v, want) and not isinstance(v, bool) for v in value.values()):
            raise ValueError(f"{key}: must be a table of {'frame indexes' if want is int else 'text'}")
    bad = set(table.get("fields", {})) - set(FIELDS)
    if bad:
        raise ValueError(f"fields.{sorted(bad)[0]}: not a field (use {', '.join(FIELDS)})")
    return Profile(
        table["name"], body,
        headers=table.get("headers", base.headers if base else {}),
        fields={**(base.fields if base else {}), **table.get("fields", {})},
        topic=table.get("topic"), frame=table.get("frame"),
        value=table["value"].encode() if "value" in table else None,
        kinds={**(base.kinds if base else {}), **table.get("kinds", {})})


# --- reading a recorded body back as text ---------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
HEX_HEAD = 8  # bytes of a binary frame shown in hex


def recorded_frame(rec: dict[str, Any], index: int) -> bytes | None:
    """Frame ``index`` of a record, from the record alone (the topic, the payload, or an extra frame)."""
    try:
        if index >= 2:
            return base64.b64decode(rec["extra_b64"][index - 2])
        if index == 1 and rec.get("frames") != 1:
            if "payload_b64" in rec:
                return base64.b64decode(rec["payload_b64"])
            return rec["payload_text"].encode() if "payload_text" in rec else orjson.dumps(rec.get("payload"))
        return base64.b64decode(rec["topic_b64"]) if "topic_b64" in rec else rec.get("topic", "").encode()
    except (KeyError, IndexError, TypeError, ValueError, orjson.JSONEncodeError):
        return None


def body_text(rec: dict[str, Any]) -> str | None:
    """What a person means by the message of a record a profile read (None if none did):
    the body as text, and any binary frames after it as what they are."""
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    index = meta.get("body")
    if type(index) is not int or "profile" not in meta:
        return None
    frame = recorded_frame(rec, index)
    if frame is None:
        return None
    body = _json(frame)
    text = jupyter_text(meta.get("msg_type"), body) if meta["profile"] == "jupyter" else None
    if text is None:
        text = _plain(body) if body is not None else frame.decode("utf-8", "replace")
    buffers = [recorded_frame(rec, i) for i in range(index + 1, 2 + len(rec.get("extra_b64", [])))]
    return text + "".join(f"\n{describe_binary(b)}" for b in buffers if b is not None)


def jupyter_text(msg_type: Any, content: Any) -> str | None:
    """A Jupyter message's content as a person reads it, by its type."""
    if not isinstance(content, dict):
        return None
    if msg_type in ("execute_input", "execute_request"):
        return str(content.get("code", ""))
    if msg_type == "stream":
        return str(content.get("text", ""))
    if msg_type == "error":
        trace = "\n".join(ANSI.sub("", str(t)) for t in content.get("traceback", []) if isinstance(t, str))
        return f"{content.get('ename')}: {content.get('evalue')}" + (f"\n{trace}" if trace else "")
    if msg_type in ("display_data", "execute_result", "update_display_data") and isinstance(content.get("data"), dict):
        data = content["data"]
        shown = [str(data["text/plain"])] if isinstance(data.get("text/plain"), str) else []
        shown += [f"[{mime}, {len(str(v)) * 3 // 4} bytes]" for mime, v in data.items() if mime != "text/plain"]
        return "\n".join(shown)
    if msg_type == "status":
        return f"status: {content.get('execution_state')}"
    return None


def describe_binary(data: bytes) -> str:
    """A binary frame as what it is: its size, its type when known, and a short hex head."""
    kind = next((name for magic, name in MAGIC if data.startswith(magic)), None)
    try:
        data.decode("utf-8")
        kind = kind or "text"
    except UnicodeDecodeError:
        kind = kind or "binary"
    head = data[:HEX_HEAD].hex(" ") + (" …" if len(data) > HEX_HEAD else "")
    return f"[{kind}, {len(data)} bytes: {head}]"


MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
         (b"%PDF", "application/pdf"), (b"PK\x03\x04", "zip"), (b"\x1f\x8b", "gzip"))


def _plain(value: Any) -> str:
    """A JSON body as text: its text field if it has one, else compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for name in TEXT_FIELDS:
            if isinstance(value.get(name), str):
                return value[name]
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return "<a body nested too deeply to show>"


def json_frames(rec: dict[str, Any]) -> list[Any]:
    """The JSON values of a record's extra frames (after the payload), for search."""
    values = []
    for index in range(2, 2 + len(rec.get("extra_b64", ()))):
        frame = recorded_frame(rec, index)
        if frame and frame[:1] in (b"{", b"["):
            values.append(_json(frame))
    return values
