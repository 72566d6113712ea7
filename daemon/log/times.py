"""Time as the log writes it and as a person reads and types it: the one parser and the one display format.

The log writes ISO 8601 UTC strings (``received_at``, ``created_at``); every
reader that turns one into a time goes through ``epoch``/``parse_iso``. Every
``--since``/``--until`` value a person typed goes through ``parse_when`` (local
time unless it names a zone, or UTC when asked), and every time shown to a
person goes through ``show`` (local time with its zone, or UTC), so ``recent``,
``search``, ``threads``, ``info`` and a markdown export print times alike.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)\s*(s|sec|second|m|min|minute|h|hour|d|day|w|week)s?(\s+ago)?$")
UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
         "d": 86400, "day": 86400, "w": 604800, "week": 604800}
CLOCK = re.compile(r"^\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?$")  # a time of day: today at that time
DAYS = {"today": 0, "yesterday": -1, "tomorrow": 1}
HINT = ("is not a time: use ISO 8601, local unless it has a zone (2026-11-24 19:22, 2026-11-24T19:22:01Z, "
        "…+01:00), a time of day (19:22), a duration ago like 15m, 2h, 3d, or today/yesterday")

_utc_display = False  # set once per persist-cli run (--utc); a library caller keeps local time


def use_utc(on: bool) -> None:
    """Show (and read zone-less typed times) in UTC instead of local time: ``persist-cli --utc``."""
    global _utc_display
    _utc_display = on


def showing_utc() -> bool:
    return _utc_display


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


def _zone(utc: bool):
    return timezone.utc if utc else None  # None: astimezone() takes the local zone


def show(iso: str | None, utc: bool | None = None) -> str:
    """A time the log wrote, for a person: ``2026-11-24 20:22:01.123 +01:00`` (local) or ``… 19:22:01.123 UTC``."""
    if not iso:
        return "-"
    utc = _utc_display if utc is None else utc
    try:
        when = parse_iso(iso)
    except ValueError:
        return iso
    when = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(_zone(utc))
    text = when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if utc:
        return text + " UTC"
    offset = when.strftime("%z")
    return f"{text} {offset[:3]}:{offset[3:]}"


def parse_when(text: str, now: datetime | None = None, utc: bool | None = None) -> str:
    """A time a person typed, as ``iso_utc``: an ISO 8601 time (local unless it names a zone, or UTC with
    ``utc``), a time of day (``19:22``: today), ``15m``/``2h ago``/``3d``, ``now``/``today``/``yesterday``
    (midnight, local or UTC).

    ``ValueError`` saying what to type instead when it is none of these.
    """
    utc = _utc_display if utc is None else utc
    now = now or datetime.now(timezone.utc)
    zone_now = now.astimezone(_zone(utc))
    t = text.strip().lower()
    if m := RELATIVE.match(t):
        try:
            return iso_utc(now - timedelta(seconds=float(m.group(1)) * UNITS[m.group(2)]))
        except OverflowError:
            raise ValueError("reaches before year 1: use a shorter duration or an ISO 8601 time") from None
    if t == "now":
        return iso_utc(now)
    if t in DAYS:
        midnight = zone_now.replace(hour=0, minute=0, second=0, microsecond=0)
        return iso_utc(midnight + timedelta(days=DAYS[t]))
    if CLOCK.match(t):
        text = f"{zone_now.date().isoformat()}T{t}"
    try:
        when = parse_iso(text.strip())
    except ValueError:
        raise ValueError(HINT) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc) if utc else when.astimezone()  # naive: local wall time
    return iso_utc(when)
