"""Restoring a checkpoint: in place (what came after is archived) or into a new log dir.

Nothing is ever deleted. In place, every byte after the checkpoint is moved or
copied into a new ``archive/<time>-<n>/`` (created with an exclusive mkdir, so
two restores never share one) before the log is cut back, and a
``$persist/restore`` record (in the log) plus ``RESTORE.json`` (in the
archive) link the fork in both directions.

An in-place restore is one crash-safe step: its plan (every tail to set aside,
every rename) is written to ``restore.intent`` first (temp, fsync, rename,
fsync the directory); each step is idempotent; the intent is removed last. A
restore cut short by a crash is finished from the intent by
``finish_interrupted`` (on the daemon's next start, ``restore`` and
``recover``), and its ``$persist/restore`` record is written exactly once. The
caller holds the log dir's lock, so no daemon writes meanwhile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from persist.daemon.log import checkpoints, lock, reader, render, restart, retention, select
from persist.daemon.log.errors import RestoreError
from persist.daemon.log.fsutil import (
    DIR_MODE,
    create_new,
    ensure_dir,
    fsync_dir,
    read_intent,
    write_all,
    write_atomically,
)
from persist.daemon.log.layout import ACTIVE, LogDir
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.record import encode, is_system, system_message
from persist.daemon.log.store import SegmentWriter, repair_tail

Progress = Callable[[int], None]
INTENT = "restore.intent"
log_ = get_logger("persist.restore")


def check_unchanged(log: LogDir, manifest: dict[str, Any]) -> dict[str, Path]:
    """The segment files of ``manifest``, after checking each still has the checkpointed bytes."""
    files = {seg.name: seg.path for seg in reader.segments(log)}
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
        fd = create_new(dst)
        try:
            left = nbytes
            while left:
                chunk = fin.read(min(4 << 20, left))
                if not chunk:
                    raise RestoreError(f"{src} ended {left} bytes early; run persist-cli verify")
                write_all(fd, chunk)
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
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RestoreError(f"{out} already exists and is not an empty directory; choose a new --out directory")
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


def new_archive(log: LogDir) -> Path:
    """A new, never used ``archive/<time>-<n>/`` (an exclusive mkdir: two restores never share one)."""
    parent = ensure_dir(log.root / "archive")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while True:
        path = parent / f"{stamp}-{n}"
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            n += 1
            continue
        fsync_dir(parent)
        return path


def plan(log: LogDir, manifest: dict[str, Any]) -> dict[str, Any]:
    """Every step of restoring ``manifest`` in place, as paths relative to the log dir."""
    files = check_unchanged(log, manifest)
    kept = {seg["name"]: seg["bytes"] for seg in manifest["segments"]}
    cut_name = manifest["segments"][-1]["name"] if manifest["segments"] else None
    archive = new_archive(log)

    def rel(p: Path) -> str:
        return str(p.relative_to(log.root))

    tails, moves = [], []
    for name, path in files.items():
        if name not in kept:
            if path != log.active:  # the active one is set aside below, once
                moves.append([rel(path), rel(archive / name)])
        elif path.stat().st_size > kept[name]:
            tails.append([rel(path), kept[name], rel(archive / f"{name}.after-{kept[name]}")])
    if cut_name and files[cut_name] != log.active:
        if log.active.exists():  # an empty active segment is set aside too
            moves.append([ACTIVE, rel(archive / ACTIVE)])
        moves.append([rel(files[cut_name]), ACTIVE])
    ids = [m["id"] for m in checkpoints.readable(log)]
    for ident in ids[ids.index(manifest["id"]) + 1 :] if manifest["id"] in ids else []:
        moves.append([rel(log.checkpoints / f"{ident}.json"), rel(archive / "checkpoints" / f"{ident}.json")])
    moves.append(["metadata_index", rel(archive / "metadata_index")])
    last_after = reader.last_record(log)
    return {"checkpoint": manifest["id"], "forked_at_seq": manifest["last_seq"], "archived_to": rel(archive),
            "set_aside_records": (last_after.seq - manifest["last_seq"]) if last_after else 0,
            "tails": tails, "moves": moves, "moved": False}


def restore_in_place(log: LogDir, manifest: dict[str, Any]) -> dict[str, Any]:
    """Make the log what it was at ``manifest``; set everything after it aside in archive/."""
    finish_interrupted(log)
    steps = plan(log, manifest)
    write_atomically(log.root / INTENT, orjson.dumps(steps))
    return carry_out(log, steps)


def restore_held(log: LogDir, manifest: dict[str, Any], stop_daemon: bool = False,
                 restart_daemon: bool = True) -> dict[str, Any]:
    """``restore_in_place`` holding the log dir's lock.

    A daemon recording there is stopped first if ``stop_daemon`` (else ``lock.AlreadyRunning``;
    ``lock.StillRunning`` if it does not stop) and, with ``restart_daemon``, started again the way it
    was started once the restore is done or has failed (``restart``). The result says what happened:
    ``stopped_pid``, then ``restarted_pid`` or ``not_restarted`` (why, and how to start it).
    """
    stopped: dict[str, Any] = {}
    started = None
    if lock.is_locked(log):
        if not stop_daemon:
            raise lock.AlreadyRunning(f"a daemon (pid {lock.holder_pid(log)}) is recording into {log.root}; "
                                      "pass --stop-daemon, or use --out DIR to restore elsewhere")
        stopped["stopped_pid"] = pid = lock.holder_pid(log)
        started = restart.how_started(pid)
        lock.stop_holder(log)
    try:
        with lock.held(log):
            result = restore_in_place(log, manifest)
    except BaseException as exc:
        if stopped:
            note = _start_again(log, started, restart_daemon)
            exc.add_note(f"the daemon (pid {stopped['stopped_pid']}) was stopped for the restore; " + (
                f"it records again as pid {note['restarted_pid']}" if "restarted_pid" in note
                else f"RECORDING IS STOPPED: {note['not_restarted']}"))
        raise
    return {**result, **stopped, **(_start_again(log, started, restart_daemon) if stopped else {})}


def _start_again(log: LogDir, started: restart.Started | None, wanted: bool) -> dict[str, Any]:
    if not wanted:
        return {"not_restarted": "not asked to; start it: persist-daemon --log-dir " + str(log.root)}
    if started is None:
        return {"not_restarted": "how it was started cannot be read from /proc; start it: "
                                 f"persist-daemon --log-dir {log.root}"}
    try:
        return {"restarted_pid": restart.start_again(log, started)}
    except restart.RestartError as exc:
        return {"not_restarted": str(exc)}


def finish_interrupted(log: LogDir) -> dict[str, Any] | None:
    """Finish an in-place restore a crash cut short (its ``restore.intent``); None if there was none."""
    steps = read_intent(log.root / INTENT, RestoreError)
    if steps is None:
        return None
    log_.warning("restore_resumed", checkpoint=steps["checkpoint"], archive=steps["archived_to"])
    return carry_out(log, steps)


def carry_out(log: LogDir, steps: dict[str, Any]) -> dict[str, Any]:
    """Do (or redo) every step of ``steps``; each one is idempotent, the intent goes last."""
    root = log.root
    if not steps["moved"]:
        for src, kept, dst in steps["tails"]:
            _set_tail_aside(root / src, kept, root / dst)
        for src, dst in steps["moves"]:
            _move(root / src, root / dst)
        for d in {root / steps["archived_to"], root / steps["archived_to"] / "checkpoints", log.segments,
                  log.checkpoints, root}:
            if d.exists():
                fsync_dir(d)
        steps = {**steps, "moved": True}
        write_atomically(root / INTENT, orjson.dumps(steps))
    lineage = {k: steps[k] for k in ("checkpoint", "forked_at_seq", "archived_to", "set_aside_records")}
    result = {**lineage, "restore_record_seq": _record_once(log, lineage)}
    write_atomically(root / steps["archived_to"] / "RESTORE.json", orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (root / INTENT).unlink()
    fsync_dir(root)
    return result


def _set_tail_aside(src: Path, kept: int, dst: Path) -> None:
    """Copy ``src`` beyond ``kept`` bytes to ``dst`` (once), then cut ``src`` to ``kept``."""
    try:
        fd = os.open(src, os.O_RDWR)
    except FileNotFoundError:  # moved on by a later step already
        return
    try:
        size = os.fstat(fd).st_size
        if size > kept and not dst.exists():
            ensure_dir(dst.parent)
            write_atomically(dst, os.pread(fd, size - kept, kept))
        if size > kept:
            os.ftruncate(fd, kept)
            os.fsync(fd)
    finally:
        os.close(fd)


def _move(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` unless that was done already."""
    if dst.exists() or not src.exists():
        return
    ensure_dir(dst.parent)
    os.rename(src, dst)


