"""``persist-cli info``: what a log holds at a glance, as ``ros2 bag info`` shows a bag.

Everything comes from segment names, a segment's first line, the log's last
line, the checkpoint manifests (``stats.footprint``) and the search index
(``search.tallies``), never from a scan of the JSONL, so it answers in well
under a second on a gigabyte. Without an index it says so and shows what the
files alone tell. The index's counts are kept between runs in the user's cache
(``$XDG_CACHE_HOME/persist/``), so only the rows indexed since are counted again.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import click
import orjson

from persist.cli.common import counts, fields, json_lines, json_option, require_log, size, when, with_log_dir
from persist.daemon.index import index_path
from persist.daemon.index.search import entries, open_readonly, tallies
from persist.daemon.log import stats

GAP_DETAIL = 1000  # the newest gap records read back for their reasons


@click.command()
@click.option("--top", type=click.IntRange(min=1), default=15, show_default=True, help="Rows per table.")
@with_log_dir
@json_option
def info(cfg, log, top, as_json) -> None:
    """Time span, records, per-topic and per-sender counts, size, segments, checkpoints, gaps."""
    found = describe(require_log(log))
    if as_json:
        return json_lines([found])
    cps, ix = found["checkpoints"], found["index"]
    span = (f"{when(found['first_at'])} → {when(found['last_at'])} ({duration(found['duration_s'])})"
            if found["first_at"] else "empty")
    active = sum(1 for s in found["segments"] if s["active"])
    rows = [
        ("log dir", found["log_dir"]),
        ("span", span),
        ("records", f"{found['records']}" + (f" (seq {found['first_seq']}–{found['last_seq']})" if found["records"] else "")),
        ("size", f"{size(found['log_bytes'])} of records, {size(found['disk_bytes'])} on disk"),
        ("segments", f"{len(found['segments'])} ({active} active)"
                     + (f", {len(found['deleted_segments'])} deleted by retention" if found["deleted_segments"] else "")),
        ("checkpoints", f"{cps['count']}" + (f", latest {cps['latest']} ({when(cps['last_at'])})" if cps["latest"] else "")
                        + (f", labels: {', '.join(cps['labelled'])}" if cps["labelled"] else "")),
    ]
    if ix["present"]:
        gaps = found["gaps"]
        rows += [("gaps", f"{gaps['count']}" + (" (" + ", ".join(f"{r} {n}" for r, n in gaps["by_reason"].items()) + ")"
                                                if gaps["by_reason"] else "")),
                 ("threads", found["threads"]),
                 ("index", "complete" if ix["behind"] == 0 else f"up to seq {ix['indexed_seq']}, {ix['behind']} behind")]
    else:
        rows.append(("index", "none: per-topic and per-sender counts and gaps need it (persist-cli index rebuild)"))
    fields(rows, 13, bold=True)
    if ix["present"]:
        click.echo()
        counts("topic", found["topics"], top)
        if found["senders"]:
            click.echo()
            counts("sender", found["senders"], top)


def describe(log) -> dict[str, Any]:
    """``stats.footprint`` with the index's counts (or ``index.present`` false)."""
    found = stats.footprint(log)
    db = open_readonly(index_path(log))
    if db is None:
        return {**found, "index": {"present": False}}
    cache = _cache_file(log)
    try:
        counted = tallies(db, _read_cache(cache))
    finally:
        db.close()
    _write_cache(cache, counted)
    reasons = Counter(str(e.rec.get("payload", {}).get("reason"))
                      for e in entries(log, counted["gap_rows"][-GAP_DETAIL:]) if isinstance(e.rec.get("payload"), dict))
    behind = max(0, (found["last_seq"] or 0) - counted["indexed_seq"])
    return {**found, "topics": counted["topics"], "senders": counted["senders"], "threads": counted["threads"],
            "gaps": {"count": len(counted["gap_rows"]), "by_reason": dict(reasons.most_common())},
            "index": {"present": True, "indexed_seq": counted["indexed_seq"], "behind": behind}}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for limit, unit, div in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600), (float("inf"), "d", 86400)):
        if seconds < limit:
            return f"{seconds / div:.1f} {unit}"
    return f"{seconds:.0f} s"


def _cache_file(log) -> Path:
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(str(log.root.resolve()).encode()).hexdigest()[:16]
    return home / "persist" / f"info-{key}.json"


def _read_cache(path: Path) -> dict[str, Any] | None:
    try:
        cached = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return cached if isinstance(cached, dict) else None


def _write_cache(path: Path, counted: dict[str, Any]) -> None:
    """Keep the counts for the next run (best effort: a read-only home only makes the next run slower)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(counted))
        os.replace(tmp, path)
    except OSError:
        pass
