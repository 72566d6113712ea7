"""How far the shipper got, as a small file the daemon and ``persist-cli status`` read without a database.

The shipper writes ``metadata_index/shipper.json`` (atomically, at most once a
second, and whenever its connection comes or goes): the position it has
committed in PostgreSQL (``segment``, ``offset``, ``seq``, ``epoch``), when the
last record it shipped was received, whether it is connected and its last
error. ``storage.retention`` reads it too: a closed segment the archive has not
confirmed is never deleted (unless ``archive.retention_waits = false``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from persist.daemon.log.fsutil import read_private, write_atomically
from persist.daemon.log.layout import LogDir


def path(log: LogDir) -> Path:
    return log.index / "shipper.json"


def write(log: LogDir, state: dict[str, Any]) -> None:
    log.index.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomically(path(log), orjson.dumps({**state, "updated": time.time()}))


def read(log: LogDir) -> dict[str, Any] | None:
    """The shipper's last word, or None if it never wrote one (or it cannot be read)."""
    try:
        state = orjson.loads(read_private(path(log)))
    except (OSError, orjson.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def summary(log: LogDir, last_seq: int, now: float | None = None) -> dict[str, Any]:
    """For ``status``: connected?, records and seconds behind the local log, the last error."""
    state = read(log) or {}
    shipped = state.get("seq") if type(state.get("seq")) is int else 0
    behind = max(0, last_seq - shipped) if not state.get("epoch") else None  # seq numbers restart in a new epoch
    shipped_at = state.get("shipped_at")
    return {
        "connected": bool(state.get("connected")),
        "shipped_seq": shipped,
        "records_behind": behind,
        "seconds_behind": round((now or time.time()) - shipped_at, 1) if behind and isinstance(shipped_at, float) else 0,
        "last_error": state.get("error"),
        "updated": state.get("updated"),
    }


def confirmed_before(log: LogDir) -> str | None:
    """Closed segments named before this one are all in the archive (None: nothing is confirmed yet)."""
    segment = (read(log) or {}).get("segment")
    return segment if isinstance(segment, str) else None
