"""Restoring a checkpoint: in place (what came after is archived) or into a new log dir.

Nothing is ever deleted. In place, every byte after the checkpoint is moved or
copied into ``archive/<time>/`` before the log is cut back, and a
``$persist/restore`` record (in the log) plus ``RESTORE.json`` (in the archive)
link the fork in both directions. The caller holds the log dir's lock, so no
daemon writes meanwhile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from persist.daemon import checkpoints, reader, retention
from persist.daemon.errors import RestoreError
from persist.daemon.fsutil import FILE_MODE, ensure_dir, fsync_dir, write_atomically
from persist.daemon.record import encode, system_message
from persist.daemon.store import LogDir, SegmentWriter, segment_name

Progress = Callable[[int], None]


def _segment_files(log: LogDir) -> dict[str, Path]:
    """Stable segment name → where that segment lives now."""
    found = {p.name: p for p in sorted(log.segments.glob("*.jsonl"))} if log.segments.is_dir() else {}
    active = reader.first_record(log.active)
    if active is not None:
        found[segment_name(active.seq)] = log.active
    return found


def check_unchanged(log: LogDir, manifest: dict[str, Any]) -> dict[str, Path]:
    """The segment files of ``manifest``, after checking each still has the checkpointed bytes."""
    files = _segment_files(log)
    hasher = checkpoints.Hasher()
    for seg in manifest["segments"]:
        path = files.get(seg["name"])
        if path is None and (gone := retention.deleted(log, seg["name"])):
            raise RestoreError(f"segment {seg['name']} of checkpoint {manifest['id']} was deleted by storage.retention "
                               f"({gone['retention']}) at {gone['deleted_at']}; pick a newer checkpoint")
        if path is None:
            raise RestoreError(f"segment {seg['name']} of checkpoint {manifest['id']} is missing; run persist-cli verify")
        if hasher.digest(seg["name"], path, seg["bytes"])[0] != seg["sha256"]:
            raise RestoreError(f"segment {seg['name']} changed since checkpoint {manifest['id']}; run persist-cli verify")
    return files


def _copy_prefix(src: Path, dst: Path, nbytes: int, progress: Progress | None) -> None:
    with open(src, "rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            left = nbytes
            while left:
                chunk = fin.read(min(4 << 20, left))
                os.write(fd, chunk)
                left -= len(chunk)
                if progress:
                    progress(len(chunk))
            os.fsync(fd)
        finally:
            os.close(fd)


def _ancestry(log: LogDir, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    by_id = {m["id"]: m for m in checkpoints.readable(log)}
    chain = [manifest]
    while chain[-1].get("prev") in by_id:
        chain.append(by_id[chain[-1]["prev"]])
    return chain


def restore_to(log: LogDir, manifest: dict[str, Any], out: Path, progress: Progress | None = None) -> LogDir:
    """Write a complete, self-contained log dir for ``manifest`` at ``out``; touch nothing else."""
    if out.exists() and any(out.iterdir()):
        raise RestoreError(f"{out} already exists and is not empty; choose a new --out directory")
    files = check_unchanged(log, manifest)
    target = LogDir(out)
    target.create()
    last = len(manifest["segments"]) - 1
    for i, seg in enumerate(manifest["segments"]):
        dst = target.active if i == last else target.segments / seg["name"]
        _copy_prefix(files[seg["name"]], dst, seg["bytes"], progress)
    for m in _ancestry(log, manifest):
        write_atomically(target.checkpoints / f"{m['id']}.json", orjson.dumps(m, option=orjson.OPT_INDENT_2))
    for d in (target.segments, target.root):
        fsync_dir(d)
    return target


def restore_in_place(log: LogDir, manifest: dict[str, Any]) -> dict[str, Any]:
    """Make the log what it was at ``manifest``; set everything after it aside in archive/."""
    files = check_unchanged(log, manifest)
    kept = {seg["name"]: seg["bytes"] for seg in manifest["segments"]}
    cut_name = manifest["segments"][-1]["name"] if manifest["segments"] else None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    archive = ensure_dir(log.root / "archive" / stamp)
    last_after = reader.last_record(log)
    set_aside = (last_after.seq - manifest["last_seq"]) if last_after else 0
    for name, path in files.items():
        if name not in kept:
            os.rename(path, archive / name)
        elif path.stat().st_size > kept[name]:
            tail = archive / f"{name}.after-{kept[name]}"
            with open(path, "rb") as f:
                f.seek(kept[name])
                write_atomically(tail, f.read())
            with open(path, "r+b") as f:
                f.truncate(kept[name])
                os.fsync(f.fileno())
    if cut_name and files[cut_name] != log.active:
        if log.active.exists():  # an empty active segment: nothing in it to keep
            os.rename(log.active, archive / "current_session.jsonl")
        os.rename(files[cut_name], log.active)
    ids = [m["id"] for m in checkpoints.listing(log)]
    later = ids[ids.index(manifest["id"]) + 1 :]
    if later:
        ensure_dir(archive / "checkpoints")
        for ident in later:
            os.rename(log.checkpoints / f"{ident}.json", archive / "checkpoints" / f"{ident}.json")
    if (log.root / "metadata_index").exists():
        os.rename(log.root / "metadata_index", archive / "metadata_index")
    for d in (archive, log.segments, log.checkpoints, log.root):
        if d.exists():
            fsync_dir(d)
    lineage = {"checkpoint": manifest["id"], "forked_at_seq": manifest["last_seq"],
               "archived_to": str(archive.relative_to(log.root)), "set_aside_records": set_aside}
    seq = manifest["last_seq"] + 1
    first = reader.first_record(log.active)
    writer = SegmentWriter(log, "always")
    writer.open(first.seq if first else None)
    writer.append(encode(system_message("restore", lineage), seq, {}))
    writer.close()
    write_atomically(archive / "RESTORE.json", orjson.dumps({**lineage, "restore_record_seq": seq},
                                                            option=orjson.OPT_INDENT_2))
    return {**lineage, "restore_record_seq": seq}


def copy_tree_size(manifest: dict[str, Any]) -> int:
    return sum(seg["bytes"] for seg in manifest["segments"])

