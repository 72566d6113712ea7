"""What every persist-cli command shares: options, the log dir, errors, and output helpers.

Commands stay a dozen lines each: they parse options, call the format
library in ``persist.daemon`` and hand rows to ``table`` or ``json_lines``.
"""

from __future__ import annotations

import functools
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import click
import orjson

from persist.daemon import config
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import is_system
from persist.daemon.log.render import payload_text, speaker


class UsageError(click.ClickException):
    """Bad input: one line saying what to do, exit 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"persist-cli: {self.message}", err=True)


class Failure(UsageError):
    """The command ran and found something wrong: exit 1."""

    exit_code = 1


def with_log_dir(func: Callable) -> Callable:
    """Add ``--log-dir`` and ``--config``; pass the resolved ``cfg`` and ``log`` to the command."""

    @click.option("--log-dir", metavar="DIR", help="The log dir (env PERSIST_LOG_DIR; default ./conversation_logs).")
    @click.option("--config", "config_path", metavar="FILE", help="TOML config file (see persist-daemon --help).")
    @functools.wraps(func)
    def wrapper(*args, log_dir: str | None, config_path: str | None, **kwargs):
        try:
            cfg = config.load(config_path, {"daemon": {"log_dir": log_dir} if log_dir else {}})
        except config.ConfigError as exc:
            raise UsageError(str(exc)) from None
        return func(*args, cfg=cfg, log=LogDir(cfg.log_dir), **kwargs)

    return wrapper


json_option = click.option("--json", "as_json", is_flag=True, help="JSON Lines in the on-disk schema, for scripts.")


def require_log(log: LogDir) -> LogDir:
    """``log``, or exit 2 if it is not a persist log dir."""
    if not log.root.is_dir():
        raise UsageError(f"log dir {log.root} does not exist; pass --log-dir or set PERSIST_LOG_DIR")
    if not log.is_log_dir():
        raise UsageError(f"{log.root} is not a persist log (no current_session.jsonl or segments/); pass --log-dir")
    return log


def daemon_status(log: LogDir) -> dict[str, Any] | None:
    """The running daemon's status through its control socket, or None."""
    from persist.daemon.control import ControlError, ask  # pyzmq only where a daemon is asked

    try:
        reply = ask(log.control_endpoint, "status", timeout_ms=1500)
    except ControlError:
        return None
    return reply if reply.get("ok") else None


# --- output ------------------------------------------------------------------


def json_lines(objects: Iterable[Any]) -> None:
    out = sys.stdout.buffer
    for obj in objects:
        out.write(obj if isinstance(obj, bytes) else orjson.dumps(obj) + b"\n")
    out.flush()


def color() -> bool:
    return sys.stdout.isatty()


def style(text: str, **kw: Any) -> str:
    return click.style(text, **kw) if color() else text


def table(headers: list[str], rows: list[list[Any]], right: Iterable[int] = ()) -> None:
    """Print aligned columns (header bold on a terminal)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = set(right)

    def fmt(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    click.echo(style(fmt(headers), bold=True))
    for row in cells:
        click.echo(fmt(row))


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ago(iso: str | None) -> str:
    """``3 min ago`` for a record or checkpoint time."""
    if not iso:
        return "never"
    seconds = time.time() - parse_iso(iso).timestamp()
    for limit, unit, div in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600), (float("inf"), "d", 86400)):
        if seconds < limit:
            return f"{seconds / div:.0f} {unit} ago"
    return iso


def terminal_width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


# --- time filters ------------------------------------------------------------

RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hour|d|day|w|week)s?(\s+ago)?$")
UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400,
         "w": 604800, "week": 604800}


def parse_when(text: str | None, flag: str) -> str | None:
    """A ``--since``/``--until`` value as an ISO UTC string comparable with ``received_at``."""
    if text is None:
        return None
    now = datetime.now(timezone.utc)
    t = text.strip().lower()
    m = RELATIVE.match(t)
    if m:
        try:
            when = now - timedelta(seconds=float(m.group(1)) * UNITS[m.group(2)])
        except OverflowError:
            raise UsageError(f"{flag} {text!r} reaches before year 1: use a shorter duration or an ISO 8601 time") from None
    elif t in ("now", "today", "yesterday"):
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        when = {"now": now, "today": midnight, "yesterday": midnight - timedelta(days=1)}[t]
    else:
        try:
            when = parse_iso(text.strip())
        except ValueError:
            raise UsageError(f"{flag} {text!r} is not a time: use ISO 8601 (2026-11-24T19:22:01Z), "
                             "a duration like 15m, 2h, 3d, or today/yesterday") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def matches(rec: dict[str, Any], topic: str | None = None, sender: str | None = None,
            since: str | None = None, until: str | None = None, system: bool = True) -> bool:
    """The filters every reading command shares (topic is a prefix, like a subscription)."""
    if not system and is_system(rec):
        return False
    if topic is not None and not rec.get("topic", "").startswith(topic):
        return False
    if sender is not None and str(rec.get("meta", {}).get("sender")) != sender:
        return False
    if since is not None and rec["received_at"] < since:
        return False
    return until is None or rec["received_at"] <= until


def one_line(rec: dict[str, Any], width: int | None = None) -> str:
    """A record as one line of a listing: time, seq, topic, who, what."""
    text = " ".join(payload_text(rec).split())
    head = f"{rec['received_at'][11:23]}  {style('#' + str(rec['seq']), fg='cyan')}  {rec['topic']}  {speaker(rec)}  "
    line = head + text
    width = width or terminal_width()
    return line if len(line) <= width or not sys.stdout.isatty() else line[: width - 1] + "…"
