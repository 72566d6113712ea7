"""The format library's record selection, statistics and time parsing, called directly (no daemon, no CLI)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import orjson
import pytest

from persist.daemon.log import checkpoints, reader, render, select, stats, times
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import Message, encode, system_message
from persist.daemon.log.store import SegmentWriter


class Log:
    """A log dir written by the library: ``say`` appends one message, ``system`` one of the daemon's own."""

    def __init__(self, root, start: float = 1_764_000_000.0) -> None:
        self.log = LogDir(root)
        self.log.create()
        self.writer = SegmentWriter(self.log, fsync="off")
        self.writer.open()
        self.seq = 0
        self.ns = int(start * 1e9)

    def _append(self, msg: Message, meta: dict) -> None:
        self.seq += 1
        self.ns += 1_000_000
        self.writer.append(encode(msg, self.seq, meta))

    def say(self, text: str, topic: str = "agent.chat", **meta) -> None:
        payload = orjson.dumps({"text": text, **{k: v for k, v in meta.items() if k == "sender"}})
        self._append(Message.from_frames([topic.encode(), payload], self.ns + 1_000_000), meta)

    def system(self, topic: str = "checkpoint") -> None:
        self._append(system_message(topic, {"n": self.seq}, self.ns + 1_000_000), {})

    def close(self) -> LogDir:
        self.writer.close()
        return self.log


@pytest.fixture
def chat(tmp_path):
    w = Log(tmp_path / "logs")
    w.say("hello", sender="a", thread_id="t1", tokens=10)
    w.system()
    w.say("how are you", topic="agent.other", sender="b", thread_id="t1", tokens=20)
    w.say("fine", sender="a", thread_id="t2", tokens=30)
    w.system()
    return w.close()


def texts(entries) -> list[str]:
    return [render.payload_text(e.rec, e.line) for e in entries]


# --- conversation_upto ---------------------------------------------------------


@pytest.mark.parametrize("last_seq, expected", [(0, []), (1, ["hello"]), (2, ["hello"]),
                                                (4, ["hello", "how are you", "fine"]),
                                                (99, ["hello", "how are you", "fine"])])
def test_conversation_upto_is_the_agents_records_up_to_the_seq(chat, last_seq, expected):
    assert texts(select.conversation_upto(chat, last_seq)) == expected


def test_conversation_upto_a_checkpoint_is_what_the_checkpoint_holds(tmp_path):
    w = Log(tmp_path / "logs")
    w.say("before")
    w.writer.commit()
    manifest = checkpoints.write(w.log, checkpoints.cut_from_files(w.log), checkpoints.Hasher(), "manual")
    w.say("after")
    log = w.close()
    assert texts(select.conversation_upto(log, manifest["last_seq"])) == ["before"]


# --- newest_fitting (thread --max-tokens) ----------------------------------------


@pytest.mark.parametrize("budget, kept, left_out", [
    (None, ["hello", "how are you", "fine"], 0),
    (1000, ["hello", "how are you", "fine"], 0),
    (60, ["hello", "how are you", "fine"], 0),
    (59, ["how are you", "fine"], 1),
    (50, ["how are you", "fine"], 1),
    (49, ["fine"], 2),
    (1, ["fine"], 2),  # the newest turn is kept even when it alone is over the budget
])
def test_newest_fitting_keeps_the_newest_turns_that_fit(chat, budget, kept, left_out):
    entries = list(select.conversation_upto(chat, 99))
    got, n = select.newest_fitting(entries, budget)
    assert (texts(got), n) == (kept, left_out)


def test_a_turn_without_meta_tokens_costs_a_quarter_of_its_line(tmp_path):
    w = Log(tmp_path / "logs")
    w.say("x" * 400)
    e = next(reader.records(w.close()))
    assert select.tokens(e) == len(e.line) // 4
    assert select.newest_fitting([], 10) == ([], 0)


# --- matches ------------------------------------------------------------------


@pytest.mark.parametrize("kw, expected", [
    ({}, ["hello", "$persist/checkpoint", "how are you", "fine", "$persist/checkpoint"]),
    ({"system": False}, ["hello", "how are you", "fine"]),
    ({"topic": "agent.chat"}, ["hello", "fine"]),
    ({"topic": ("agent.other", "agent.chat")}, ["hello", "how are you", "fine"]),
    ({"topic": "$persist/"}, ["$persist/checkpoint", "$persist/checkpoint"]),
    ({"sender": "a"}, ["hello", "fine"]),
    ({"thread": "t1", "system": False}, ["hello", "how are you"]),
])
def test_matches_filters_like_every_reading_command(chat, kw, expected):
    got = [e.rec["topic"] if e.rec["topic"].startswith("$") else render.payload_text(e.rec)
           for e in reader.records(chat) if select.matches(e.rec, **kw)]
    assert got == expected


