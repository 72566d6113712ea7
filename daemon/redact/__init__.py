"""Redaction (SPEC section 14): secrets replaced before a line is written, and the record says so.

``Redactor.message(msg)`` is the one step on the writer path (journal:
receive → redact → enrich → append). It looks at every frame: the topic, the
payload, each extra frame. A frame is first put through the *gate*, a check
that costs about what copying the frame costs: every built-in secret is a run
of at least ``TOKEN`` token characters, or holds ``@`` (a password in a URL)
or ``~`` (an Azure client secret), so one ``bytes.translate`` and two
substring searches clear a message with none. Rules from the config or a
gitleaks file are gated by their own keywords (one substring search each, on
the lowercased frame), as gitleaks does. A message past the gate (a uuid, a
path or a hash gets there too) is shortlisted once: only the rules whose
keywords appear in it, lowercased, go on (``rules_for``). A JSON frame that
holds a ``\\u`` escape is seen by the gate and the shortlist with its strings
decoded after it (``gh\\u0070_…`` is ``ghp_…``, ``\\u0040`` an ``@``). Only then is a
frame decoded and searched string by string, rule by rule (each rule's
keywords in that string, then its regex).

What is replaced, and how a record stays a record:

* a JSON frame is searched string by string (decoded, so escapes are no
  hiding place; a value is seen with its key, so ``"aws_secret_access_key":
  "…"`` is found; keys are searched too, and a secret used as a key is
  written back redacted, ``#2``, ``#3``… added when two keys would then be
  one) and written back as JSON (``orjson``); UTF-8 text is
  searched as text, anything else byte by byte (as Latin-1): JSON stays JSON,
  text stays text;
* each secret becomes ``[REDACTED:<rule id>]``; ``meta.redacted`` lists
  ``{"rule", "at", "fp"}`` per secret (``at``: ``topic``, ``payload``,
  ``payload.key[2]``, ``extra[0]``…, at most 200 characters), never the secret;
* ``fp`` is a keyed fingerprint: the first 12 hex digits of
  HMAC-SHA256(``<log-dir>/redact.key``, secret). The same secret has the same
  fingerprint across records (which key leaked where, which to rotate) and
  ``persist-cli redact --check`` prints it for a candidate; without the key,
  which stays in the log dir and in no record, export, checkpoint or archive,
  it reveals nothing, where a plain hash of a short secret is undone by trying
  every one;
* the record's frames are the redacted ones: ``meta.sha256`` and
  ``meta.bytes`` are theirs (``verify`` still catches an edit), and
  ``meta.redacted`` is what says the record is not the published bytes
  (``record.is_exact``).

It never raises out of ``message``: a frame it cannot search is recorded and
noted (``meta.redact_error``), never dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from persist.daemon.log.record import NOT_JSON, TOO_DEEP_JSON, Message
from persist.daemon.redact.rules import Allowlist, Rule, RuleError, builtin, from_gitleaks, make

TOKEN = 20  # characters: the shortest built-in secret (an AWS access key id)
MAX_NOTES = 100  # meta.redacted entries kept per record; a "more" entry counts the rest
KEY_FILE = "redact.key"
KEY_BYTES = 32
AT_MAX = 200  # characters of a note's "at" path; a longer one is cut, ending in "…"
_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-+/=%\\"
# every byte to b"x" (a token character), b"y" (@ or ~: gates of their own) or b" "
_GATE = bytes(ord("x") if bytes([i]) in _TOKEN_CHARS else ord("y") if bytes([i]) in b"@~" else 32 for i in range(256))
_RUN = b"x" * TOKEN


def _strings(value: Any) -> list[str]:
    """Every string in a decoded JSON value, keys included (depth-first, without recursion)."""
    out, todo = [], [value]
    while todo:
        v = todo.pop()
        kind = type(v)
        if kind is str:
            out.append(v)
        elif kind is dict:
            out.extend(k for k in v if type(k) is str)
            todo.extend(v.values())
        elif kind is list:
            todo.extend(v)
    return out


def _at(path: str) -> str:
    """``path`` as a note's ``at`` says it: at most ``AT_MAX`` characters (a 100 KB key is not copied per hit)."""
    return path if len(path) <= AT_MAX else path[: AT_MAX - 1] + "…"


