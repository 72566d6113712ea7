"""A record as one line of a listing (``recent``, a checkpoint's records), made without click, so that
``quick`` prints ``recent`` before click is ever imported; ``common`` hands these to every command."""

from __future__ import annotations

import os
import sys
from typing import Any

from persist.daemon.log import times
from persist.daemon.log.render import payload_text, speaker

CYAN, RESET = "\x1b[36m", "\x1b[0m"  # what click.style(text, fg="cyan") puts around text


def color() -> bool:
    """Colour on a terminal, unless ``NO_COLOR`` is set (https://no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def when(iso: str | None) -> str:
    """A log time for a person, as every command shows it (``times.show``: local with its zone, or ``--utc``)."""
    return times.show(iso)


def terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns


def one_line(rec: dict[str, Any], width: int | None = None) -> str:
    """A record as one line of a listing: time, seq, topic, who, what (cut to the terminal's width on one)."""
    text = " ".join(payload_text(rec).split())
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    kind = f" [{meta['msg_type']}]" if isinstance(meta.get("msg_type"), str) else ""  # an envelope's own type
    seq = "#" + str(rec["seq"])
    seq = CYAN + seq + RESET if color() else seq
    head = f"{when(rec['received_at'])}  {seq}  {rec['topic']}{kind}  {speaker(rec)}  "
    line = head + text
    if not sys.stdout.isatty():
        return line
    width = width or terminal_width()
    return line if len(line) <= width else line[: width - 1] + "…"
