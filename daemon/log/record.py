"""The record schema (SPEC section 4): a bus message in, one JSON line out, and back.

This module is the only place that knows how frames map to record fields:

* frame 0 is the topic and frame 1 the payload when a message has two or more
  frames; a one-frame message is a payload with topic ``""`` (``"frames": 1``);
* a payload that is single-line UTF-8 JSON is written **verbatim** as the last
  field of the line, so its original bytes are ``line[-2 - meta.bytes:-2]``;
* JSON with raw line breaks keeps its decoded value in ``payload`` and its exact
  text in ``payload_text``; other UTF-8 goes to ``payload_text`` and anything
  else to ``payload_b64``; a topic that is not UTF-8 goes to ``topic_b64``;
  frames after the payload go to ``extra_b64``;
* ``meta.sha256`` is the SHA-256 over every frame, each preceded by its length
  as an 8-byte big-endian integer, so anyone can check a record;
* JSON nested deeper than ``MAX_DEPTH`` levels is kept as its exact text in
  ``payload_text`` (``meta.payload_note`` says why): every reader can parse and
  re-serialise every line this module writes;
* a bus message whose topic starts with ``$persist/`` gets ``"origin":"bus"``,
  so that nothing ever takes it for one of the daemon's own records.

It never touches files: ``store`` writes the lines, ``reader`` reads them.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

VERSION = 1
SYSTEM_PREFIX = "$persist/"
NOT_JSON = object()  # Message.value when the payload is not JSON
TOO_DEEP_JSON = object()  # Message.value when the payload is JSON nested deeper than MAX_DEPTH
MAX_DEPTH = 200  # deeper JSON is kept as text: orjson re-serialises 254 levels, and readers add a few
TOO_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels, kept as text"
_DEPTH_PROBE = 255 - MAX_DEPTH - 1  # wrapping a value this many times more fails orjson.dumps iff it is too deep
TOPIC_CACHE_BYTES = 1 << 20  # encoded topics kept for reuse, counted in bytes: topics come from publishers
TOPIC_CACHE_ITEM = 1 << 10  # a longer topic is encoded each time, never kept
_random_bits = random.Random().getrandbits


@dataclass(slots=True)
class Message:
    """One message as it came off the bus, with its payload parsed once."""

    frames: list[bytes]
    received_ns: int
    topic: str = ""
    payload: bytes = b""
    value: Any = NOT_JSON
    text: str | None = field(default=None)  # payload as text, computed on demand
    own: bool = False  # written by the daemon about itself, never by a publisher
    envelope: Any = None  # an ``envelope.Envelope`` when a profile says which frame is the body

    @classmethod
    def from_frames(cls, frames: list[bytes], received_ns: int) -> Message:
        if len(frames) == 1:
            topic_bytes, payload = b"", frames[0]
        else:
            topic_bytes, payload = frames[0], frames[1]
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            value = NOT_JSON
        else:
            deep = len(payload) > 2 * MAX_DEPTH and payload.count(b"[") + payload.count(b"{") > MAX_DEPTH
            if deep and too_deep(value):  # (each level opens and closes: a shorter text cannot nest that deep)
                value = TOO_DEEP_JSON
        return cls(frames, received_ns, topic_bytes.decode("utf-8", "backslashreplace"), payload, value)

    def payload_text(self) -> str:
        """The payload as text for keyword rules (undecodable bytes escaped)."""
        if self.text is None:
            self.text = self.payload.decode("utf-8", "backslashreplace")
        return self.text


def too_deep(value: Any) -> bool:
    """True if ``value`` nests deeper than ``MAX_DEPTH`` (only asked when its text has that many brackets)."""
    for _ in range(_DEPTH_PROBE):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return True
    return False


def frames_sha256(frames: list[bytes]) -> str:
    """SHA-256 over the frames, each prefixed by its 8-byte big-endian length."""
    if len(frames) == 2:  # topic and payload, nearly every message: one buffer, one call
        topic, payload = frames
        return _sha256(b"%b%b%b%b" % (_length(len(topic)), topic, _length(len(payload)), payload)).hexdigest()
    h = _sha256()
    for frame in frames:
        h.update(_length(len(frame)))
        h.update(frame)
    return h.hexdigest()


_sha256 = hashlib.sha256
_length = struct.Struct(">Q").pack


_ts_cache: tuple[int, str] = (-1, "")
_ts_last: tuple[int, bytes] = (-1, b"")
_id_ms, _id_head, _id_next = -1, b"", 0


def uuid7(unix_ms: int) -> bytes:
    """A UUIDv7 as ASCII text: 48 bits of milliseconds, version 7, variant 8, 72 bits that never repeat.

    RFC 9562 section 6.2, method 2 (monotonic random): the first id of each
    millisecond takes 72 random bits, later ones in the same millisecond count
    up from them, so ids are unique and sort in record order. The bits come
    from a PRNG seeded from os.urandom: ids need uniqueness, not secrecy, and a
    getrandom() call per record was half the daemon's time.
    """
    global _id_ms, _id_head, _id_next
    if unix_ms != _id_ms:
        h, r = f"{unix_ms:012x}", _random_bits(72)
        _id_ms, _id_next = unix_ms, r & 0xFFFF_FFFF_FFFF
        _id_head = f"{h[:8]}-{h[8:]}-7{r >> 60:03x}-8{(r >> 48) & 0xFFF:03x}-".encode()
    else:
        _id_next = (_id_next + 1) & 0xFFFF_FFFF_FFFF
    return b"%b%012x" % (_id_head, _id_next)


def iso_utc(ns: int) -> str:
    """``2026-11-24T19:22:01.123456Z`` for a time in nanoseconds since the epoch."""
    global _ts_cache
    sec, rem = divmod(ns, 1_000_000_000)
    if _ts_cache[0] != sec:
        _ts_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{_ts_cache[1]}.{rem // 1000:06d}Z"


def _received_at(ns: int) -> bytes:
    """``iso_utc(ns)`` as the line's bytes; a whole batch shares one receive time, so the last is kept."""
    global _ts_last
    if _ts_last[0] != ns:
        _ts_last = (ns, iso_utc(ns).encode())
    return _ts_last[1]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _json_string(text: str) -> bytes:
    """``text`` as a JSON string literal; short topics repeat, so each is encoded once.

    The cache is bounded in bytes, whatever topics publishers make up.
    """
    global _json_strings_bytes
    found = _json_strings.get(text)
    if found is None:
        found = orjson.dumps(text)
        if len(found) <= TOPIC_CACHE_ITEM:
            if _json_strings_bytes + len(found) > TOPIC_CACHE_BYTES:
                _json_strings.clear()
                _json_strings_bytes = 0
            _json_strings[text] = found
            _json_strings_bytes += len(found)
    return found


