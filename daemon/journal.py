"""The recorder's journal: every record the daemon writes goes through here, in seq order.

The writer path, top to bottom: ``record(batch)`` parses each message,
replaces the secrets in it when ``[redact]`` is on (``redact``: the record is
then of the redacted frames, and ``meta.redacted`` says so), asks the
enrichers for its ``meta`` (which thus never copy a secret), notes sender gaps and replays, encodes one
line per record with the next ``seq``, and ``append``s the batch; ``commit``
makes it durable (a group commit, see ``log.store``). While the disk refuses,
lines wait in the spool (``spool``) and the journal keeps order and ``seq``
continuous; what cannot be held is counted into a gap record. The daemon's
own records (``record_system``, ``record_gap``) and checkpoints go through the
same path. A full disk never raises out of here: a checkpoint is put off, a
manifest written later, and at ``stop`` what could not be written is counted.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import Any

from persist.daemon.config import Config
from persist.daemon.gaps import SenderSequences
from persist.daemon.log import checkpoints, reader
from persist.daemon.log.layout import LogDir, segment_name
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.record import Message, encode, frames_sha256, system_message
from persist.daemon.log.store import DISK_FULL_ERRNOS, DiskFull, Repair, SegmentWriter, repair_tail
from persist.daemon.log.times import epoch
from persist.daemon.redact import Redactor
from persist.daemon.replay_marks import ReplayMarks
from persist.daemon.spool import Reserve, Spool

log = get_logger("persist.daemon")


class Journal:
    """Sequence numbers, encoding, appends, the disk-full spool, commits and checkpoints."""

    def __init__(self, log_dir: LogDir, cfg: Config, enrich: Callable[[Message], dict[str, Any]],
                 redact: Redactor | None = None) -> None:
        self.log = log_dir
        self.cfg = cfg
        self.enrich = enrich
        self.redact = redact  # None: redaction off, nothing on the path
        self.writer = SegmentWriter(log_dir, cfg.daemon.fsync)
        self.spool = Spool(cfg.storage.backlog_bytes)
        self.reserve = Reserve(log_dir.recovery / "space.reserve")
        self.senders = SenderSequences()
        self.replay_marks = ReplayMarks()
        self.hasher = checkpoints.Hasher()
        self.seq = 0
        self.pending = 0  # records appended since the last commit
        self.pending_since = 0.0
        self.recorded = 0
        self.redacted = 0  # records whose secrets were replaced
        self.gaps = 0
        self.checkpointed_seq = 0  # seq of the last $persist/checkpoint record
        self.last_checkpoint: dict[str, Any] | None = None
        self.deferred_checkpoint: str | None = None  # a checkpoint the full disk put off
        self.unwritten_manifest: tuple | None = None  # a checkpoint recorded whose manifest found no room
        self.on_disk_full: Callable[[], None] = lambda: None

    def open(self) -> tuple[Repair | None, reader.Entry | None]:
        """Repair what a crash left and resume ``seq``; returns the repair and the last record before it."""
        repaired = repair_tail(self.log.active, self.log.recovery)
        last = reader.last_record(self.log)
        self.seq = last.seq if last else 0
        first = reader.first_record(self.log.active)
        self.writer.open(first.seq if first else None, epoch(first.rec["received_at"]) if first else None)
        self.last_checkpoint = checkpoints.latest(self.log)
        return repaired, last

    # --- the writer path -----------------------------------------------------------

    def record(self, batch: list[list[bytes]]) -> None:
        """Redact, enrich and encode each message, then append the whole batch at once."""
        received_ns = time.time_ns()
        if self.spool.full:  # the disk refused and memory is used up: count, never block
            for _ in batch:
                self.spool.drop(received_ns)
            return
        lines = []
        dropped = self.spool.take_dropped()
        if dropped:  # the gap stands where the loss happened, before what the spool takes again
            lines.append(self._gap_line({"reason": "disk_full", **dropped}, received_ns))
        enrich, parse, encode_line, marks = self.enrich, Message.from_frames, self._encode, self.replay_marks
        redact = self.redact.message if self.redact is not None else None
        for frames in batch:
            msg = parse(frames, received_ns)
            found = redact(msg) if redact is not None else None
            if found is not None:  # the record is of the redacted frames, and says so
                msg = found.message
                self.redacted += 1
            meta = enrich(msg)
            if found is not None:
                meta["redacted"] = found.notes
            if "sender_seq" in meta:
                gap = self.senders.observe(meta.get("sender"), meta["sender_seq"])
                if gap:
                    lines.append(self._gap_line(gap, received_ns))
            if marks.pending:  # a replay is under way: is this one of its messages?
                sha256 = frames_sha256(msg.frames)
                replay_of = marks.take(sha256)
                if replay_of is not None:
                    meta["replay_of"] = replay_of
                lines.append(encode_line(msg, meta, sha256))
            else:
                lines.append(encode_line(msg, meta))
        self.append(lines)

    def _encode(self, msg: Message, meta: dict[str, Any], sha256: str | None = None) -> bytes:
        self.seq += 1
        try:
            return encode(msg, self.seq, meta, sha256)
        except TypeError as exc:  # meta that cannot be written (enrichers are checked: a last net)
            return encode(msg, self.seq, {"enrich_error": [f"meta not serialisable: {exc}"]}, sha256)

    def _gap_line(self, gap: dict[str, Any], received_ns: int | None = None) -> bytes:
        self.gaps += 1
        log.warning("gap", **gap)
        return self._encode(system_message("gap", gap, received_ns), {})

    def record_system(self, topic: str, payload: dict[str, Any]) -> None:
        """Write a ``$persist/<topic>`` record about the daemon itself."""
        self.append([self._encode(system_message(topic, payload), {})])

    def record_gap(self, gap: dict[str, Any]) -> None:
        self.append([self._gap_line(gap)])

    def append(self, lines: list[bytes]) -> None:
        """Append lines in order; while the disk refuses, they wait in the spool."""
        if not lines:
            return
        if self.spool.lines:
            self.spool.add(lines)
            return
        try:
            self.writer.append(b"".join(lines))
        except DiskFull as exc:
            self.spool.add(lines)
            log.error("disk_full", error=str(exc), spooled=len(self.spool.lines),
                      hint="free space on the log dir's filesystem; recording resumes by itself")
            self.on_disk_full()
            return
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending += len(lines)
        self.recorded += len(lines)
        if self.cfg.daemon.fsync == "always":
            self.commit()
        elif self.pending >= self.cfg.daemon.commit_records:
            self.commit(wait=False)

    # --- durability ----------------------------------------------------------------

    def commit(self, wait: bool = True) -> None:
        """fsync what was appended; ``wait=False`` lets the loop go on while the disk works."""
        self.writer.commit(self.seq - len(self.spool.lines), wait)  # spooled lines are the newest
        self.pending = 0

    @property
    def commit_due(self) -> float | None:
        """When (monotonic) the group commit of what is pending falls due; None if nothing is."""
        return self.pending_since + self.cfg.daemon.commit_interval_ms / 1000 if self.pending else None

    def commit_if_due(self) -> None:
        if self.pending and time.monotonic() >= self.commit_due:
            self.commit(wait=False)

    @property
    def committed_seq(self) -> int:
        """Every record up to this seq has been fsynced (or, with ``--fsync off``, handed to the OS)."""
        return self.writer.durable

    def rotate_if_due(self) -> bool:
        """Close the active segment into ``segments/`` when it is big or old enough; True if it did."""
        storage = self.cfg.storage
        if self.spool.lines or not self.writer.should_rotate(storage.rotate_bytes, storage.rotate_age_s, time.time()):
            return False
        self.commit()
        log.info("rotated", segment=str(self.writer.rotate()))
        return True

    # --- a full disk ---------------------------------------------------------------

    def retry_spool(self) -> None:
        """Write as much of what the disk refused as fits now, then what had to be dropped as a gap."""
        if not self.spool.lines:
            if self.unwritten_manifest:
                self.write_manifest(*self.unwritten_manifest)
            return
        written = self.writer.append_fitting(self.spool.lines)
        if not written:
            return
        self.spool.take(written)
        self.recorded += written
        self.commit()
        if self.spool.lines:
            log.warning("disk_space_short", written=written, still_held=len(self.spool.lines))
            return
        log.info("disk_space_back", written=written)
        dropped = self.spool.take_dropped()
        if dropped:
            self.record_gap({"reason": "disk_full", **dropped})
        self.reserve.keep()
        if self.deferred_checkpoint:
            self.checkpoint_when_possible(self.deferred_checkpoint)

    # --- checkpoints ---------------------------------------------------------------

    def checkpoint(self, reason: str, label: str | None = None) -> dict[str, Any]:
        """Record a ``$persist/checkpoint`` record, commit, and write its manifest.

        The record is inside the checkpoint it announces; only bytes appended
        since the last checkpoint are read to hash. A full disk raises
        ``DiskFull`` before anything is recorded; a manifest that finds no room
        is written once there is some (``unwritten_manifest``).
        """
        if self.spool.lines:
            raise DiskFull(errno.ENOSPC, f"the disk under {self.log.root} is full: no checkpoint until space returns")
        if label:
            checkpoints.check_label(self.log, label)  # refused before anything is recorded
        ident = checkpoints.new_id(self.log, time.time(), self.seq + 1)
        self.record_system("checkpoint", {"id": ident, "reason": reason, "label": label})
        if self.spool.lines:  # the record itself found no room: it is written, and checkpointed, later
            raise DiskFull(errno.ENOSPC, f"the disk under {self.log.root} is full: checkpoint {ident} waits for space")
        self.commit()
        self.checkpointed_seq = self.seq
        closed = [(p.name, p, p.stat().st_size) for p in sorted(self.log.segments.glob("*.jsonl"))]
        active = [] if self.writer.first_seq is None else [
            (segment_name(self.writer.first_seq), self.log.active, self.writer.size)]
        manifest = self.write_manifest(checkpoints.Cut(self.seq, closed + active), reason, label, ident)
        if manifest is None:
            raise DiskFull(errno.ENOSPC, f"checkpoint {ident} is recorded; its manifest is written once space returns")
        return {"checkpoint": {k: manifest[k] for k in ("id", "label", "reason", "created_at", "last_seq")}}

    def write_manifest(self, cut: checkpoints.Cut, reason: str, label: str | None, ident: str) -> dict | None:
        """Write a checkpoint's manifest; with no room for it, keep it to write later and return None."""
        try:
            manifest = checkpoints.write(self.log, cut, self.hasher, reason, label, ident)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            self.unwritten_manifest = (cut, reason, label, ident)
            log.error("checkpoint_manifest_unwritten", id=ident, error=str(exc),
                      hint="free space on the log dir's filesystem; the manifest is written then")
            return None
        self.unwritten_manifest = None
        self.last_checkpoint = manifest
        pruned = checkpoints.prune(self.log, self.cfg.checkpoint.keep) if not label else []
        log.info("checkpoint", id=ident, reason=reason, label=label, last_seq=cut.last_seq, pruned=len(pruned))
        return manifest

    def checkpoint_when_possible(self, reason: str) -> None:
        """A checkpoint from the timer, SIGUSR1 or shutdown: a full disk puts it off, never stops recording."""
        try:
            self.checkpoint(reason)
            self.deferred_checkpoint = None
        except DiskFull as exc:
            self.deferred_checkpoint = reason
            log.warning("checkpoint_deferred", reason=reason, error=str(exc))

    def checkpoint_if_new(self) -> None:
        """The timer's checkpoint: only when something arrived since the last one."""
        if self.seq > self.checkpointed_seq:
            self.checkpoint_when_possible("timer")

    # --- stop ----------------------------------------------------------------------

    def stop(self, undrained: dict[str, Any]) -> None:
        """The last records: what a stop could not drain, what a full disk held, a checkpoint, ``stop``.

        On a full disk the held lines are counted in a gap (their seqs reused:
        they never reached the disk) and the reserve makes room for it.
        """
        if undrained["dropped"]:
            log.error("shutdown_backlog_dropped", **undrained, hint="the backlog was larger than a stop can drain")
            self.record_gap({"reason": "shutdown", **undrained})
        self.retry_spool()
        lost = self.spool.abandon()
        if lost:
            self.seq -= lost["held_in_memory"]
            self.reserve.release()
            log.error("disk_full_at_stop", **lost, hint="free space on the log dir's filesystem")
            self.record_gap({"reason": "disk_full", **lost})
        else:
            self.checkpoint_when_possible("shutdown")
        self.record_system("stop", {"pid": os.getpid(), "recorded": self.recorded})
        if self.spool.lines:
            log.error("stop_record_unwritten", lines=len(self.spool.lines),
                      hint="no room even for the stop record; the next start records the downtime as a gap")
        self.commit()

    def close(self) -> None:
        self.writer.close()

    def status(self) -> dict[str, Any]:
        return {
            "last_seq": self.seq,
            "committed_seq": self.committed_seq,
            "recorded": self.recorded,
            "redaction": None if self.redact is None else {"rules": len(self.redact.rules), "records": self.redacted},
            "gaps": self.gaps,
            "fsync": self.writer.fsync,
            "disk_full": bool(self.spool.lines),
            "spooled": len(self.spool.lines),
            "checkpoint_deferred": self.deferred_checkpoint,
            "dropped": self.spool.dropped,
            "active_segment_bytes": self.writer.size,
            "last_checkpoint": None if self.last_checkpoint is None else {
                k: self.last_checkpoint[k] for k in ("id", "label", "reason", "created_at", "last_seq")},
        }