def marker(rule_id: str) -> str:
    return f"[REDACTED:{rule_id}]"


@dataclass
class Found:
    """What ``Redactor.message`` did: the message as it is to be recorded, and what was replaced."""

    message: Message
    notes: list[dict[str, Any]]


def load_rules(cfg: Any) -> tuple[list[Rule], Allowlist | None]:
    """The rules a ``[redact]`` section asks for: built-ins, its own ``rules``, and its ``rules_file``."""
    rules = builtin(cfg.disable_rules, cfg.enable_rules) + user_rules(cfg.rules)
    allow = None
    if cfg.rules_file:
        more, allow = from_gitleaks(Path(cfg.rules_file).expanduser(), "redact.rules_file")
        rules.extend(more)
    return rules, allow


def user_rules(tables: list[dict[str, Any]]) -> list[Rule]:
    """The ``[[redact.rules]]`` of a config (``RuleError`` naming the key of one that cannot be used)."""
    rules = []
    for i, table in enumerate(tables):
        rule = make(table, f"redact.rules[{i}]")
        if rule is None:
            raise RuleError(f"redact.rules[{i}].regex", "every rule needs a regex")
        rules.append(rule)
    return rules


class KeyFileError(ValueError):
    """``redact.key`` is there but is not a fingerprint key (the message names the file and the way out)."""


