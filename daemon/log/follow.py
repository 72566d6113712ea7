"""Following the log as it is written (``tail -f``), across rotations.

A watchdog observer wakes the reader when the log dir changes (with a
one-second poll as a safety net). The reader keeps its file open, so when the
active segment is renamed into ``segments/`` it first finishes the old file
through its descriptor, then opens the new active segment from the start. It
only ever yields whole lines, and it never takes a lock: the writer is never
slowed by a follower.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from typing import BinaryIO

from persist.daemon.log.fsutil import open_reading
from persist.daemon.log.layout import LogDir
from persist.daemon.log.reader import Entry, entry
from persist.daemon.log.watch import watch


def _inode(path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def follow(log: LogDir, after_seq: int, poll: float = 1.0) -> Iterator[Entry]:
    """Every record with ``seq > after_seq`` written from now on; runs until the caller stops."""
    wake: queue.Queue = queue.Queue()
    observer = watch(str(log.root), lambda _event: wake.put(None))
    f: BinaryIO | None = None
    pending = b""
    try:
        while True:
            if f is None and log.active.exists():
                f = open_reading(log.active)
                pending = b""
            if f is not None:
                rotated = _inode(log.active) != os.fstat(f.fileno()).st_ino  # before the read: no write is missed
                data = pending + f.read()
                cut = data.rfind(b"\n") + 1
                pending = data[cut:]
                for line in data[:cut].splitlines(keepends=True):
                    e = entry(line, log.active)  # None for a line that is not a record: skipped, never fatal
                    if e is not None and e.seq > after_seq:
                        after_seq = e.seq
                        yield e
                if rotated:
                    f.close()  # the old file was read to its end above
                    f = None
                    continue
            try:
                wake.get(timeout=poll)
                while not wake.empty():
                    wake.get_nowait()
            except queue.Empty:
                pass
    finally:
        observer.stop()
        if f is not None:
            f.close()
        observer.join(timeout=2)
