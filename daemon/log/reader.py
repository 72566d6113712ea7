"""Reading a log directory: the one segment resolver, records forward and backward.

The one read path for the daemon (resuming ``seq``) and every ``persist-cli``
command. It owns how a reader finds segments while the writer rotates them:

* a segment is named by its first seq (``seg-<16 digits>.jsonl``), closed in
  ``segments/`` or still active as ``current_session.jsonl``; the active file
  is named by the first seq read *from the descriptor opened*, never by a path
  looked at before or after;
* forward reads go by descriptor: after reading the active file to its end,
  the reader checks whether ``current_session.jsonl`` is still that inode; if
  it was rotated the file is final, so the rest is read from the same
  descriptor, then the reader goes on with the segments beyond it;
* backward reads open the active file first, then take the closed segments
  whose first seq is smaller.

Readers only ever see whole lines (bytes after the last ``\\n`` are a line
still being written, or torn), open files read-only and take no locks, so they
never block the writer. A line that is not JSON never stops a reader.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson

from persist.daemon.log.entry import Entry, Line, Segment, entry, first_seq_of  # noqa: F401 (the reader's API)
from persist.daemon.log.fsutil import last_newline, open_private, open_reading
from persist.daemon.log.layout import LogDir, segment_name

CHUNK = 1 << 20
FIRST_CHUNK = 1 << 16  # the first read at either end of a file (dozens of lines); each next one doubles, up to CHUNK
SEQ_PREFIX = re.compile(rb'^\{"v":\d+,"seq":(\d+),')  # how every record line starts, even one too deep to parse


def closed_segments(log: LogDir) -> list[Segment]:
    """Closed segments in ``segments/``, oldest first."""
    try:
        names = os.listdir(log.segments)
    except FileNotFoundError:
        return []
    found = [Segment(n, log.segments / n, first) for n in names if (first := first_seq_of(n)) is not None]
    return sorted(found, key=lambda s: s.first_seq)


def _first_line(fd: int) -> bytes | None:
    pos, data, size = 0, b"", FIRST_CHUNK
    while (chunk := os.pread(fd, size, pos)):
        data += chunk
        if (nl := data.find(b"\n")) >= 0:
            return data[: nl + 1]
        pos += len(chunk)
        size = min(2 * size, CHUNK)
    return None


def _seq(line: bytes | None) -> int | None:
    if line is None:
        return None
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        m = SEQ_PREFIX.match(line)
        return int(m.group(1)) if m else None
    seq = rec.get("seq") if isinstance(rec, dict) else None
    return seq if isinstance(seq, int) else None


def open_active(log: LogDir) -> tuple[int, int | None] | None:
    """``(fd, first seq read from that fd)`` of the active segment; None if there is none right now."""
    try:
        fd = open_private(log.active, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return fd, _seq(_first_line(fd))
    except BaseException:
        os.close(fd)
        raise


def segments(log: LogDir) -> list[Segment]:
    """Every segment, oldest first; the active one under the name it will rotate to."""
    opened = open_active(log)  # first: a rotation after this shows in the listing below
    closed = closed_segments(log)
    if opened is not None:
        fd, first = opened
        os.close(fd)
        if first is not None and all(s.first_seq < first for s in closed):
            closed.append(Segment(segment_name(first), log.active, first))
    return closed


def sizes(log: LogDir) -> list[tuple[Segment, int]]:
    """Every segment with its size now (one deleted or rotated meanwhile is left out: for progress and totals)."""
    out = []
    for seg in segments(log):
        try:
            out.append((seg, seg.path.stat().st_size))
        except FileNotFoundError:
            pass
    return out


def open_segment(log: LogDir, name: str) -> BinaryIO | None:
    """The segment ``name`` opened for reading, wherever it lives now; None if it is gone."""
    for _ in range(2):  # a rotation between the two looks moves it to segments/
        try:
            return open_reading(log.segments / name)
        except FileNotFoundError:
            pass
        opened = open_active(log)
        if opened is not None:
            fd, first = opened
            if first is not None and segment_name(first) == name:
                return os.fdopen(fd, "rb")
            os.close(fd)
    return None


def extents(log: LogDir) -> Iterator[tuple[Segment, int, int]]:
    """Each segment with the bytes of its whole lines and its size, both read from one descriptor."""
    for seg in segments(log):
        f = open_segment(log, seg.name)
        if f is None:
            continue
        with f:
            size = os.fstat(f.fileno()).st_size
            yield seg, last_newline(f.fileno(), size), size


class _Tail:
    """Whole lines read forward from one descriptor, carrying a partial last line between reads."""

    def __init__(self, f: BinaryIO, segment: str, path: Path, offset: int) -> None:
        self.f, self.segment, self.path, self.offset, self.pending = f, segment, path, offset, b""
        f.seek(offset)

    def drain(self) -> Iterator[Line]:
        while chunk := self.f.read(CHUNK):
            data = self.pending + chunk
            start = 0
            while (nl := data.find(b"\n", start)) >= 0:
                yield Line(self.segment, self.path, self.offset + start, data[start : nl + 1])
                start = nl + 1
            self.offset += start
            self.pending = data[start:]


def lines(log: LogDir, start: tuple[str | None, int] = (None, 0), after_seq: int = 0) -> Iterator[Line]:
    """Every whole line in log order, from byte ``start[1]`` of segment ``start[0]`` on.

    Segments that end before ``after_seq`` are skipped unread. Safe against a
    rotation at any moment: no segment is skipped, none is named wrongly.
    """
    begin = first_seq_of(start[0]) if start[0] else None
    done = -1 if begin is None else begin - 1  # first seq of the last segment read to its end

    def offset_in(first: int) -> int:
        return start[1] if first == begin else 0

    while True:
        closed = [s for s in closed_segments(log) if s.first_seq > done]
        if closed:
            for i, seg in enumerate(closed):
                if i + 1 == len(closed) or closed[i + 1].first_seq > after_seq + 1:
                    try:
                        f = open_reading(seg.path)
                    except FileNotFoundError:  # storage.retention deleted it meanwhile
                        continue
                    with f:
                        yield from _Tail(f, seg.name, seg.path, offset_in(seg.first_seq)).drain()
                done = seg.first_seq
            continue
        opened = open_active(log)
        if opened is None or opened[1] is None or opened[1] <= done:
            if opened is not None:
                os.close(opened[0])
            if any(s.first_seq > done for s in closed_segments(log)):
                continue  # rotated between the listing and the open
            return
        fd, first = opened
        if any(done < s.first_seq < first for s in closed_segments(log)):
            os.close(fd)  # a segment rotated in between: read it first
            continue
        with os.fdopen(fd, "rb") as f:
            tail = _Tail(f, segment_name(first), log.active, offset_in(first))
            yield from tail.drain()
            try:
                rotated = os.stat(log.active).st_ino != os.fstat(fd).st_ino
            except FileNotFoundError:
                rotated = True
            if not rotated:
                return
            yield from tail.drain()  # rotated: the file is final, read its rest
        done = first


def _lines_backward_fd(fd: int) -> Iterator[bytes]:
    pos = last_newline(fd, os.fstat(fd).st_size)  # whole lines only
    carry = b""  # the start of a line cut by the previous chunk
    size = FIRST_CHUNK
    while pos > 0:
        start = max(0, pos - size)
        size = min(2 * size, CHUNK)
        parts = (os.pread(fd, pos - start, start) + carry).split(b"\n")
        parts.pop()  # the empty string after the final newline
        pos = start
        if pos > 0:
            carry = parts[0] + b"\n"
            del parts[0]
        for part in reversed(parts):
            yield part + b"\n"


def lines_backward(path: Path) -> Iterator[bytes]:
    """Every whole line of one file, newest first, reading from the end."""
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        yield from _lines_backward_fd(fd)
    finally:
        os.close(fd)


def lines_forward(path: Path, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` for every whole line of one file from ``offset`` on."""
    try:
        f = open_reading(path)
    except FileNotFoundError:
        return
    with f:
        for line in _Tail(f, path.name, path, offset).drain():
            yield line.offset, line.data


def records(log: LogDir, after_seq: int = 0) -> Iterator[Entry]:
    """Every record with ``seq > after_seq``, in seq order, across segments."""
    for line in lines(log, after_seq=after_seq):
        e = entry(line.data, line.path)
        if e is not None and e.seq > after_seq:
            yield e


def records_backward(log: LogDir) -> Iterator[Entry]:
    """Every record, newest first: instant on a huge log."""
    opened = open_active(log)
    first = None
    if opened is not None:
        fd, first = opened
        try:
            for line in _lines_backward_fd(fd):
                if (e := entry(line, log.active)) is not None:
                    yield e
        finally:
            os.close(fd)
    for seg in reversed(closed_segments(log)):
        if first is None or seg.first_seq < first:
            for line in lines_backward(seg.path):
                if (e := entry(line, seg.path)) is not None:
                    yield e


def last_record(log: LogDir) -> Entry | None:
    """The newest whole record in the log, or None for an empty log."""
    return next(records_backward(log), None)


def first_record(path: Path) -> Entry | None:
    """The oldest whole record of one segment file."""
    for _, line in lines_forward(path):
        return entry(line, path)
    return None
