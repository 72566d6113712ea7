"""What a reader hands out: a record with its exact line (``Entry``), a whole line and where it lies
(``Line``), a segment by its stable name (``Segment``), and the parse of one line into a record.

Plain values; ``reader`` finds them on disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from persist.daemon.log.record import decode_frames

SEGMENT_NAME = re.compile(r"^seg-(\d{16,})\.jsonl$")


@dataclass(slots=True)
class Entry:
    """One record as read from disk: its parsed fields and its exact line."""

    rec: dict[str, Any]
    line: bytes
    path: Path

    @property
    def seq(self) -> int:
        return self.rec["seq"]

    def frames(self) -> list[bytes]:
        return decode_frames(self.line, self.rec)


@dataclass(frozen=True, slots=True)
class Segment:
    """A segment by its stable name (from its first seq) and where it was found."""

    name: str
    path: Path
    first_seq: int


@dataclass(frozen=True, slots=True)
class Line:
    """One whole line, the segment it belongs to, and its byte offset there."""

    segment: str
    path: Path
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def first_seq_of(name: str) -> int | None:
    """The first seq a segment name stands for (None for a name that is not a segment's)."""
    m = SEGMENT_NAME.match(name)
    return int(m.group(1)) if m else None


def entry(line: bytes, path: Path) -> Entry | None:
    """The record on ``line``; None for a line that is not a record (garbage, nested too deep to parse)."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return Entry(rec, line, path) if isinstance(rec, dict) and isinstance(rec.get("seq"), int) else None
