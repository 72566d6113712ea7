"""Which records a reader wants: the filters every reading command shares, the most recent ones (and
those that follow), a conversation up to a checkpoint, and the newest turns that fit a token budget.

Pure functions over records and ``reader.Entry``s; it reads the log only through ``reader``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import timedelta
from itertools import islice
from typing import Any

from persist.daemon.log import reader, times
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import is_system


def matches(rec: dict[str, Any], topic: str | tuple[str, ...] | None = None, sender: str | None = None,
            since: str | None = None, until: str | None = None, system: bool = True,
            thread: str | None = None, kind: str | None = None) -> bool:
    """The filters every reading command shares (``topic`` is a prefix, or any of several, like a subscription)."""
    if not system and is_system(rec):
        return False
    if topic is not None and not rec.get("topic", "").startswith(topic):
        return False
    meta = rec.get("meta", {})
    if sender is not None and str(meta.get("sender")) != sender:
        return False
    if thread is not None and str(meta.get("thread_id")) != thread:
        return False
    if kind is not None and str(meta.get("kind")) != kind:
        return False
    if since is not None and rec["received_at"] < since:
        return False
    return until is None or rec["received_at"] <= until


CLOCK_SLACK = 300.0  # seconds a recorder's clock may have stepped back (NTP) between two records


def _back_to(entries: Iterable[reader.Entry], since: str | None) -> Iterator[reader.Entry]:
    """``entries`` (newest first) until one older than ``since`` by more than ``CLOCK_SLACK``: records are written
    in time order, so a reader from the tail stops there instead of reading a huge log to its start."""
    stop = None if since is None else times.iso_utc(times.parse_iso(since) - timedelta(seconds=CLOCK_SLACK))
    for e in entries:
        if stop is not None and e.rec.get("received_at", "") < stop:
            return
        yield e


def recent(log: LogDir, count: int, follow: bool = False, reverse: bool = False,
           **filters: Any) -> Iterator[reader.Entry]:
    """The last ``count`` records that ``matches(filters)``, oldest first (newest first with ``reverse``), read
    from the tail (instant on a huge log; with ``since`` it stops reading there); then, with ``follow``, each new
    matching one as it is written, until the caller stops."""
    newest_first = _back_to(reader.records_backward(log), filters.get("since"))
    wanted = list(islice((e for e in newest_first if matches(e.rec, **filters)), count))
    yield from wanted if reverse else wanted[::-1]
    if not follow:
        return
    from persist.daemon.log.follow import follow as follow_log  # watchdog only where it is needed

    newest = reader.last_record(log)
    for e in follow_log(log, newest.seq if newest else 0):
        if matches(e.rec, **filters):
            yield e


def conversation_upto(log: LogDir, last_seq: int) -> Iterator[reader.Entry]:
    """The agents' records (no ``$persist/`` ones) with seq up to ``last_seq``: what a checkpoint holds."""
    for e in reader.records(log):
        if e.seq > last_seq:
            return
        if not is_system(e.rec):
            yield e


def tokens(e: reader.Entry) -> int:
    """What one record costs in a prompt: its ``meta.tokens``, else a quarter of its line's bytes."""
    return int(e.rec.get("meta", {}).get("tokens") or len(e.line) // 4)


def newest_fitting(entries: Iterable[reader.Entry], max_tokens: int | None) -> tuple[list[reader.Entry], int]:
    """``(kept, left_out)``: the newest entries whose ``tokens`` fit ``max_tokens``, oldest first, and how many
    older ones were left out. The newest entry is kept even if it alone is over; None keeps everything."""
    entries = list(entries)
    if not max_tokens:
        return entries, 0
    kept: list[reader.Entry] = []
    used = 0
    for e in reversed(entries):
        cost = tokens(e)
        if used + cost > max_tokens and kept:
            break
        kept.append(e)
        used += cost
    return kept[::-1], len(entries) - len(kept)
