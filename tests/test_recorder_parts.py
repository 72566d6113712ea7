"""The recorder's parts, each on its own: the timer table, the journal, supervised children."""

from __future__ import annotations

import socket
import sys
import time

import orjson
import structlog

from persist.daemon import enrich
from persist.daemon.config import Config
from persist.daemon.journal import Journal
from persist.daemon.log import checkpoints, reader
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import is_system
from persist.daemon.supervise import Child
from persist.daemon.timers import Timers
from procs import eventually


def test_a_failed_tick_is_logged_and_the_other_timers_go_on():
    ran: list[str] = []
    timers = Timers()

    def broken() -> None:
        ran.append("broken")
        raise RuntimeError("kaput")

    timers.add("broken", 0.05, broken)
    timers.add("fine", 0.05, lambda: ran.append("fine"))
    with structlog.testing.capture_logs() as logged:
        timers.due()
        time.sleep(0.06)
        timers.due()
    assert ran == ["broken", "fine", "broken", "fine"], "a failing step is tried again next period; others run"
    failed = [e for e in logged if e["event"] == "tick_failed"]
    assert len(failed) == 2 and failed[0]["step"] == "broken" and "kaput" in failed[0]["error"]


def test_timers_say_when_the_next_is_due_and_can_be_made_due_at_once():
    timers = Timers()
    ran: list[str] = []
    timers.add("later", 60.0, lambda: ran.append("later"), first=60.0)
    assert 59 < timers.soon() <= 60
    timers.due()
    assert ran == []
    timers.now("later")
    assert timers.soon() == 0
    timers.due()
    assert ran == ["later"]


def test_the_journal_records_a_batch_its_own_records_and_a_checkpoint(tmp_path):
    cfg = Config()
    log = LogDir(tmp_path / "logs")
    log.create()
    journal = Journal(log, cfg, enrich.pipeline(cfg.enrich))
    journal.open()
    journal.record([[b"agent.chat", b'{"sender":"a","sender_seq":1}'], [b"solo"],
                    [b"agent.chat", b'{"sender":"a","sender_seq":4}']])
    reply = journal.checkpoint("manual", "here")
    journal.stop({"dropped": 0})
    journal.close()
    recs = [e.rec for e in reader.records(log)]
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    topics = [r["topic"] for r in recs]
    assert topics == ["agent.chat", "", "$persist/gap", "agent.chat", "$persist/checkpoint", "$persist/checkpoint",
                      "$persist/stop"], "a sender gap stands before the message that showed it"
    assert recs[2]["payload"]["missing"] == [2, 3] and all(is_system(r) for r in recs[4:])
    manifest = checkpoints.find(log, "here")
    assert manifest["id"] == reply["checkpoint"]["id"] and manifest["last_seq"] == 5
    assert journal.committed_seq == journal.seq == 7


def test_a_dead_child_is_restarted_and_counted(tmp_path):
    child = Child("sleeper", [sys.executable, "-c", "import sys; print('up'); sys.exit(3)"], tmp_path / "c.log")
    child.start()
    assert eventually(lambda: child.proc.poll() is not None, timeout=10) is not False
    child.check()
    assert child.restarts == 1 and (tmp_path / "c.log").stat().st_mode & 0o777 == 0o600
    eventually(lambda: child.proc.poll() is not None, timeout=10)
    child.check()
    assert child.restarts == 1, "the second restart waits its back-off"
    assert (tmp_path / "c.log").read_text().count("up") == 2
    child.stop()


def test_a_hostile_presence_file_is_ignored(tmp_path):
    from persist.daemon.agent_watch import Presence
    log = LogDir(tmp_path / "logs")
    log.create()
    presence = Presence(log)
    try:
        (presence.dir / "x.json").write_bytes(orjson.dumps({"agent": "x", "pid": "not a pid", "host": socket.gethostname()}))
        (presence.dir / "y.json").write_bytes(b"[1, 2]")
        presence.changed.set()
        changes = presence.poll(check_pids=True)
        assert [c.event for c in changes] == ["joined"] and changes[0].info["agent"] == "x"
    finally:
        presence.close()


def test_status_says_how_each_endpoint_is_and_when_the_last_message_came(start_daemon, broker, publish):
    daemon = start_daemon()
    (endpoint,) = eventually(lambda: [b for b in daemon.try_status().get("bus", []) if b["state"] == "connected"])
    assert endpoint["endpoint"] == broker.backend and endpoint["since"] and endpoint["last_message_at"] is None
    publish().join(daemon)
    assert daemon.status()["bus"][0]["last_message_at"] is not None
    broker.kill()
    (down,) = eventually(lambda: [b for b in daemon.try_status().get("bus", []) if b["state"] == "disconnected"])
    assert down["since"] >= endpoint["since"]
    assert daemon.stop() == 0
