"""The record format: every message comes back byte for byte, and reads as the SPEC says."""

from __future__ import annotations

import hashlib
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persist.daemon.log.record import Message, decode_frames, encode, frames_sha256, uuid7


def roundtrip(frames: list[bytes]) -> tuple[dict, bytes]:
    msg = Message.from_frames(frames, time.time_ns())
    line = encode(msg, 7, {})
    assert line.endswith(b"\n") and line.count(b"\n") == 1, "one record is one line"
    rec = orjson.loads(line)
    assert decode_frames(line) == frames
    assert rec["meta"]["sha256"] == frames_sha256(frames)
    return rec, line


CASES = {
    "json object": [b"agent.chat", b'{"sender": "claude", "text": "caf\xc3\xa9 \\u00e9 1.0e3"}'],
    "json not an object": [b"t", b"[1, 2.50, null]"],
    "json scalar": [b"t", b"42"],
    "pretty json": [b"t", b'{\n  "a": 1\n}\n'],
    "text not json": [b"t", "hello wörld".encode()],
    "invalid utf-8": [b"t", b"\xff\xfe\x00binary"],
    "empty payload": [b"t", b""],
    "one frame": [b'{"only": "payload"}'],
    "one frame binary": [b"\x00\x01"],
    "five frames": [b"t", b"{}", b"x", b"\x00", b""],
    "binary topic": [b"\xff\xc0topic\\x", b"{}"],
    "topic with backslash": [b"a\\b", b"{}"],
    "nan is not json": [b"t", b'{"a": NaN}'],
    "carriage return": [b"t", b'{"a":\r1}'],
}


@pytest.mark.parametrize("frames", CASES.values(), ids=CASES.keys())
def test_every_kind_of_message_comes_back_exactly(frames):
    roundtrip(frames)


def test_json_payload_is_readable_json_and_written_verbatim():
    payload = b'{"b": 1,  "a": [1.50, "\\u00e9"]}'
    rec, line = roundtrip([b"agent.chat", payload])
    assert rec["payload"] == {"b": 1, "a": [1.5, "é"]}
    assert payload in line, "the publisher's own JSON text is in the line, greppable"
    assert "payload_text" not in rec and "payload_b64" not in rec


def test_non_json_fields_follow_the_spec():
    assert roundtrip([b"t", b"plain words"])[0]["payload_text"] == "plain words"
    assert roundtrip([b"t", b"\xff"])[0]["payload_b64"] == "/w=="
    rec, _ = roundtrip([b"t", b"{}", b"\x01", b"two"])
    assert rec["extra_b64"] == ["AQ==", "dHdv"]
    rec, _ = roundtrip([b"solo"])
    assert rec["topic"] == "" and rec["frames"] == 1


def test_sha256_is_checkable_by_anyone():
    frames = [b"topic", b"payload"]
    h = hashlib.sha256()
    for f in frames:
        h.update(len(f).to_bytes(8, "big") + f)
    assert roundtrip(frames)[0]["meta"]["sha256"] == h.hexdigest()


def test_sixteen_mib_payload():
    big = b'{"blob": "' + b"x" * (16 * 1024 * 1024) + b'"}'
    rec, _ = roundtrip([b"big", big])
    assert rec["meta"]["bytes"] == len(big)


def test_enrichers_cannot_spoil_the_checksum():
    msg = Message.from_frames([b"t", b"{}"], time.time_ns())
    line = encode(msg, 1, {"bytes": 99, "sha256": "forged"})
    rec = orjson.loads(line)
    assert rec["meta"]["bytes"] == 2 and rec["meta"]["sha256"] == frames_sha256([b"t", b"{}"])


def test_uuid7_shape_unique_and_in_record_order():
    import uuid

    ordered = [uuid7(1_700_000_000_000).decode() for _ in range(1000)] + [uuid7(1_700_000_000_001).decode()]
    assert len(set(ordered)) == 1001
    assert ordered[:1000] == sorted(ordered[:1000]), "ids of one millisecond count up"
    assert ordered[-1] > ordered[0], "a later millisecond sorts later"
    ids = set(ordered[:1000])
    for u in map(uuid.UUID, ids):
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert u.int >> 80 == 1_700_000_000_000


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=6))
def test_property_arbitrary_frames_roundtrip(frames):
    roundtrip(frames)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), json_values, st.sampled_from([None, 2, "\t"]))
def test_property_json_payloads_roundtrip(topic, value, indent):
    import json

    payload = json.dumps(value, indent=indent, ensure_ascii=False).encode()
    rec, _ = roundtrip([topic.encode(), payload])
    assert rec["payload"] == value