def _record_once(log: LogDir, lineage: dict[str, Any]) -> int:
    """Append the ``$persist/restore`` record unless a crash came after it was written; its seq."""
    seq = lineage["forked_at_seq"] + 1
    repair_tail(log.active, log.recovery)  # a record torn by the crash is quarantined, not built upon
    last = reader.last_record(log)
    if last is not None and last.seq == seq and is_system(last.rec) and last.rec["topic"] == "$persist/restore":
        return seq
    first = reader.first_record(log.active)
    writer = SegmentWriter(log, "always")
    writer.open(first.seq if first else None)
    writer.append(encode(system_message("restore", lineage), seq, {}))
    writer.close()
    return seq


def copy_tree_size(manifest: dict[str, Any]) -> int:
    return sum(seg["bytes"] for seg in manifest["segments"])


def context_file(log: LogDir, manifest: dict[str, Any]) -> Path:
    """The whole conversation up to ``manifest`` as an agent's prompt, in ``restored/<id>.txt``."""
    return write_context(log, manifest, None)[0]


def write_context(log: LogDir, manifest: dict[str, Any], max_tokens: int | None) -> tuple[Path, int]:
    """``(path, left_out)``: the newest turns up to ``manifest`` that fit ``max_tokens`` (None: all) as an
    agent's prompt in ``restored/<id>.txt`` (for ``persist-launch``), and how many earlier ones were left out
    (the file's first line says so too)."""
    entries, left_out = select.newest_fitting(select.conversation_upto(log, manifest["last_seq"]), max_tokens)
    path = ensure_dir(log.root / "restored") / f"{manifest['id']}.txt"
    note = [f"({left_out} earlier turn(s) left out to fit {max_tokens} tokens)"] if left_out else []
    text = "\n".join(note + list(render.lines(entries, "prompt"))) + "\n"
    write_atomically(path, text.encode())
    return path, left_out
