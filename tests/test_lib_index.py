"""The index's library side called directly: bringing it up to date, rebuilding it, and who holds ``indexer.lock``."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pytest

from persist.daemon import index
from persist.daemon.log import reader
from persist.daemon.log.errors import SearchIndexError
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import Message, encode
from persist.daemon.log.store import SegmentWriter


def build(root, n: int, rotate_at: int | None = None) -> LogDir:
    log = LogDir(root)
    log.create()
    writer = SegmentWriter(log, fsync="off")
    writer.open()
    for seq in range(1, n + 1):
        payload = orjson.dumps({"text": f"message number {seq}"})
        writer.append(encode(Message.from_frames([b"agent.chat", payload], time.time_ns()), seq,
                             {"sender": "a", "thread_id": "t"}))
        if seq == rotate_at:
            writer.rotate()
    writer.close()
    return log


def test_open_current_catches_up_when_no_indexer_runs(tmp_path):
    log = build(tmp_path / "logs", 3)
    index.open_current(log).close()  # there is no index yet: it is made, complete
    db = index.open_current(log)
    assert index.position(db)[0] == 3
    db.close()


def test_open_current_leaves_catching_up_to_a_running_indexer(tmp_path):
    log = build(tmp_path / "logs", 3)
    index.connect(index.index_path(log)).close()
    held = index.try_indexer_lock(log)
    try:
        db = index.open_current(log)
        assert index.position(db)[0] == 0
        db.close()
    finally:
        os.close(held)


def test_rebuild_indexes_every_segment_and_reports_progress_across_the_log(tmp_path):
    log = build(tmp_path / "logs", 12000, rotate_at=6000)
    seen: list[int] = []
    assert index.rebuild(log, seen.append) == 12000
    total = sum(n for _, n in reader.sizes(log))
    assert seen and seen == sorted(seen) and 0 < seen[-1] <= total
    assert seen[0] < total // 2 < seen[-1]  # positions are in the whole log, not per segment
    db = index.connect(index.index_path(log))
    assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 12000
    db.close()
    assert index.rebuild(log) == 12000  # anew, never added twice


def test_take_indexer_lock_gives_up_on_a_holder_that_is_no_indexer(tmp_path):
    log = build(tmp_path / "logs", 1)
    held = index.try_indexer_lock(log)
    os.write(held, f"{os.getpid()}\n".encode())  # a pid, but not an indexer's: never signalled
    try:
        assert index.indexer_pid(log) is None
        with pytest.raises(SearchIndexError, match="another process.*not released within 0 s"):
            index.take_indexer_lock(log, timeout=0.2)
    finally:
        os.close(held)
    fd = index.take_indexer_lock(log, timeout=0.2)
    assert index.try_indexer_lock(log) is None
    os.close(fd)


def test_take_indexer_lock_stops_a_running_indexer(tmp_path):
    log = build(tmp_path / "logs", 1)
    os.close(index.try_indexer_lock(log))  # makes metadata_index/ and the lock file
    path = log.index / "indexer.lock"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, time  # stands in for persist.daemon.index.indexer
fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("held", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        assert index.indexer_pid(log) == holder.pid
        fd = index.take_indexer_lock(log, timeout=10)
        os.close(fd)
        assert holder.wait(5) == -15
    finally:
        holder.kill()
        holder.wait()


def test_hits_come_back_with_their_records_from_the_jsonl(tmp_path):
    from persist.daemon.index.search import Filters, search, with_records

    log = build(tmp_path / "logs", 20, rotate_at=10)
    index.rebuild(log)
    db = index.connect(index.index_path(log))
    found = with_records(log, search(db, '"number 7" OR "number 17"', Filters(), 10, ("", "")))
    db.close()
    assert sorted(e.seq for _, e in found) == [7, 17]
    for hit, e in found:
        assert e.line == index.line_at(log, hit["segment"], hit["offset"])


def build_texts(root, texts: list[str], rotate_every: int | None = None) -> LogDir:
    log = LogDir(root)
    log.create()
    writer = SegmentWriter(log, fsync="off")
    writer.open()
    for seq, text in enumerate(texts, 1):
        writer.append(encode(Message.from_frames([b"agent.chat", orjson.dumps({"text": text, "sender": "a"})],
                                                 time.time_ns()), seq, {"sender": "a", "thread_id": "t"}))
        if rotate_every and seq % rotate_every == 0:
            writer.rotate()
    writer.close()
    return log


def index_bytes(log: LogDir) -> bytes:
    db = index.connect(index.index_path(log))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return b"".join(p.read_bytes() for p in index.files(index.index_path(log)) if p.exists())


def test_the_index_keeps_no_copy_of_the_text_and_cuts_snippets_from_the_log(tmp_path):
    from persist.daemon.index.search import Filters, search

    sentence = "the quartermaster reconciled seventeen ledgers before the harbour closed at dusk"
    log = build_texts(tmp_path / "logs", [f"{sentence} (copy {i})" for i in range(200)] + ["unrelated words"])
    index.rebuild(log)
    assert sentence.encode() not in index_bytes(log)  # words, not text: the log is where the text is
    db = index.connect(index.index_path(log))
    hits = search(db, "seventeen ledgers", Filters(), 3, ("[", "]"))
    assert len(hits) == 3 and all("[seventeen] [ledgers]" in h["snippet"] for h in hits), hits
    db.execute("INSERT INTO fts(fts, rank) VALUES ('integrity-check', 1)")  # its words are exactly the log's
    db.close()


def test_an_index_that_kept_a_copy_of_the_text_is_made_again(tmp_path):
    import sqlite3

    from persist.daemon.index.search import Filters, search

    log = build_texts(tmp_path / "logs", ["alpha one", "beta two"])
    path = index.index_path(log)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = sqlite3.connect(path)  # the layout of an index made by persist before the text left it
    old.executescript(index.SCHEMA.split("CREATE VIEW")[0] + """
        CREATE VIRTUAL TABLE fts USING fts5(text, fields, sender, recipient, topic, thread_id, kind, tags);
        CREATE TABLE state (key TEXT PRIMARY KEY, value);
        INSERT INTO fts(rowid, text) VALUES (1, 'alpha one secret copy');
        INSERT INTO state VALUES ('last_seq', 1);""")
    old.close()
    db = index.open_current(log)
    assert [h["seq"] for h in search(db, "beta", Filters(), 5)] == [2]
    assert search(db, "secret", Filters(), 5) == []
    db.close()
    assert b"secret copy" not in index_bytes(log)


def test_records_retention_deleted_match_nothing_and_their_words_go_once_they_are_a_quarter(tmp_path):
    from persist.daemon.index.search import Filters, search
    from persist.daemon.log import retention

    log = build_texts(tmp_path / "logs", [f"needle {i} haystack" for i in range(50)], rotate_every=10)
    index.rebuild(log)
    db = index.connect(index.index_path(log))
    closed = sorted(log.segments.glob("seg-*.jsonl"))
    retention.delete(log, closed[0], retention.Policy("1d"))  # seq 1-10
    assert index.forget_deleted(log, db) == 10
    assert sorted(h["seq"] for h in search(db, "needle", Filters(), 100)) == list(range(11, 51))
    assert db.execute("SELECT value FROM state WHERE key = 'stale'").fetchone() == (10,)  # 10 of 50: kept for now
    retention.delete(log, closed[1], retention.Policy("1d"))  # 20 of 50: the word lists are made again
    assert index.forget_deleted(log, db) == 10
    assert db.execute("SELECT value FROM state WHERE key = 'stale'").fetchone() is None
    assert sorted(h["seq"] for h in search(db, "needle", Filters(), 100)) == list(range(21, 51))
    db.execute("INSERT INTO fts(fts, rank) VALUES ('integrity-check', 1)")
    assert db.execute("SELECT count(*) FROM fts_docsize").fetchone() == (30,)
    db.close()


def test_a_line_that_is_gone_or_garbled_reads_back_as_no_text(tmp_path):
    log = build_texts(tmp_path / "logs", ["kept words"])
    read = index.TextFromLog(log)
    assert read("seg-0000000000000099.jsonl", 10, 0) == ""  # no such segment
    assert read(reader.first_record(log.active) and "nonsense/../../x", 5, 1) == ""
    assert read(log.active.name, 3, 0) == ""  # not a whole line


def test_a_records_sender_and_thread_are_listed_once_and_still_found(tmp_path):
    from persist.daemon.index.search import Filters, search

    log = LogDir(tmp_path / "logs")
    log.create()
    writer = SegmentWriter(log, fsync="off")
    writer.open()
    payload = {"sender": "zedagent", "thread_id": "quokka-7", "note": "extra words", "text": "hello there"}
    writer.append(encode(Message.from_frames([b"chat", orjson.dumps(payload)], time.time_ns()), 1,
                         {"sender": "zedagent", "thread_id": "quokka-7"}))
    writer.close()
    rec = next(reader.records(log)).rec
    assert index.indexed_text(rec, None) == ("hello there", "extra words")  # not the sender nor the thread again
    index.rebuild(log)
    db = index.connect(index.index_path(log))
    assert [h["seq"] for h in search(db, "zedagent", Filters(), 5)] == [1]  # found in the sender's column
    assert [h["seq"] for h in search(db, "quokka", Filters(), 5)] == [1]
    db.close()


def test_rows_made_ahead_on_a_thread_come_in_order_and_bring_their_error_back():
    import threading

    assert list(index.ahead(iter(range(1000)))) == list(range(1000))

    def failing():
        yield 1
        raise OSError("the disk went away")

    got = []
    with pytest.raises(OSError, match="went away"):
        for x in index.ahead(failing()):
            got.append(x)
    assert got == [1]
    before = threading.active_count()
    for x in index.ahead(iter(range(10**9))):  # the caller stops early: the thread making them ends too
        if x == 5:
            break
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_a_record_that_defeats_extraction_is_indexed_with_its_place_only(tmp_path, monkeypatch):
    log = build_texts(tmp_path / "logs", ["first words", "second words"])

    def refuse(rec, segment, offset):
        if rec["seq"] == 2:
            raise RecursionError("a record nothing can take apart")
        return real(rec, segment, offset)

    real = index._row
    monkeypatch.setattr(index, "_row", refuse)
    index.rebuild(log)
    db = index.connect(index.index_path(log))
    assert db.execute("SELECT seq, own FROM records ORDER BY seq").fetchall() == [(1, 0), (2, 0)]
    assert index.position(db)[0] == 2  # the indexer went past it
    db.close()


def test_snippets_are_cut_in_statements_of_a_bounded_size_and_every_hit_gets_one(tmp_path, monkeypatch):
    from persist.daemon.index import search as search_module
    from persist.daemon.index.search import Filters, search

    monkeypatch.setattr(search_module, "SNIPPETS_AT_ONCE", 7)  # SQLite's own bound is 32,766 values a statement
    log = build_texts(tmp_path / "logs", [f"common word {i}" for i in range(50)])
    index.rebuild(log)
    db = index.connect(index.index_path(log))
    hits = search(db, "common", Filters(sender="a"), 1000, ("[", "]"))  # a filter: no rank window
    db.close()
    assert len(hits) == 50 and all("[common]" in h["snippet"] for h in hits)


def contents(path) -> dict:
    """What an index holds, whatever the layout of FTS5's word lists: rows, resume point, every word's place, settings."""
    db = index.connect(path, create=False)
    db.execute("CREATE VIRTUAL TABLE temp.words USING fts5vocab(main, fts, instance)")
    held = {q: db.execute(q).fetchall() for q in (
        "SELECT * FROM records ORDER BY seq", "SELECT * FROM state ORDER BY key", "SELECT * FROM fts_docsize ORDER BY id",
        "SELECT * FROM fts_config ORDER BY k", "SELECT * FROM temp.words ORDER BY term, doc, col, offset",
        "SELECT type, name, sql FROM sqlite_master ORDER BY name", "PRAGMA journal_mode")}
    db.close()
    return held


def caught_up(log: LogDir):
    """The index ``catch_up`` makes from nothing, beside the one ``rebuild`` makes."""
    path = index.index_dir(log) / "caught-up.sqlite"
    db = index.connect(path)
    index.catch_up(log, db)
    db.close()
    return path


def test_a_rebuild_holds_what_catching_up_from_nothing_holds_whatever_the_text(tmp_path, monkeypatch):
    import importlib

    from persist.daemon.index.search import Filters, search

    monkeypatch.setattr(importlib.import_module("persist.daemon.index.rebuild"), "BATCH", 3)  # batches of each kind
    texts = ["plain words", "before\x00after the nul", 'quotes " and \\ a backslash \\u0000 not a nul',
             "émoji 😀 and \u2028 line separators", "tab\there\nand newline", ""]
    log = build_texts(tmp_path / "logs", texts * 3, rotate_every=7)
    assert index.rebuild(log) == len(texts) * 3
    assert contents(index.index_path(log)) == contents(caught_up(log))
    db = index.connect(index.index_path(log))
    assert [h["seq"] for h in search(db, "after", Filters(), 10)] == [14, 8, 2]  # the words past a NUL too
    db.execute("INSERT INTO fts(fts, rank) VALUES ('integrity-check', 1)")
    db.close()
    assert sorted(p.name for p in index.index_dir(log).iterdir()) == ["caught-up.sqlite", "index.sqlite",
                                                                       "indexer.lock"]


def test_a_log_whose_seqs_do_not_grow_is_rebuilt_as_catching_up_indexes_it(tmp_path):
    log = LogDir(tmp_path / "logs")
    log.create()
    writer = SegmentWriter(log, fsync="off")
    writer.open()
    for seq, text in [(1, "one"), (2, "two"), (3, "three"), (2, "two again"), (4, "four")]:
        writer.append(encode(Message.from_frames([b"agent.chat", orjson.dumps({"text": text})], time.time_ns()), seq,
                             {"sender": "a"}))
    writer.close()
    assert index.rebuild(log) == 5
    assert contents(index.index_path(log)) == contents(caught_up(log))


def test_a_new_index_is_on_disk_before_it_is_named_the_index(tmp_path, monkeypatch):
    log = build_texts(tmp_path / "logs", ["some words"])
    done = []
    fsync, replace = os.fsync, os.replace

    def synced(fd: int) -> None:
        done.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def renamed(src, dst) -> None:
        done.append(("replace", str(src)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "replace", renamed)
    index.rebuild(log)  # no index yet: the new file is renamed into place (built without syncing)
    path = index.index_path(log)
    fresh = f"{path}.rebuild"
    assert done.index(("fsync", fresh)) < done.index(("replace", fresh)) < done.index(("fsync", str(path.parent)))