_json_strings: dict[str, bytes] = {}
_json_strings_bytes = 0
_LINE = b'{"v":%d,"seq":%d,"id":"%b","received_at":"%b","topic":%b%b,"meta":%b,%b%b}\n'


def encode(msg: Message, seq: int, meta: dict[str, Any], sha256: str | None = None) -> bytes:
    """The record line (ending in ``\\n``) for ``msg`` with sequence number ``seq``.

    ``meta`` is what enrichment produced; ``bytes`` and ``sha256`` are set here
    so that no enricher can make a record unverifiable (``sha256`` is passed
    in when the caller has already hashed these frames). The line is put
    together from its parts: the payload, when it can be, is copied verbatim,
    never re-serialised.
    """
    payload, frames = msg.payload, msg.frames
    meta["bytes"] = len(payload)
    meta["sha256"] = sha256 or frames_sha256(frames)
    framing = b""  # what a message of other than two frames, or with a non-UTF-8 topic, needs
    if len(frames) != 2:
        framing = b',"frames":1' if len(frames) == 1 else b',"extra_b64":' + orjson.dumps([_b64(f) for f in frames[2:]])
    if "\\" in msg.topic and msg.topic.encode() != frames[0]:
        framing += b',"topic_b64":"' + _b64(frames[0]).encode() + b'"'
    if msg.topic.startswith(SYSTEM_PREFIX) and not msg.own:
        framing += b',"origin":"bus"'
    if msg.value is TOO_DEEP_JSON:
        meta["payload_note"] = TOO_DEEP
        last, payload = b"", orjson.dumps(_payload_fields(msg))[1:-1]
    elif msg.value is not NOT_JSON and b"\n" not in payload and b"\r" not in payload:
        last = b'"payload":'  # verbatim: the publisher's own JSON text, last
    else:
        last, payload = b"", orjson.dumps(_payload_fields(msg))[1:-1]
    return _LINE % (VERSION, seq, uuid7(msg.received_ns // 1_000_000), _received_at(msg.received_ns),
                    _json_string(msg.topic), framing, orjson.dumps(meta), last, payload)


def _payload_fields(msg: Message) -> dict[str, Any]:
    """The payload's fields when it cannot be written verbatim (SPEC section 4)."""
    if msg.value is not NOT_JSON and msg.value is not TOO_DEEP_JSON:  # JSON with raw line breaks: value and text
        return {"payload": msg.value, "payload_text": msg.payload.decode("utf-8")}
    try:
        return {"payload_text": msg.payload.decode("utf-8")}
    except UnicodeDecodeError:
        return {"payload_b64": _b64(msg.payload)}


def system_message(topic: str, payload: dict[str, Any], received_ns: int | None = None) -> Message:
    """A ``$persist/...`` message the daemon records about itself."""
    body = orjson.dumps(payload)
    frames = [(SYSTEM_PREFIX + topic).encode(), body]
    return Message(frames, received_ns or time.time_ns(), frames[0].decode(), body, payload, own=True)


def decode_frames(line: bytes, rec: dict[str, Any] | None = None) -> list[bytes]:
    """The exact frames a publisher sent, from one record line."""
    if rec is None:
        rec = orjson.loads(line)
    if "payload_b64" in rec:
        payload = base64.b64decode(rec["payload_b64"])
    elif "payload_text" in rec:
        payload = rec["payload_text"].encode("utf-8")
    else:
        end = len(line) - (2 if line.endswith(b"\n") else 1)  # before the closing brace
        payload = bytes(line[end - rec["meta"]["bytes"] : end])
    if rec.get("frames") == 1:
        return [payload]
    if "topic_b64" in rec:
        topic = base64.b64decode(rec["topic_b64"])
    else:
        topic = rec["topic"].encode("utf-8")
    return [topic, payload, *(base64.b64decode(x) for x in rec.get("extra_b64", ()))]


def is_exact(rec: dict[str, Any]) -> bool:
    """False for a record whose frames are not the bytes published: secrets in it were redacted (``meta.redacted``,
    SPEC section 14). Its ``meta.sha256`` and ``meta.bytes`` are those of the frames as recorded."""
    meta = rec.get("meta")
    return not (isinstance(meta, dict) and "redacted" in meta)


def is_system(rec: dict[str, Any]) -> bool:
    """True for records the daemon wrote about itself (never a bus message on a ``$persist/`` topic)."""
    return rec.get("topic", "").startswith(SYSTEM_PREFIX) and "origin" not in rec