def fingerprint_key(root: Path, create: bool = True) -> bytes | None:
    """The log dir's fingerprint key (``KEY_BYTES`` random bytes in ``redact.key``, 0600), made on first use.

    Made whole or not at all: written and fsynced under a temporary name, then linked to ``redact.key``
    (atomic, and refused if another process made one meanwhile: that one is used) and the directory
    fsynced, so a crash never leaves an empty key. A key of another length is ``KeyFileError``: an empty
    key would make every fingerprint an unkeyed hash."""
    from persist.daemon.log.fsutil import fsync_dir, open_private, write_all

    path = root / KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        if not create:
            return None
    key = os.urandom(KEY_BYTES)
    tmp = root / f".{KEY_FILE}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        try:
            write_all(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:  # made meanwhile by another process: use that one
            return _read_key(path)
    finally:
        os.unlink(tmp)
    fsync_dir(root)
    return key


def _read_key(path: Path) -> bytes:
    from persist.daemon.log.fsutil import read_private

    key = read_private(path)
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte fingerprint key (a crash while "
                           "it was made?); if no record has a fingerprint made with it yet, remove it and a new one "
                           "is made")
    return key


class Redactor:
    """Finds and replaces secrets in a message's frames (see the module docstring)."""

    def __init__(self, rules: list[Rule], allow: Allowlist | None = None, key: bytes | None = None) -> None:
        self.rules = rules
        self.allow = allow
        self.key = key
        self.gated = [r for r in rules if r.gate]  # built-ins: the token/@/~ gate covers them
        self.keyed = [r for r in rules if not r.gate and r.keywords]  # gated by their own keywords
        self.always = any(not r.gate and not r.keywords for r in rules)  # a rule with neither runs on every frame
        self.keywords = tuple({k.encode() for r in self.keyed for k in r.keywords})
        self.only_gated = not self.always and not self.keyed  # then a short string without @ or ~ holds none
        self._keyed_bytes = [(r, tuple(k.encode() for k in r.keywords)) for r in rules]

    # --- the gate ----------------------------------------------------------------

    def worth_a_look(self, frame: bytes) -> bool:
        """False only when no rule can match ``frame``: the cheap check every message goes through."""
        if self.always:
            return True
        if self.gated:
            if len(frame) >= TOKEN:
                shape = frame.translate(_GATE)
                if shape.find(_RUN) >= 0 or shape.find(b"y") >= 0:
                    return True
            elif frame.find(b"@") >= 0 or frame.find(b"~") >= 0:
                return True
        if self.keywords:
            lower = frame.lower()
            return any(lower.find(k) >= 0 for k in self.keywords)
        return False

    # --- a message ---------------------------------------------------------------

    def message(self, msg: Message) -> Found | None:
        """``msg`` with its secrets replaced and what was replaced; None when nothing was."""
        frames = views = msg.frames
        look = self.worth_a_look
        for f in frames:
            # a JSON escape (gh\u0070_…) hides a secret's shape from the gate and its keywords; a one-byte search
            # first (memchr), as a two-byte one costs four times as much and this runs for every frame
            if b"\\" in f and b"\\u" in f:
                views = self._views(msg)
                break
        if self.only_gated:  # the built-ins alone: the gate inlined, as this is every message's cost
            for f in views:
                if len(f) >= TOKEN:
                    shape = f.translate(_GATE)
                    if _RUN in shape or b"y" in shape:
                        break
                elif b"@" in f or b"~" in f:
                    break
            else:
                return None
        else:
            for f in views:
                if look(f):
                    break
            else:
                return None
        rules = self.rules_for(views)
        if not rules:
            return None
        notes: list[dict[str, Any]] = []
        out = list(frames)
        payload_at = 0 if len(frames) == 1 else 1
        for i, frame in enumerate(frames):
            if not look(views[i]):
                continue
            where = "topic" if i < payload_at else "payload" if i == payload_at else f"extra[{i - payload_at - 1}]"
            value = msg.value if i == payload_at else NOT_JSON
            try:
                out[i] = self.frame(frame, where, notes, value, rules)
            except Exception as exc:  # a frame that cannot be searched is kept and noted, never dropped
                notes.append({"rule": None, "at": where, "error": repr(exc)[:200]})
        if not notes:
            return None
        if len(notes) > MAX_NOTES:
            notes = notes[:MAX_NOTES] + [{"more": len(notes) - MAX_NOTES}]
        return Found(Message.from_frames(out, msg.received_ns), notes)

    def _views(self, msg: Message) -> list[bytes]:
        """What the gate and the shortlist look at: each frame, and for a JSON frame holding a ``\\u`` escape,
        its strings (keys and values) decoded after it, so an escaped secret is seen as it will be searched."""
        frames = msg.frames
        payload_at = 0 if len(frames) == 1 else 1
        out = list(frames)
        for i, f in enumerate(frames):
            if i < payload_at or b"\\u" not in f or f[:1] not in (b"{", b"[", b'"'):
                continue
            value = msg.value if i == payload_at else NOT_JSON
            if value is NOT_JSON:
                try:
                    value = orjson.loads(f)
                except orjson.JSONDecodeError:
                    continue
            if value is TOO_DEEP_JSON:
                continue
            strings = "\x00".join(_strings(value))
            out[i] = f + b"\x00" + strings.encode("utf-8", "surrogatepass")
        return out

    def rules_for(self, frames: list[bytes]) -> list[Rule]:
        """The rules that may find something in ``frames``: those whose keywords appear (lowercased) in one of
        them, and those without keywords. One pass over the message, so a frame past the gate for a harmless
        reason (a uuid, a path, a hash) costs the keyword checks once, not once per string per rule."""
        lower = b"\x00".join(frames).lower()
        found = []
        for rule, keywords in self._keyed_bytes:
            if not keywords:
                found.append(rule)
                continue
            for k in keywords:
                if k in lower:
                    found.append(rule)
                    break
        return found

    def frame(self, data: bytes, where: str, notes: list[dict[str, Any]], value: Any = NOT_JSON,
              rules: list[Rule] | None = None) -> bytes:
        """``data`` with its secrets replaced (JSON as JSON, text as text, other bytes byte for byte)."""
        if value is NOT_JSON and data[:1] in (b"{", b"[", b'"') and where != "topic":
            try:
                value = orjson.loads(data)
            except orjson.JSONDecodeError:
                value = NOT_JSON
        if value is not NOT_JSON and value is not TOO_DEEP_JSON:
            found: list[dict[str, Any]] = []
            new = self._json(value, where, found, None, rules)
            if found:
                try:
                    encoded = orjson.dumps(new)
                except orjson.JSONEncodeError:  # numbers or nesting orjson will not write back: search as text
                    pass
                else:
                    notes.extend(found)
                    return encoded
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = data.decode("latin-1"), "latin-1"
        new_text = self.text(text, where, notes, None, rules)
        return data if new_text is text else new_text.encode(encoding)

    def json_value(self, value: Any, where: str, notes: list[dict[str, Any]]) -> Any:
        """A decoded JSON ``value`` with the secrets in its strings replaced (``where``: how notes name it)."""
        return self._json(value, where, notes, None)

    def _json(self, value: Any, where: str, notes: list[dict[str, Any]], key: str | None,
              rules: list[Rule] | None = None) -> Any:
        kind = type(value)
        if kind is str:
            return self.text(value, where, notes, key, rules)
        if kind is dict:
            out: dict[Any, Any] = {}
            for k, v in value.items():
                name, mark = k, len(notes)
                if type(k) is str:
                    name = self.text(k, where, notes, None, rules)
                if name is not k:  # a secret used as a key: written back redacted; it stays a key of its own
                    base, n = name, 2
                    while name in out or name in value:
                        name, n = f"{base}#{n}", n + 1
                    for note in notes[mark:]:
                        note["at"] = _at(f"{where}.{name}")
                out[name] = self._json(v, _at(f"{where}.{name}"), notes, k, rules)
            return out
        if kind is list:
            return [self._json(v, _at(f"{where}[{i}]"), notes, None, rules) for i, v in enumerate(value)]
        return value

    def text(self, text: str, where: str, notes: list[dict[str, Any]], key: str | None = None,
             rules: list[Rule] | None = None) -> str:
        """``text`` with each secret replaced by its marker; the same object when nothing was found.

        ``key``: the JSON key the text is the value of, seen before it (``"key": "text"``) by rules
        that recognise a secret by its name.
        """
        merged = self.find(text, key, rules)
        if not merged:
            return text
        parts, at = [], 0
        for start, end, ident in merged:
            parts += [text[at:start], marker(ident)]
            notes.append({"rule": ident, "at": where, "fp": self.fingerprint(text[start:end])})
            at = end
        parts.append(text[at:])
        return "".join(parts)

    def find(self, text: str, key: str | None = None, rules: list[Rule] | None = None) -> list[list[Any]]:
        """``[start, end, rule id]`` of each secret in ``text``, in order, overlapping finds merged (named by the
        first rule that found it). ``key``: as in ``text``; ``rules``: a shortlist (``rules_for``), else all."""
        if self.only_gated and len(text) < TOKEN and "@" not in text and "~" not in text:
            return []  # most strings of a JSON message: no built-in secret fits in them
        prefix = f'"{key}": "' if key is not None else ""
        context = f"{prefix}{text}\"" if prefix else text
        if not self.worth_a_look(context.encode("utf-8", "surrogatepass")):
            return []
        lower = context.lower()
        spans: list[tuple[int, int, int, str]] = []
        for order, rule in enumerate(self.rules if rules is None else rules):
            if rule.keywords:
                for k in rule.keywords:  # a loop, not any(generator): it runs per rule per string
                    if k in lower:
                        break
                else:
                    continue
            for start, end in rule.secrets(context):
                start, end = max(start, len(prefix)) - len(prefix), min(end, len(prefix) + len(text)) - len(prefix)
                if start < end and not self._allowed(text, start, end):
                    spans.append((start, order, end, rule.id))
        spans.sort()
        merged: list[list[Any]] = []
        for start, _, end, ident in spans:
            if merged and start < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
                continue
            merged.append([start, end, ident])
        return merged

    def _allowed(self, text: str, start: int, end: int) -> bool:
        if self.allow is None:
            return False
        secret = text[start:end]
        return self.allow.allows(secret, secret, text)

    def fingerprint(self, secret: str) -> str | None:
        """The keyed fingerprint of ``secret`` (None without a key)."""
        if self.key is None:
            return None
        return hmac.new(self.key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:12]


def from_config(cfg: Any, root: Path | None) -> Redactor | None:
    """The redactor a config asks for (None when ``[redact] enabled`` is false), its key from ``root``."""
    if not cfg.redact.enabled:
        return None
    rules, allow = load_rules(cfg.redact)
    return Redactor(rules, allow, fingerprint_key(root) if root is not None else None)


Step = Callable[[Message], "Found | None"]
