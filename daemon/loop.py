"""The daemon's main loop: receive a batch → enrich → encode → append → commit.

``Recorder.run()`` is the one loop that receives, hands batches to the writer
and acts, at safe points between batches, on what signal handlers and the
control socket asked for (stop, reload). Signal handlers only note the signal
(through ``signal.set_wakeup_fd``); no work happens inside them, and shutdown
is the same code path as the end of a normal batch.
"""

from __future__ import annotations

import calendar
import errno
import fcntl
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from persist.daemon import enrich, logs, memory
from persist.daemon.bus import Bus
from persist.daemon.config import Config
from persist.daemon.control import ControlServer, sender_seq_handler
from persist.daemon.gaps import Outage, SenderSequences
from persist.daemon.index.indexer import IndexerProcess
from persist.daemon.log import checkpoints, reader, retention
from persist.daemon.log.agents import Presence
from persist.daemon.log.layout import LogDir, segment_name
from persist.daemon.log.record import Message, encode, frames_sha256, is_system, iso_utc, system_message
from persist.daemon.log.store import DISK_FULL_ERRNOS, DiskFull, SegmentWriter, repair_tail
from persist.daemon.replay_marks import ReplayMarks
from persist.daemon.sdnotify import Notifier
from persist.daemon.spool import Reserve, Spool

BATCH = 1000  # messages taken from the socket per turn of the loop
BATCH_BYTES = 8 << 20  # ... or fewer: a batch of big messages is bounded in bytes, not only in count
RELEASE_AFTER_BYTES = 4 << 20  # a batch this large gives its memory back at once
DRAIN_SECONDS = 2.5  # at shutdown, how long queued messages are still recorded
COUNT_SECONDS = 1.0  # ... then how long what is left is counted for the gap record (SIGTERM to exit: < 5 s)
RETENTION_EVERY_S = 60.0  # how often storage.retention is applied (and right after each rotation)
log = structlog.get_logger("persist.daemon")


