"""``verify``: every line whole JSON, seq continuous, every checkpoint's hashes and chain hold.

Reads everything once; reports each problem as one line naming the file, the
line or the checkpoint. A trailing line still being written is not a problem
(readers never see it); a torn line in the middle of a file is.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from persist.daemon import checkpoints, reader
from persist.daemon.store import LogDir


def verify(log: LogDir, progress: Callable[[int], None] | None = None, limit: int = 50) -> tuple[list[str], int]:
    """``(problems, records)`` for the whole log dir."""
    problems: list[str] = []
    expected: int | None = None
    records = 0
    for path in log.segment_files():
        for lineno, (offset, line) in enumerate(reader.lines_forward(path), 1):
            if progress:
                progress(len(line))
            try:
                rec = orjson.loads(line)
                seq = rec["seq"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                problems.append(f"{path.name}:{lineno} (byte {offset}): not a whole record")
                continue
            records += 1
            if expected is not None and seq != expected:
                why = "repeats" if seq < expected else f"skips {seq - expected}"
                problems.append(f"{path.name}:{lineno}: seq {seq} {why} (expected {expected})")
            expected = seq + 1
            if len(problems) >= limit:
                return problems + [f"... stopped after {limit} problems"], records
    problems += checkpoints.verify(log)
    return problems, records
