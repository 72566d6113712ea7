"""The recorder: one loop that polls, records, and acts on what it was asked, at safe points.

``Recorder.run()`` is the whole loop, as rq's ``Worker.work()`` and gunicorn's
``Arbiter.run()`` are: wait on the bus, the control socket and the signal
pipe; hand each batch from the bus to the journal (receive → enrich → append,
see ``journal``); commit when a group commit is due; answer control requests;
look signals up in the signal → step map; run the timers that are due
(checkpoint, rotation, retention, spool retry, agents, children, memory,
rate). Stopping is the same path as any turn of the loop, then ``shutdown``.
The parts: ``journal`` (what is written), ``timers``, ``agent_watch``,
``supervise`` (child processes), ``signals``, ``bus``, ``control``.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from persist.daemon import enrich, logs, memory, redact
from persist.daemon.agent_watch import AgentWatch
from persist.daemon.archive import archive_child
from persist.daemon.archive import state as archive_state
from persist.daemon.bus import Bus
from persist.daemon.config import Config
from persist.daemon.control import ControlServer, sender_seq_handler
from persist.daemon.gaps import Outage
from persist.daemon.index import indexer
from persist.daemon.journal import Journal
from persist.daemon.log import retention
from persist.daemon.log.layout import LogDir
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.record import is_system, iso_utc
from persist.daemon.sdnotify import Notifier
from persist.daemon.signals import Signals
from persist.daemon.timers import Timers

BATCH = 1000  # messages taken from the socket per turn of the loop
BATCH_BYTES = 8 << 20  # ... or fewer: a batch of big messages is bounded in bytes, not only in count
RELEASE_AFTER_BYTES = 4 << 20  # a batch this large gives its memory back at once
STOP_SECONDS = 4.0  # a stop records the backlog for daemon.stop_drain_s, counts the rest until this, then exits
RETENTION_EVERY_S = 60.0  # how often storage.retention is applied (and at once after a rotation)
log = get_logger("persist.daemon")


class Recorder:
    """Records one log directory; built by ``main``, driven by ``start()`` then ``run()``."""

    def __init__(self, cfg: Config, reload: Callable[[], Config], launched: bool = False) -> None:
        self.cfg = cfg
        self.reload_config = reload
        self.launched = launched
        self.log = LogDir(cfg.log_dir)
        self.journal = Journal(self.log, cfg, enrich.pipeline(cfg.enrich), redact.from_config(cfg, self.log.root))
        self.outage = Outage()
        self.notify = Notifier()
        self.memory = memory.AfterBursts(RELEASE_AFTER_BYTES)
        self.rate: deque[tuple[float, int]] = deque(maxlen=11)  # (time, recorded) once a second
        self.started = time.time()
        self.stopping = False
        self.ctx = zmq.Context()

    def start(self) -> None:
        """Repair what a crash left, resume ``seq``, open the bus and the control socket, say so."""
        self.log.create()
        journal = self.journal
        repaired, last = journal.open()
        self.bus = Bus(self.ctx, self.cfg.daemon, self.cfg.curve)
        self.control = ControlServer(self.ctx, self.log.control_endpoint, {
            "ping": lambda _: {"pong": True}, "status": self.status,
            "checkpoint": lambda label: journal.checkpoint("manual", label or None),
            "replay_expect": journal.replay_marks.expect, "sender_seq": sender_seq_handler(journal.senders)})
        self.signals = Signals()
        self.on_signal = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop, signal.SIGHUP: self.reload,
                          signal.SIGUSR1: lambda: journal.checkpoint_when_possible("signal")}
        self.poller = zmq.Poller()
        for s in (self.bus.sock, self.bus.monitor, self.control.sock, self.signals.fileno()):
            self.poller.register(s, zmq.POLLIN)
        if repaired:
            log.warning("repaired_torn_tail", file=str(repaired.path), bytes=repaired.bytes,
                        quarantined=str(repaired.quarantined))
            journal.record_system("recovered", {
                "file": repaired.path.name, "bytes_quarantined": repaired.bytes, "lines_quarantined": repaired.lines,
                "quarantined_to": str(repaired.quarantined.relative_to(self.log.root)), "resumed_after_seq": journal.seq})
        if last is not None and not (is_system(last.rec) and last.rec["topic"] == "$persist/stop"):
            journal.record_gap({"reason": "not_running", "from": last.rec["received_at"],
                                "to": iso_utc(time.time_ns()), "last_seq_before": last.seq})
        journal.record_system("start", {"pid": os.getpid(), "config": self.cfg.source,
                                        "endpoints": self.bus.endpoints, "resumed_after_seq": journal.seq})
        journal.commit()
        journal.reserve.keep()
        self.agents = AgentWatch(self.log, journal.record_system, self.launched, lambda: self.cfg.launcher.grace_s)
        self.indexer = indexer.child(self.log)
        if self.cfg.index.enabled:
            self.indexer.start()
        self.shipper = archive_child.child(self.log, self.cfg.archive.url, self.cfg.archive.node_name,
                                            self.cfg.archive.timeout_s)
        if self.cfg.archive.url:
            self.shipper.start()
        self.timers = self.timer_table()
        self.notify.ready(f"recording into {self.log.root}")
        log.info("recording", log_dir=str(self.log.root), endpoints=self.bus.endpoints,
                 subscribe=self.bus.subscriptions, fsync=self.cfg.daemon.fsync, next_seq=journal.seq + 1)

    def timer_table(self) -> Timers:
        journal, timers = self.journal, Timers()
        journal.on_disk_full = lambda: timers.now("retention")  # storage.retention, if set, may make room
        timers.add("checkpoint", lambda: self.cfg.checkpoint.interval, journal.checkpoint_if_new,
                   first=self.cfg.checkpoint.interval)
        timers.add("spool", 1.0, journal.retry_spool)
        timers.add("rotation", 1.0, lambda: journal.rotate_if_due() and timers.now("retention"))
        timers.add("retention", RETENTION_EVERY_S, self.apply_retention)
        timers.add("agents", 1.0, lambda: self.agents.tick() and self.stop())
        timers.add("children", 1.0, lambda: (self.indexer.check(), self.shipper.check()))
        timers.add("replays", 1.0, lambda: journal.replay_marks.expire(time.monotonic()))
        timers.add("memory", 0.25, self.memory.tick)
        timers.add("rate", 1.0, lambda: self.rate.append((time.time(), journal.recorded)))
        return timers

    # --- the loop --------------------------------------------------------------------

    def run(self) -> None:
        """Record until asked to stop; then drain, commit and return."""
        while not self.stopping:
            ready = dict(self.poller.poll(self.timeout_ms()))
            if self.bus.sock in ready or self.bus.inbox:
                batch, nbytes = self.bus.receive(BATCH, BATCH_BYTES)
                self.journal.record(batch)
                self.memory.batch_done(len(batch) == BATCH or nbytes >= BATCH_BYTES, nbytes)
            if self.bus.monitor in ready:
                self.note_bus_events()
            if self.control.sock in ready:
                self.control.serve()
            if self.signals.fileno() in ready:
                for signum in self.signals.take():
                    self.on_signal[signum]()
            self.journal.commit_if_due()
            self.timers.due()
            self.notify.tick(self.status_line)
        self.shutdown()

    def timeout_ms(self) -> int:
        if self.bus.inbox:  # received, not yet recorded: look at the rest, but do not wait
            return 0
        wait = min(1.0, self.timers.soon())
        if (due := self.journal.commit_due) is not None:
            wait = min(wait, max(0.0, due - time.monotonic()))
        watchdog = self.notify.timeout_ms()
        return int(wait * 1000) + 1 if watchdog is None else min(int(wait * 1000) + 1, watchdog)

    def note_bus_events(self) -> None:
        for what, endpoint in self.bus.events():
            if what == "disconnected":
                log.warning("bus_disconnected", endpoint=endpoint)
                self.outage.disconnected(endpoint)
            else:
                log.info("bus_connected", endpoint=endpoint)
                if gap := self.outage.connected(endpoint):
                    self.journal.record_gap(gap)

    def apply_retention(self) -> None:
        """Delete the closed segments ``storage.retention`` no longer keeps; log and record each."""
        try:
            waits = self.cfg.archive.url and self.cfg.archive.retention_waits
            deleted = retention.apply(self.log, retention.parse(self.cfg.storage.retention),
                                      confirmed_before=archive_state.confirmed_before(self.log) if waits else "")
        except OSError as exc:
            log.error("retention_failed", error=str(exc), hint="check the permissions of the log dir's segments/")
            return
        for info in deleted:
            log.warning("retention_deleted", **info)
            self.journal.record_system("retention", info)

    # --- what signals ask --------------------------------------------------------------

    def stop(self) -> None:
        log.info("stopping")
        self.stopping = True

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply subscriptions, enrichment, redaction, fsync, storage and log level;
        read the CURVE allow-list again."""
        try:
            cfg = self.reload_config()
            redactor = redact.from_config(cfg, self.log.root)
        except Exception as exc:
            log.error("reload_failed", error=str(exc), hint="fix the config; the old one stays in force")
            return
        self.cfg.enrich, self.cfg.storage, self.cfg.checkpoint = cfg.enrich, cfg.storage, cfg.checkpoint
        for key in ("fsync", "commit_interval_ms", "commit_records", "subscribe", "log_level"):
            setattr(self.cfg.daemon, key, getattr(cfg.daemon, key))
        logs.set_level(cfg.daemon.log_level)
        self.journal.writer.fsync = cfg.daemon.fsync
        self.journal.enrich = enrich.pipeline(cfg.enrich)
        self.cfg.redact, self.journal.redact = cfg.redact, redactor
        self.journal.spool.limit = cfg.storage.backlog_bytes
        self.bus.subscribe(cfg.daemon.subscribe)
        self.bus.reload_allow_list()
        self.timers.now("retention")  # a new retention acts at once
        log.info("reloaded", config=cfg.source, subscribe=cfg.daemon.subscribe, fsync=cfg.daemon.fsync)

    # --- stop ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Record what the socket still holds for a while, count the rest, write the last records, close."""
        self.notify.stopping()
        started = time.monotonic()
        drain = started + self.cfg.daemon.stop_drain_s
        while time.monotonic() < drain and (batch := self.bus.receive(BATCH, BATCH_BYTES)[0]):
            self.journal.record(batch)
        self.journal.stop(self.bus.discard(started + STOP_SECONDS))
        self.indexer.stop()
        self.shipper.stop()
        self.signals.close()
        self.agents.close()
        self.bus.close()
        self.control.close()
        self.journal.close()
        self.ctx.term()
        log.info("stopped", recorded=self.journal.recorded, last_seq=self.journal.seq)

    # --- status ------------------------------------------------------------------------

    def status(self, _arg: str = "") -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "log_dir": str(self.log.root.resolve()),
            "started_at": iso_utc(int(self.started * 1e9)),
            "uptime_s": round(time.time() - self.started, 3),
            **self.journal.status(),
            "rate": round(self.msg_rate(), 1),
            "endpoints": self.bus.endpoints,
            "bus": self.bus.status(),
            "receive_queue": self.bus.waiting(),
            "curve": self.bus.curve_status(),
            "subscribe": self.bus.subscriptions,
            "launched": self.launched,
            "indexer_pid": self.indexer.pid,
            "indexer_restarts": self.indexer.restarts,
            "agents": self.agents.agents,
            "archive": archive_state.summary(self.log, self.journal.seq) if self.cfg.archive.url else None,
        }

    def msg_rate(self) -> float:
        if len(self.rate) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.rate[0], self.rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def status_line(self) -> str:
        return (f"recording, {self.msg_rate():.0f} msg/s, last seq {self.journal.seq}"
                + (", DISK FULL" if self.journal.spool.lines else ""))
