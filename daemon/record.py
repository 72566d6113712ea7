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
  as an 8-byte big-endian integer, so anyone can check a record.

It never touches files: ``store`` writes the lines, ``reader`` reads them.
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

VERSION = 1
SYSTEM_PREFIX = "$persist/"
NOT_JSON = object()  # Message.value when the payload is not JSON
_random_bytes = random.Random().randbytes


@dataclass(slots=True)
class Message:
    """One message as it came off the bus, with its payload parsed once."""

    frames: list[bytes]
    received_ns: int
    topic: str = ""
    payload: bytes = b""
    value: Any = NOT_JSON
    text: str | None = field(default=None)  # payload as text, computed on demand

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
        return cls(frames, received_ns, topic_bytes.decode("utf-8", "backslashreplace"), payload, value)

    def payload_text(self) -> str:
        """The payload as text for keyword rules (undecodable bytes escaped)."""
        if self.text is None:
            self.text = self.payload.decode("utf-8", "backslashreplace")
        return self.text


def frames_sha256(frames: list[bytes]) -> str:
    """SHA-256 over the frames, each prefixed by its 8-byte big-endian length."""
    h = hashlib.sha256()
    for frame in frames:
        h.update(len(frame).to_bytes(8, "big"))
        h.update(frame)
    return h.hexdigest()


_id_prefix: tuple[int, str] = (-1, "")
_ts_cache: tuple[int, str] = (-1, "")
_ts_last: tuple[int, str] = (-1, "")


def uuid7(unix_ms: int) -> str:
    """A UUIDv7 string: 48 bits of milliseconds, then 72 random bits (variant nibble 8).

    Ids need uniqueness, not secrecy: a PRNG seeded from os.urandom, since a
    getrandom() call per record was half the daemon's time.
    """
    global _id_prefix
    if _id_prefix[0] != unix_ms:
        h = f"{unix_ms:012x}"
        _id_prefix = (unix_ms, f"{h[:8]}-{h[8:]}-7")
    r = _random_bytes(9).hex()
    return f"{_id_prefix[1]}{r[:3]}-8{r[3:6]}-{r[6:]}"


def iso_utc(ns: int) -> str:
    """``2026-11-24T19:22:01.123456Z`` for a time in nanoseconds since the epoch."""
    global _ts_cache, _ts_last
    if _ts_last[0] == ns:  # a whole batch shares one receive time
        return _ts_last[1]
    sec, rem = divmod(ns, 1_000_000_000)
    if _ts_cache[0] != sec:
        _ts_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    _ts_last = (ns, f"{_ts_cache[1]}.{rem // 1000:06d}Z")
    return _ts_last[1]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode(msg: Message, seq: int, meta: dict[str, Any]) -> bytes:
    """The record line (ending in ``\\n``) for ``msg`` with sequence number ``seq``.

    ``meta`` is what enrichment produced; ``bytes`` and ``sha256`` are set here
    so that no enricher can make a record unverifiable.
    """
    payload = msg.payload
    meta["bytes"] = len(payload)
    meta["sha256"] = frames_sha256(msg.frames)
    rec: dict[str, Any] = {
        "v": VERSION,
        "seq": seq,
        "id": uuid7(msg.received_ns // 1_000_000),
        "received_at": iso_utc(msg.received_ns),
        "topic": msg.topic,
    }
    frames = msg.frames
    if len(frames) == 1:
        rec["frames"] = 1
    elif "\\" in msg.topic and msg.topic.encode() != frames[0]:
        rec["topic_b64"] = _b64(frames[0])
    if len(frames) > 2:
        rec["extra_b64"] = [_b64(f) for f in frames[2:]]
    rec["meta"] = meta
    if msg.value is not NOT_JSON:
        if b"\n" not in payload and b"\r" not in payload:
            # Verbatim: the publisher's own JSON text, last in the line.
            return b"".join((orjson.dumps(rec)[:-1], b',"payload":', payload, b"}\n"))
        rec["payload"] = msg.value
        rec["payload_text"] = payload.decode("utf-8")
    else:
        try:
            rec["payload_text"] = payload.decode("utf-8")
        except UnicodeDecodeError:
            rec["payload_b64"] = _b64(payload)
    return orjson.dumps(rec) + b"\n"


def system_message(topic: str, payload: dict[str, Any], received_ns: int | None = None) -> Message:
    """A ``$persist/...`` message the daemon records about itself."""
    body = orjson.dumps(payload)
    frames = [(SYSTEM_PREFIX + topic).encode(), body]
    return Message(frames, received_ns or time.time_ns(), frames[0].decode(), body, payload)


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


def is_system(rec: dict[str, Any]) -> bool:
    """True for records the daemon wrote about itself."""
    return rec.get("topic", "").startswith(SYSTEM_PREFIX)
