"""Time as the log writes it: ISO 8601 UTC strings (``received_at``, ``created_at``), parsed one way.

Every reader that turns such a string into a time, and every ``--since`` /
``--until`` value turned into one, goes through here.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hour|d|day|w|week)s?(\s+ago)?$")
UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400,
         "w": 604800, "week": 604800}


def parse_iso(text: str) -> datetime:
    """An ISO 8601 time (``Z`` accepted for UTC); naive if ``text`` names no zone. ``ValueError`` if it is none."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def epoch(iso: str) -> float:
    """Seconds since the epoch for a time the log wrote (a time without a zone is UTC)."""
    when = parse_iso(iso)
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def iso_utc(when: datetime) -> str:
    """``when`` as the log writes times, comparable as a string with ``received_at``."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_when(text: str, now: datetime | None = None) -> str:
    """A time a person typed (ISO 8601, ``15m``/``2h ago``/``3d``, ``now``/``today``/``yesterday``) as ``iso_utc``.

    ``ValueError`` saying what to type instead when it is none of these.
    """
    now = now or datetime.now(timezone.utc)
    t = text.strip().lower()
    if m := RELATIVE.match(t):
        try:
            return iso_utc(now - timedelta(seconds=float(m.group(1)) * UNITS[m.group(2)]))
        except OverflowError:
            raise ValueError("reaches before year 1: use a shorter duration or an ISO 8601 time") from None
    if t in ("now", "today", "yesterday"):
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return iso_utc({"now": now, "today": midnight, "yesterday": midnight - timedelta(days=1)}[t])
    try:
        when = parse_iso(text.strip())
    except ValueError:
        raise ValueError("is not a time: use ISO 8601 (2026-11-24T19:22:01Z), "
                         "a duration like 15m, 2h, 3d, or today/yesterday") from None
    return iso_utc(when if when.tzinfo else when.replace(tzinfo=timezone.utc))
