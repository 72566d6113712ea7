"""Reading a log directory: records forward from the start, backward from the tail.

The one read path for the daemon (resuming ``seq``) and every ``persist-cli``
command. Readers only ever see whole lines: bytes after the last ``\\n`` of a
file are a line still being written (or torn) and are never returned. Readers
open files read-only and take no locks, so they never block the writer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from persist.daemon.record import decode_frames
from persist.daemon.store import LogDir, last_newline

CHUNK = 1 << 20


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


def lines_forward(path: Path, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` for every whole line of ``path`` from ``offset`` on."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        pending = b""
        while chunk := f.read(CHUNK):
            data = pending + chunk
            start = 0
            while (nl := data.find(b"\n", start)) >= 0:
                yield offset + start, data[start : nl + 1]
                start = nl + 1
            offset += start
            pending = data[start:]


def lines_backward(path: Path) -> Iterator[bytes]:
    """Every whole line of ``path``, newest first, reading from the end."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        pos = last_newline(fd, os.fstat(fd).st_size)  # whole lines only
        carry = b""  # the start of a line cut by the previous chunk
        while pos > 0:
            start = max(0, pos - CHUNK)
            parts = (os.pread(fd, pos - start, start) + carry).split(b"\n")
            parts.pop()  # the empty string after the final newline
            pos = start
            if pos > 0:
                carry = parts[0] + b"\n"
                del parts[0]
            for part in reversed(parts):
                yield part + b"\n"
    finally:
        os.close(fd)


def _entry(line: bytes, path: Path) -> Entry | None:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return Entry(rec, line, path) if isinstance(rec, dict) else None


def records(log: LogDir, after_seq: int = 0) -> Iterator[Entry]:
    """Every record with ``seq > after_seq``, in seq order, across segments."""
    for path in log.segment_files():
        for _, line in lines_forward(path):
            entry = _entry(line, path)
            if entry is not None and entry.seq > after_seq:
                yield entry


def records_backward(log: LogDir) -> Iterator[Entry]:
    """Every record, newest first: instant on a huge log."""
    for path in reversed(log.segment_files()):
        for line in lines_backward(path):
            entry = _entry(line, path)
            if entry is not None:
                yield entry


def last_record(log: LogDir) -> Entry | None:
    """The newest whole record in the log, or None for an empty log."""
    return next(records_backward(log), None)


def first_record(path: Path) -> Entry | None:
    """The oldest whole record of one segment file."""
    for _, line in lines_forward(path):
        return _entry(line, path)
    return None