class Recorder:
    """Records one log directory; built by ``main``, driven by ``run()``."""

    def __init__(self, cfg: Config, reload: Callable[[], Config], launched: bool = False) -> None:
        self.cfg = cfg
        self.launched = launched  # started by the launcher: stop once no agent is left
        self.idle_since: float | None = None
        self.stop_requested = False
        self.notify = Notifier()
        self.reload_config = reload
        self.log = LogDir(cfg.log_dir)
        self.writer = SegmentWriter(self.log, cfg.daemon.fsync)
        self.enrich = enrich.pipeline(cfg.enrich)
        self.senders = SenderSequences()
        self.outage = Outage()
        self.spool = Spool(cfg.storage.backlog_bytes)
        self.reserve = Reserve(self.log.recovery / "space.reserve")
        self.replay_marks = ReplayMarks()
        self.deferred_checkpoint: str | None = None  # a checkpoint the full disk put off
        self.unwritten_manifest: tuple | None = None  # a checkpoint recorded whose manifest found no room
        self.seq = 0
        self.pending = 0  # records appended since the last commit
        self.pending_since = 0.0
        self.behind = False  # the receive queue held more than a batch: a burst is being worked through
        self.second_release = 0.0  # when to give memory back once more after a burst
        self.started = time.time()
        self.recorded = 0
        self.gaps = 0
        self.rate = deque(maxlen=11)  # (time, recorded) once a second
        self.signals: list[int] = []
        self.hasher = checkpoints.Hasher()
        self.checkpointed_seq = 0  # seq of the last $persist/checkpoint record
        self.next_checkpoint = time.monotonic() + cfg.checkpoint.interval
        self.last_checkpoint: dict[str, Any] | None = None
        self.next_retention = 0.0
        self.ctx = zmq.Context()

    # --- start -----------------------------------------------------------------

    def start(self) -> None:
        """Repair what a crash left, resume ``seq``, open the bus and the control socket."""
        self.log.create()
        repaired = repair_tail(self.log.active, self.log.recovery)
        last = reader.last_record(self.log)
        self.seq = last.seq if last else 0
        active = reader.first_record(self.log.active)
        self.writer.open(active.seq if active else None, _epoch(active.rec["received_at"]) if active else None)
        self.bus = Bus(self.ctx, self.cfg.daemon)
        self.control = ControlServer(
            self.ctx,
            self.log.control_endpoint,
            {"ping": lambda _: {"pong": True}, "status": self.status,
             "checkpoint": lambda label: self.checkpoint("manual", label or None),
             "replay_expect": self.replay_marks.expect, "sender_seq": sender_seq_handler(self.senders)},
        )
        self.last_checkpoint = checkpoints.latest(self.log)
        self.wakeup_r, wakeup_w = socket.socketpair()
        wakeup_w.setblocking(False)
        self.wakeup_w = wakeup_w
        signal.set_wakeup_fd(wakeup_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, self._note_signal)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit is a full disk (EFBIG), not death
        self.poller = zmq.Poller()
        for s in (self.bus.sock, self.bus.monitor, self.control.sock, self.wakeup_r.fileno()):
            self.poller.register(s, zmq.POLLIN)
        if repaired:
            log.warning("repaired_torn_tail", file=str(repaired.path), bytes=repaired.bytes,
                        quarantined=str(repaired.quarantined))
            self.record_system("recovered", {"file": repaired.path.name, "bytes_quarantined": repaired.bytes,
                                             "lines_quarantined": repaired.lines,
                                             "quarantined_to": str(repaired.quarantined.relative_to(self.log.root)),
                                             "resumed_after_seq": self.seq})
        if last is not None and not (is_system(last.rec) and last.rec["topic"] == "$persist/stop"):
            self.record_gap({"reason": "not_running", "from": last.rec["received_at"],
                             "to": iso_utc(time.time_ns()), "last_seq_before": last.seq})
        self.record_system("start", {"pid": os.getpid(), "config": self.cfg.source,
                                     "endpoints": self.bus.endpoints, "resumed_after_seq": self.seq})
        self.commit()
        self.reserve.keep()
        self.presence = Presence(self.log)
        self.indexer = IndexerProcess(self.log)
        if self.cfg.index.enabled:
            self.indexer.start()
        self.notify.ready(f"recording into {self.log.root}")
        log.info("recording", log_dir=str(self.log.root), endpoints=self.bus.endpoints,
                 subscribe=self.bus.subscriptions, fsync=self.cfg.daemon.fsync, next_seq=self.seq + 1)

    def _note_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    # --- the loop --------------------------------------------------------------

    def run(self) -> None:
        """Record until SIGTERM/SIGINT; then drain, commit and return."""
        stopping = False
        while not (stopping or self.stop_requested):
            ready = dict(self.poller.poll(self._timeout_ms()))
            received = 0
            if self.bus.sock in ready:
                batch, nbytes = self.bus.receive(BATCH, BATCH_BYTES)
                self.record_batch(batch)
                received = BATCH if nbytes >= BATCH_BYTES else len(batch)
                if nbytes >= RELEASE_AFTER_BYTES:
                    del batch
                    memory.release()
            self.note_backlog(received)
            if self.bus.monitor in ready:
                self.note_bus_events()
            if self.control.sock in ready:
                self.control.serve()
            if self.wakeup_r.fileno() in ready:
                stopping = self.act_on_signals()
            self.commit_if_due()
            self.housekeeping()
            self.notify.tick(self.status_line)
        self.shutdown()

    def note_backlog(self, received: int) -> None:
        """Once a burst has been worked through (a batch short of full, or none), give the
        memory its queue took back to the OS; and once more a second later, for what was
        still being freed the first time."""
        if received == BATCH:
            self.behind = True
            self.second_release = time.monotonic() + 1.0
        elif self.behind:
            self.behind = False
            memory.release()
        elif self.second_release and time.monotonic() >= self.second_release:
            self.second_release = 0.0
            memory.release()

    def _timeout_ms(self) -> int:
        wait = 1000
        if self.pending:
            due = self.pending_since + self.cfg.daemon.commit_interval_ms / 1000
            wait = max(0, int((due - time.monotonic()) * 1000) + 1)
        watchdog = self.notify.timeout_ms()
        return wait if watchdog is None else min(wait, watchdog)

    def record_batch(self, batch: list[list[bytes]]) -> None:
        """Enrich and encode each message, then append the whole batch at once."""
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
        for frames in batch:
            msg = parse(frames, received_ns)
            meta = enrich(msg)
            if "sender_seq" in meta:
                gap = self.senders.observe(meta.get("sender"), meta["sender_seq"])
                if gap:
                    lines.append(self._gap_line(gap, received_ns))
            if marks.pending:  # a replay is under way: is this one of its messages?
                sha256 = frames_sha256(frames)
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
            self.next_retention = 0.0  # storage.retention, if set, may make room now
            return
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending += len(lines)
        self.recorded += len(lines)
        if self.cfg.daemon.fsync == "always":
            self.commit()
        elif self.pending >= self.cfg.daemon.commit_records:
            self.commit(wait=False)

    def commit(self, wait: bool = True) -> None:
        """fsync what was appended; ``wait=False`` lets the loop go on while the disk works."""
        self.writer.commit(self.seq - len(self.spool.lines), wait)  # spooled lines are the newest
        self.pending = 0

    @property
    def committed_seq(self) -> int:
        """Every record up to this seq has been fsynced (or, with ``--fsync off``, handed to the OS)."""
        return self.writer.durable

    def commit_if_due(self) -> None:
        due = self.pending_since + self.cfg.daemon.commit_interval_ms / 1000
        if self.pending and time.monotonic() >= due:
            self.commit(wait=False)

    def note_bus_events(self) -> None:
        for what, endpoint in self.bus.events():
            if what == "disconnected":
                log.warning("bus_disconnected", endpoint=endpoint)
                self.outage.disconnected(endpoint)
            else:
                gap = self.outage.connected(endpoint)
                log.info("bus_connected", endpoint=endpoint)
                if gap:
                    self.record_gap(gap)

    def housekeeping(self) -> None:
        """Once-a-second work: checkpoint when due, retry the spool, rotate, sample the rate."""
        if time.monotonic() >= self.next_checkpoint:
            self.next_checkpoint = time.monotonic() + self.cfg.checkpoint.interval
            if self.seq > self.checkpointed_seq:
                self.checkpoint_when_possible("timer")
        now = time.time()
        if self.rate and now - self.rate[-1][0] < 1.0:
            return
        self.rate.append((now, self.recorded))
        self.note_agents()
        self.indexer.check()
        self.replay_marks.expire(time.monotonic())
        if self.spool.lines:
            self.retry_spool()
        elif self.unwritten_manifest:
            self.write_manifest(*self.unwritten_manifest)
        storage = self.cfg.storage
        if not self.spool.lines and self.writer.should_rotate(storage.rotate_bytes, storage.rotate_age_s, now):
            self.commit()
            closed = self.writer.rotate()
            log.info("rotated", segment=str(closed))
            self.next_retention = 0.0
        if now >= self.next_retention:
            self.next_retention = now + RETENTION_EVERY_S
            self.apply_retention()

    def apply_retention(self) -> None:
        """Delete the closed segments ``storage.retention`` no longer keeps; log and record each."""
        try:
            deleted = retention.apply(self.log, retention.parse(self.cfg.storage.retention))
        except OSError as exc:
            log.error("retention_failed", error=str(exc), hint="check the permissions of the log dir's segments/")
            return
        for info in deleted:
            log.warning("retention_deleted", **info)
            self.record_system("retention", info)

    def note_agents(self, rescan: bool = False) -> None:
        """Record agents joining and leaving; a launched daemon stops when the last has gone."""
        if rescan:
            self.presence.changed.set()
        for change in self.presence.poll(check_pids=True):
            log.info("agent_" + change.event, agent=change.info.get("agent"), pid=change.info.get("pid"))
            self.record_system("agent", {"event": change.event, **change.info})
        if not self.launched:
            return
        if self.presence.known:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = time.monotonic()
        elif time.monotonic() - self.idle_since >= self.cfg.launcher.grace_s and not rescan:
            self.stop_if_still_alone()

    def stop_if_still_alone(self) -> None:
        """Stop, unless an agent is registering right now.

        Holding ``launcher.lock`` from this last look until exit means a launcher
        either registered before it (and is seen) or waits until this daemon is
        gone and starts a new one: no agent is ever handed a daemon that is leaving.
        """
        fd = os.open(self.log.root / "launcher.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a launcher is at work: look again next second
            return
        self.note_agents(rescan=True)
        if self.presence.known:
            os.close(fd)
            return
        self.launcher_lock_fd = fd  # held until the process exits
        log.info("stopping", reason="no agents left", grace_s=self.cfg.launcher.grace_s)
        self.stop_requested = True

    def status_line(self) -> str:
        rate = self.status()["rate"]
        return f"recording, {rate:.0f} msg/s, last seq {self.seq}" + (", DISK FULL" if self.spool.lines else "")

    def retry_spool(self) -> None:
        """Write as much of what the disk refused as fits now, then what had to be dropped as a gap."""
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

    def act_on_signals(self) -> bool:
        """Handle noted signals at this safe point; True when asked to stop."""
        try:
            while self.wakeup_r.recv(512, socket.MSG_DONTWAIT):
                pass
        except BlockingIOError:
            pass
        noted, self.signals = self.signals, []
        for signum in noted:
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("stopping", signal=signal.Signals(signum).name)
                return True
            if signum == signal.SIGHUP:
                self.reload()
            if signum == signal.SIGUSR1:
                self.checkpoint_when_possible("signal")
        return False

    def checkpoint(self, reason: str, label: str | None = None) -> dict[str, Any]:
        """Record a ``$persist/checkpoint`` record, commit, and write its manifest.

        The record is inside the checkpoint it announces; only bytes appended
        since the last checkpoint are read to hash. A full disk raises
        ``DiskFull`` before anything is recorded; a manifest that finds no room
        is written once there is some (``unwritten_manifest``).
        """
        if self.spool.lines:
            raise DiskFull(errno.ENOSPC, f"the disk under {self.log.root} is full: no checkpoint until space returns")
        ident = checkpoints.new_id(self.log, time.time(), self.seq + 1)
        self.record_system("checkpoint", {"id": ident, "reason": reason, "label": label})
        if self.spool.lines:  # the record itself found no room: it is written, and checkpointed, later
            raise DiskFull(errno.ENOSPC, f"the disk under {self.log.root} is full: checkpoint {ident} waits for space")
        self.commit()
        self.checkpointed_seq = self.seq
        closed = [(p.name, p, p.stat().st_size) for p in sorted(self.log.segments.glob("*.jsonl"))]
        active = [] if self.writer.first_seq is None else [
            (segment_name(self.writer.first_seq), self.log.active, self.writer.size)]
        cut = checkpoints.Cut(self.seq, closed + active)
        manifest = self.write_manifest(cut, reason, label, ident)
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

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply subscriptions, enrichment, fsync and storage."""
        try:
            cfg = self.reload_config()
        except Exception as exc:
            log.error("reload_failed", error=str(exc), hint="fix the config; the old one stays in force")
            return
        self.cfg.enrich, self.cfg.storage, self.cfg.checkpoint = cfg.enrich, cfg.storage, cfg.checkpoint
        for key in ("fsync", "commit_interval_ms", "commit_records", "subscribe", "log_level"):
            setattr(self.cfg.daemon, key, getattr(cfg.daemon, key))
        logs.set_level(cfg.daemon.log_level)
        self.writer.fsync = cfg.daemon.fsync
        self.enrich = enrich.pipeline(cfg.enrich)
        self.bus.subscribe(cfg.daemon.subscribe)
        self.spool.limit = cfg.storage.backlog_bytes
        self.next_retention = 0.0  # a new retention acts at once
        log.info("reloaded", config=cfg.source, subscribe=cfg.daemon.subscribe, fsync=cfg.daemon.fsync)

    # --- stop ------------------------------------------------------------------

    def shutdown(self) -> None:
        """Drain what the socket still holds, write it, write a stop record, commit.

        Whatever cannot be written in time (a backlog larger than the drain
        allows, lines held while the disk is full) is counted in a gap record
        before the stop record; on a full disk the reserve makes room for both.
        """
        self.notify.stopping()
        started = time.monotonic()
        while time.monotonic() < started + DRAIN_SECONDS and (batch := self.bus.receive(BATCH, BATCH_BYTES)[0]):
            self.record_batch(batch)
        left = self.bus.discard(started + DRAIN_SECONDS + COUNT_SECONDS)
        if left["dropped"]:
            log.error("shutdown_backlog_dropped", **left, hint="the backlog was larger than a stop can drain")
            self.record_gap({"reason": "shutdown", **left})
        if self.spool.lines:
            self.retry_spool()
        lost = self.spool.abandon()
        if lost:
            self.seq -= lost["held_in_memory"]  # those lines never reached the disk: their seqs are reused
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
        self.indexer.stop()
        self.close()
        log.info("stopped", recorded=self.recorded, last_seq=self.seq)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.presence.close()
        self.bus.close()
        self.control.close()
        self.writer.close()
        self.wakeup_r.close()
        self.wakeup_w.close()
        self.ctx.term()

    # --- status ----------------------------------------------------------------

    def status(self, _arg: str = "") -> dict[str, Any]:
        rate = 0.0
        if len(self.rate) >= 2:
            (t0, n0), (t1, n1) = self.rate[0], self.rate[-1]
            rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        return {
            "pid": os.getpid(),
            "log_dir": str(self.log.root.resolve()),
            "started_at": iso_utc(int(self.started * 1e9)),
            "uptime_s": round(time.time() - self.started, 3),
            "last_seq": self.seq,
            "committed_seq": self.committed_seq,
            "recorded": self.recorded,
            "rate": round(rate, 1),
            "gaps": self.gaps,
            "endpoints": self.bus.endpoints,
            "subscribe": self.bus.subscriptions,
            "fsync": self.cfg.daemon.fsync,
            "disk_full": bool(self.spool.lines),
            "spooled": len(self.spool.lines),
            "checkpoint_deferred": self.deferred_checkpoint,
            "dropped": self.spool.dropped,
            "active_segment_bytes": self.writer.size,
            "launched": self.launched,
            "indexer_pid": self.indexer.pid,
            "indexer_restarts": self.indexer.restarts,
            "agents": sorted(str(a.get("agent")) for a in self.presence.known.values()),
            "last_checkpoint": None if self.last_checkpoint is None else {
                k: self.last_checkpoint[k] for k in ("id", "label", "reason", "created_at", "last_seq")},
        }


def _epoch(iso: str) -> float:
    """Seconds since the epoch for a record's ``received_at``."""
    return calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S"))
