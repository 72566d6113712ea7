"""``persist-cli redact apply``: secrets replaced in records already written, as a new generation of segments.

For the day someone notices a key in last week's log. The caller holds the
log dir's lock (``lock.held``): no daemon records meanwhile, so nothing
appends, rotates or checkpoints under us (``redact_held`` stops a daemon and
starts it again, as an in-place restore does). Only closed segments are
rewritten; an active segment that holds a record in range is closed first
(rotated, as the daemon rotates). Records are selected by ``received_at``;
the daemon's own ``$persist/`` records are never touched.

One crash-safe change, in named steps:

1. ``plan``: each segment with a secret in range is written again beside
   itself (``segments/.<name>.redact-new``: temp, fsync), each redacted
   record with its ``id``, ``seq`` and ``received_at``, its frames
   redacted, ``meta.sha256``/``meta.bytes`` of those frames and
   ``meta.redacted`` extended; every other line byte for byte. The checkpoint
   chain is re-rooted: every manifest from the first that names such a
   segment on gets the new byte counts and SHA-256s (a prefix named before
   ends on the same record after) and its chain hash computed again,
   written beside itself too. Temp files of a plan that never committed
   are removed first.
2. ``commit``: ``redact.intent`` lists the files (temp, fsync, rename, fsync
   the directory). From here the change is finished by whoever comes next:
   the daemon's start, ``persist-cli recover``, the next ``redact apply``.
3. ``swap``: per file, a hard link ``.<name>.redact-old`` keeps the old bytes,
   the new file is renamed over the name (a reader sees old or new), then
   the old bytes are destroyed: overwritten with zeros, fsynced, unlinked.
4. the search index held the secrets' words: its files are destroyed the
   same way and it is built again from the JSONL.
5. one ``$persist/redact`` record (written once, as ``$persist/restore`` is);
   the intent goes last.

Every step is idempotent. What "destroyed" cannot promise: a copy-on-write
or log-structured file system, or an SSD's wear levelling, may keep old
blocks where no overwrite reaches; snapshots, backups and the PostgreSQL
archive keep what they were given (the README says so).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from persist.daemon.log import checkpoints, lock, reader, restart
from persist.daemon.log.entry import Segment, entry
from persist.daemon.log.fsutil import create_new, fsync_dir, read_intent, write_all, write_atomically
from persist.daemon.log.layout import LogDir
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.record import Message, decode_frames, encode, is_system, system_message
from persist.daemon.log.store import SegmentWriter, repair_tail
from persist.daemon.redact import Redactor

INTENT = "redact.intent"
NEW, OLD = ".redact-new", ".redact-old"
CHUNK = 1 << 20
log_ = get_logger("persist.redact")


class RedactApplyError(RuntimeError):
    """The change cannot be made: the message says why and what to do."""


@dataclass
class Tally:
    """What a rewrite found: records redacted, secrets per rule, and where."""

    records: int = 0
    secrets: dict[str, int] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)  # the first 1000 seqs redacted

    def add(self, seq: int, notes: list[dict[str, Any]]) -> None:
        self.records += 1
        if len(self.seqs) < 1000:
            self.seqs.append(seq)
        for note in notes:
            if note.get("rule"):
                self.secrets[note["rule"]] = self.secrets.get(note["rule"], 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "secrets": self.secrets, "segments": self.segments, "seqs": self.seqs}


# --- one record ---------------------------------------------------------------------------

def redact_line(line: bytes, rec: dict[str, Any], redactor: Redactor) -> tuple[bytes, list[dict[str, Any]]] | None:
    """The record on ``line`` with its secrets replaced, as the recorder would have written it had redaction
    been on, and what was replaced; None when there is nothing to replace.

    Its ``seq``, ``id`` and ``received_at`` stay (the line's head is kept as it was); the rest of its
    ``meta`` stays too, its strings searched by the same rules (enrichment copied payload fields there).
    """
    msg = Message.from_frames(decode_frames(line, rec), 0)
    found = redactor.message(msg)
    old_meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    meta_notes: list[dict[str, Any]] = []
    meta = redactor.json_value({k: v for k, v in old_meta.items() if k not in ("bytes", "sha256", "redacted")},
                               "meta", meta_notes)
    if found is None and not meta_notes:
        return None
    notes = (found.notes if found is not None else []) + meta_notes
    meta["redacted"] = list(old_meta.get("redacted", [])) + notes
    body = encode(found.message if found is not None else msg, rec["seq"], meta)
    head = line[: line.index(b',"topic":')]  # {"v":1,"seq":N,"id":"…","received_at":"…" as recorded
    return head + body[body.index(b',"topic":'):], notes


def _in_range(rec: dict[str, Any], since: str | None, until: str | None) -> bool:
    at = rec.get("received_at", "")
    return (since is None or at >= since) and (until is None or at <= until)


# --- step 1: plan --------------------------------------------------------------------------

def rewrite_segment(path: Path, out: Path | None, redactor: Redactor, since: str | None, until: str | None,
                    cuts: set[int], tally: Tally) -> dict[int, int] | None:
    """Write ``path`` with its secrets in range replaced to ``out`` (fsynced; None: only count them); the new
    offset of each old line end in ``cuts`` (the prefixes manifests name). None, and no ``out``, when nothing
    was replaced."""
    fd = create_new(out) if out is not None else -1
    moved: dict[int, int] = {}
    old_end = new_end = changed = 0
    try:
        buffer: list[bytes] = []
        for offset, line in reader.lines_forward(path):
            out_line = line
            e = entry(line, path)
            if e is not None and not is_system(e.rec) and _in_range(e.rec, since, until):
                new = redact_line(line, e.rec, redactor)
                if new is not None:
                    out_line = new[0]
                    tally.add(e.seq, new[1])
                    changed += 1
            old_end, new_end = offset + len(line), new_end + len(out_line)
            if old_end in cuts:
                moved[old_end] = new_end
            if fd >= 0:
                buffer.append(out_line)
                if len(buffer) >= 1000:
                    write_all(fd, b"".join(buffer))
                    buffer = []
        if old_end != path.stat().st_size:
            raise RedactApplyError(f"{path} ends in {path.stat().st_size - old_end} bytes that are not a whole record; "
                                   "run persist-cli verify")
        if cuts - moved.keys() - {0}:
            raise RedactApplyError(f"a checkpoint names {path.name} up to byte {min(cuts - moved.keys() - {0})}, "
                                   "which is not the end of a record there; run persist-cli verify")
        if fd >= 0:
            write_all(fd, b"".join(buffer))
            os.fsync(fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
            out.unlink(missing_ok=True)
        raise
    if fd >= 0:
        os.close(fd)
        if not changed:
            out.unlink()
    return {0: 0, **moved} if changed else None


def candidates(log: LogDir, since: str | None, until: str | None) -> list[Segment]:
    """The closed segments that may hold a record received in ``since``..``until``, oldest first."""
    closed = reader.closed_segments(log)
    starts = [_first_time(seg.path) for seg in closed]
    found = []
    for i, seg in enumerate(closed):
        next_start = starts[i + 1] if i + 1 < len(starts) else None
        if since is not None and next_start is not None and next_start < since:
            continue  # the next segment began before since: every record here is older
        if until is not None and starts[i] is not None and starts[i] > until:
            break
        found.append(seg)
    return found


def _first_time(path: Path) -> str | None:
    first = reader.first_record(path)
    return first.rec.get("received_at") if first is not None else None


def close_active(log: LogDir, since: str | None, until: str | None) -> Path | None:
    """Rotate the active segment into ``segments/`` (as the daemon rotates) if it holds a record in range."""
    first, last = reader.first_record(log.active), reader.last_record(log)
    if first is None or last is None or last.path != log.active:
        return None
    if (since is not None and last.rec["received_at"] < since) or (until is not None and first.rec["received_at"] > until):
        return None
    writer = SegmentWriter(log, "always")
    writer.open(first.seq)
    try:
        return writer.rotate()
    finally:
        writer.close()


def reroot(manifests: list[dict[str, Any]], moved: dict[str, dict[int, int]],
           paths: dict[str, Path]) -> list[dict[str, Any]]:
    """The manifests that change: each naming a rewritten segment gets its new byte counts and SHA-256s, and
    from the first of them on each one's chain hash is computed again (the chain re-rooted)."""
    wanted = {name: sorted(set(m.values())) for name, m in moved.items()}
    hashes: dict[tuple[str, int], str] = {}
    for name, lengths in wanted.items():
        with open(paths[name], "rb") as f:
            hashes.update(checkpoints._prefix_hashes(name, f, lengths))
    changed: list[dict[str, Any]] = []
    new_chain: dict[str, str] = {}
    for m in manifests:
        touches = any(s["name"] in moved for s in m["segments"])
        if not touches and m.get("prev") not in new_chain:
            continue
        m = {**m, "segments": [
            {**s, "bytes": moved[s["name"]][s["bytes"]], "sha256": hashes[(s["name"], moved[s["name"]][s["bytes"]])]}
            if s["name"] in moved else s for s in m["segments"]]}
        if m.get("prev") in new_chain:
            m["prev_chain"] = new_chain[m["prev"]]
        m["chain"] = checkpoints.chain_of(m.get("prev_chain", ""), m)
        new_chain[m["id"]] = m["chain"]
        changed.append(m)
    return changed


def clear_stale(log: LogDir) -> None:
    """Remove what a plan left that was never committed (no intent names it): new files only."""
    for directory in (log.segments, log.checkpoints):
        if directory.is_dir():
            for p in directory.iterdir():
                if p.name.startswith(".") and p.name.endswith(NEW):
                    p.unlink()


def plan(log: LogDir, redactor: Redactor, since: str | None, until: str | None,
         dry_run: bool = False) -> dict[str, Any] | None:
    """Step 1: every redacted segment and re-rooted manifest written beside the one it replaces (with
    ``dry_run``, only counted, the active segment included); the steps that are left. None: nothing to redact."""
    problems: list[str] = []
    manifests = checkpoints.listing(log, problems)
    if problems:
        raise RedactApplyError(f"{problems[0]}; move it away (persist-cli verify names every one) and try again")
    cuts: dict[str, set[int]] = {}
    for m in manifests:
        for s in m["segments"]:
            cuts.setdefault(s["name"], set()).add(s["bytes"])
    tally = Tally()
    segments = candidates(log, since, until)
    if dry_run:
        for path in [s.path for s in segments] + [log.active]:
            if rewrite_segment(path, None, redactor, since, until, set(), tally) is not None:
                tally.segments.append(path.name)
        return {"dry_run": True, **tally.as_dict()} if tally.records else None
    clear_stale(log)
    moved: dict[str, dict[int, int]] = {}
    news: dict[str, Path] = {}
    for seg in segments:
        out = seg.path.with_name(f".{seg.name}{NEW}")
        got = rewrite_segment(seg.path, out, redactor, since, until, cuts.get(seg.name, set()), tally)
        if got is not None:
            moved[seg.name], news[seg.name] = got, out
            tally.segments.append(seg.name)
    if not moved:
        return None
    files = [[str(p.relative_to(log.root)) for p in (seg.path, news[seg.name], seg.path.with_name(f".{seg.name}{OLD}"))]
             for seg in segments if seg.name in moved]
    rerooted = reroot(manifests, moved, news)
    for m in rerooted:
        final = log.checkpoints / f"{m['id']}.json"
        new = final.with_name(f".{final.name}{NEW}")
        fd = create_new(new)
        try:
            write_all(fd, orjson.dumps(m, option=orjson.OPT_INDENT_2))
            os.fsync(fd)
        finally:
            os.close(fd)
        files.append([str(p.relative_to(log.root)) for p in (final, new, final.with_name(f".{final.name}{OLD}"))])
    for d in (log.segments, log.checkpoints):
        if d.is_dir():
            fsync_dir(d)
    return {"change": uuid.uuid4().hex, "since": since, "until": until, **tally.as_dict(),
            "checkpoints_rerooted": [m["id"] for m in rerooted], "files": files, "swapped": False}


# --- steps 2 to 5 ----------------------------------------------------------------------------

def apply(log: LogDir, redactor: Redactor, since: str | None, until: str | None) -> dict[str, Any] | None:
    """Redact what was recorded in ``since``..``until`` (ISO UTC); the ``$persist/redact`` record's content and
    its seq, or None when nothing in range holds a secret. The caller holds the log dir's lock."""
    finish_interrupted(log)
    close_active(log, since, until)
    steps = plan(log, redactor, since, until)
    if steps is None:
        return None
    write_atomically(log.root / INTENT, orjson.dumps(steps))  # step 2: from here the change is made
    return carry_out(log, steps)


def finish_interrupted(log: LogDir) -> dict[str, Any] | None:
    """Finish a ``redact apply`` a crash cut short (its ``redact.intent``); None if there was none."""
    steps = read_intent(log.root / INTENT, RedactApplyError)
    if steps is None:
        return None
    log_.warning("redact_resumed", change=steps["change"], segments=steps["segments"])
    return carry_out(log, steps)


def carry_out(log: LogDir, steps: dict[str, Any]) -> dict[str, Any]:
    """Do (or redo) steps 3 to 5 of ``steps``; each one is idempotent, the intent goes last."""
    root = log.root
    if not steps["swapped"]:
        for final, new, old in steps["files"]:
            swap(root / final, root / new, root / old)
        for d in {(root / f[0]).parent for f in steps["files"]}:
            fsync_dir(d)
        forget_index(log)
        steps = {**steps, "swapped": True}
        write_atomically(root / INTENT, orjson.dumps(steps))
    lineage = {k: steps[k] for k in ("change", "since", "until", "records", "secrets", "segments",
                                     "checkpoints_rerooted")}
    result = {**lineage, "redact_record_seq": _record_once(log, lineage)}
    (root / INTENT).unlink()
    fsync_dir(root)
    return result


def swap(final: Path, new: Path, old: Path) -> None:
    """Step 3 for one file: ``new`` in place of ``final``, the old bytes kept at ``old`` meanwhile, then destroyed."""
    if new.exists():
        if not old.exists() and final.exists():
            os.link(final, old)
        os.replace(new, final)
    if old.exists():
        destroy(old)


def destroy(path: Path) -> None:
    """Overwrite ``path`` with zeros, fsync, unlink: its bytes are not left in the free blocks of the disk.

    Only a file no other name shares: one with hard links elsewhere (a backup made with ``cp -l``) is only
    unlinked, and one line says the other name keeps the old bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_nlink != 1:
            log_.warning("redact_old_bytes_kept", file=str(path), links=st.st_nlink,
                         hint="another hard link to this file keeps the old bytes: find it (find -samefile) "
                              "and remove it")
        else:
            left = st.st_size
            zeros = bytes(min(CHUNK, left))
            while left:
                n = os.write(fd, zeros[: min(len(zeros), left)])
                left -= n
            os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()


def forget_index(log: LogDir) -> None:
    """Step 4: the search index's files (the secrets' words, the old offsets) destroyed. Not built again here:
    it is derived data, and the indexer or the next search (``open_complete``) makes it again, so a daemon
    finishing an interrupted apply at its start is not held up for a whole rebuild."""
    from persist.daemon.index import files, index_path

    for p in files(index_path(log)):
        if p.exists():
            destroy(p)


def _record_once(log: LogDir, lineage: dict[str, Any]) -> int:
    """Append the ``$persist/redact`` record unless a crash came after it was written; its seq."""
    repair_tail(log.active, log.recovery)
    last = reader.last_record(log)
    if (last is not None and is_system(last.rec) and last.rec["topic"] == "$persist/redact"
            and last.rec.get("payload", {}).get("change") == lineage["change"]):
        return last.seq
    seq = (last.seq if last is not None else 0) + 1
    first = reader.first_record(log.active)
    writer = SegmentWriter(log, "always")
    writer.open(first.seq if first else None)
    writer.append(encode(system_message("redact", lineage), seq, {}))
    writer.close()
    return seq


def redact_held(log: LogDir, redactor: Redactor, since: str | None, until: str | None,
                stop_daemon: bool = False) -> dict[str, Any] | None:
    """``apply`` holding the log dir's lock; a daemon recording there is stopped first if ``stop_daemon`` (else
    ``lock.AlreadyRunning``) and started again the way it was started once the change is made or has failed."""
    started = None
    stopped = None
    if lock.is_locked(log):
        if not stop_daemon:
            raise lock.AlreadyRunning(f"a daemon (pid {lock.holder_pid(log)}) is recording into {log.root}; pass "
                                      "--stop-daemon (it is started again afterwards)")
        stopped = lock.holder_pid(log)
        started = restart.how_started(stopped)
        lock.stop_holder(log)
    try:
        with lock.held(log):
            result = apply(log, redactor, since, until)
    finally:
        if stopped is not None:
            note = _start_again(log, started)
    if stopped is not None:
        result = {**(result or {"records": 0}), "stopped_pid": stopped, **note}
    return result


def _start_again(log: LogDir, started: restart.Started | None) -> dict[str, Any]:
    if started is None:
        return {"not_restarted": f"how it was started cannot be read from /proc; start it: persist-daemon --log-dir "
                                 f"{log.root}"}
    try:
        return {"restarted_pid": restart.start_again(log, started)}
    except restart.RestartError as exc:
        return {"not_restarted": str(exc)}