def test_matches_since_and_until_compare_with_received_at(chat):
    stamps = [e.rec["received_at"] for e in reader.records(chat)]
    assert [e.seq for e in reader.records(chat) if select.matches(e.rec, since=stamps[1], until=stamps[3])] == [2, 3, 4]


# --- stats --------------------------------------------------------------------


def test_tally_counts_topics_and_senders_incrementally(tmp_path):
    w = Log(tmp_path / "logs", start=time.time() - 30)
    w.say("one", sender="a")
    w.say("two", topic="agent.other", sender="b")
    w.writer.commit()
    tally = stats.Tally()
    tally.update(w.log)
    w.say("three", sender="a")
    w.writer.commit()
    tally.update(w.log)
    data = tally.as_dict(w.close())
    assert data["records"] == 3
    assert data["topics"] == {"agent.chat": 2, "agent.other": 1}
    assert data["senders"] == {"a": 2, "b": 1}
    assert data["rate_last_minute"] == pytest.approx(3 / 60)
    assert tally.after == 3
    tally.update(w.log, now=time.time() + 3600)  # an hour later nothing is recent
    assert tally.as_dict(w.log)["rate_last_minute"] == 0


def test_summary_without_a_daemon(chat):
    manifest = checkpoints.write(chat, checkpoints.cut_from_files(chat), checkpoints.Hasher(), "manual", "mark")
    info = stats.summary(chat, None)
    assert info["running"] is False
    assert info["last_seq"] == 5
    assert info["last_record_at"] == reader.last_record(chat).rec["received_at"]
    assert info["last_checkpoint"]["id"] == manifest["id"] and info["last_checkpoint"]["label"] == "mark"
    assert info["log_bytes"] == stats.log_bytes(chat) == chat.active.stat().st_size
    assert info["disk_free_bytes"] > 0


def test_summary_takes_the_running_daemons_figures(chat):
    info = stats.summary(chat, {"ok": True, "pid": 42, "last_seq": 7})
    assert info["running"] and info["pid"] == 42 and info["last_seq"] == 7 and "ok" not in info


# --- times --------------------------------------------------------------------

NOW = datetime(2026, 11, 24, 19, 22, 1, 500000, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, expected", [
    ("15m", "2026-11-24T19:07:01.500000Z"),
    ("2 hours ago", "2026-11-24T17:22:01.500000Z"),
    ("1.5d", "2026-11-23T07:22:01.500000Z"),
    ("now", "2026-11-24T19:22:01.500000Z"),
    ("today", "2026-11-24T00:00:00.000000Z"),
    ("Yesterday", "2026-11-23T00:00:00.000000Z"),
    ("2026-11-24T19:22:01Z", "2026-11-24T19:22:01.000000Z"),
    ("2026-11-24T20:22:01+01:00", "2026-11-24T19:22:01.000000Z"),
    ("2026-11-24 19:22", "2026-11-24T19:22:00.000000Z"),  # no zone: UTC
])
def test_parse_when(text, expected):
    assert times.parse_when(text, NOW) == expected


@pytest.mark.parametrize("text, words", [("soon", "is not a time"), ("99999999999d", "before year 1")])
def test_parse_when_says_what_to_type_instead(text, words):
    with pytest.raises(ValueError, match=words):
        times.parse_when(text, NOW)


def test_epoch_of_a_record_time():
    assert times.epoch("2026-11-24T19:22:01.250000Z") == pytest.approx(NOW.timestamp() - 0.25)
    assert times.epoch("2026-11-24T19:22:01") == NOW.timestamp() - 0.5  # the log's times are UTC
    assert times.iso_utc(times.parse_iso("2026-11-24T19:22:01.5Z")) == "2026-11-24T19:22:01.500000Z"


# --- recent -------------------------------------------------------------------


@pytest.mark.parametrize("count, kw, expected", [
    (2, {}, ["fine", "$persist/checkpoint"]),
    (0, {}, []),
    (2, {"system": False}, ["how are you", "fine"]),
    (9, {"sender": "a"}, ["hello", "fine"]),
    (1, {"topic": "agent.other"}, ["how are you"]),
])
def test_recent_is_the_last_matching_records_oldest_first(chat, count, kw, expected):
    got = [e.rec["topic"] if e.rec["topic"].startswith("$") else render.payload_text(e.rec)
           for e in select.recent(chat, count, **kw)]
    assert got == expected
