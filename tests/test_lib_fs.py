"""The library's one helper each: write-all, new private files, modes, flocks, the daemon lock's holder, export."""

from __future__ import annotations

import csv
import io
import os

import orjson
import pytest

from persist.daemon.log import checkpoints, fsutil, lock, reader, render, restore
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import Message, encode
from persist.daemon.log.store import SegmentWriter


@pytest.fixture
def log(tmp_path) -> LogDir:
    log = LogDir(tmp_path / "logs")
    log.create()
    writer = SegmentWriter(log, fsync="off")
    writer.open()
    for seq, (sender, text) in enumerate([("a", "hi, there"), ("b", "line\none")], 1):
        frames = [b"agent.chat", orjson.dumps({"text": text})]
        writer.append(encode(Message.from_frames(frames, 1_764_000_000_000_000_000 + seq), seq,
                             {"sender": sender, "thread_id": "t"}))
    writer.close()
    return log


def test_write_all_goes_on_after_short_writes(tmp_path, monkeypatch):
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:3])))  # the kernel may write less
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        fsutil.write_all(fd, b"0123456789")
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"0123456789"


def test_write_all_raises_what_the_disk_says(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError):
            fsutil.write_all(fd, b"x")
    finally:
        os.close(fd)


def test_write_atomically_and_a_lock_note_survive_short_writes(tmp_path, monkeypatch, log):
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:1])))
    fsutil.write_atomically(tmp_path / "g", b"whole")
    assert (tmp_path / "g").read_bytes() == b"whole"
    with lock.held(log):
        assert lock.holder_pid(log) == os.getpid()


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o000])
def test_create_new_has_exactly_the_mode_asked_and_never_reuses_a_file(tmp_path, mode):
    os.close(fsutil.create_new(tmp_path / "out", mode))
    assert (tmp_path / "out").stat().st_mode & 0o777 == mode
    with pytest.raises(FileExistsError):
        fsutil.create_new(tmp_path / "out")


def test_too_open_names_what_others_may_read(tmp_path):
    (tmp_path / "d").mkdir(mode=0o755)
    (tmp_path / "ok").mkdir(mode=0o700)
    for name, mode in (("f", 0o644), ("g", 0o600)):
        (tmp_path / name).touch()
        os.chmod(tmp_path / name, mode)
    paths = [tmp_path / n for n in ("d", "ok", "f", "g", "missing")]
    assert fsutil.too_open(paths) == [tmp_path / "d", tmp_path / "f"]


def test_cannot_write_says_why(tmp_path):
    assert fsutil.cannot_write(tmp_path) is None and list(tmp_path.iterdir()) == []
    assert isinstance(fsutil.cannot_write(tmp_path / "missing"), FileNotFoundError)


def test_try_lock_file_is_one_holder_at_a_time(tmp_path):
    path = tmp_path / "x.lock"
    fd = lock.try_lock_file(path)
    assert fd is not None and path.stat().st_mode & 0o777 == 0o600
    assert lock.try_lock_file(path) is None
    assert lock.try_lock_file(path, wait=0.1, poll=0.01) is None
    os.close(fd)
    fd = lock.try_lock_file(path, wait=0.1)
    assert fd is not None
    os.close(fd)


def test_try_lock_file_never_follows_a_symlink(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(fsutil.NotOurs):
        lock.try_lock_file(tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists()


def test_the_daemon_lock_held_and_released(log):
    assert not lock.is_locked(log)
    with lock.held(log):
        assert lock.is_locked(log)
        with pytest.raises(lock.AlreadyRunning, match=f"pid {os.getpid()}"):
            lock.acquire(log)
    assert not lock.is_locked(log)


def test_stop_holder_refuses_a_holder_whose_pid_is_unknown(log):
    fd = os.open(log.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert lock.take(fd)
        with pytest.raises(lock.StillRunning, match="pid is unknown"):
            lock.stop_holder(log, timeout=0.1)
    finally:
        os.close(fd)


def test_restore_held_refuses_while_a_daemon_records_unless_told_to_stop_it(log):
    manifest = checkpoints.write(log, checkpoints.cut_from_files(log), checkpoints.Hasher(), "manual")
    with lock.held(log):
        with pytest.raises(lock.AlreadyRunning, match="--stop-daemon"):
            restore.restore_held(log, manifest)
    result = restore.restore_held(log, manifest)
    assert result["checkpoint"] == manifest["id"] and not lock.is_locked(log)


@pytest.mark.parametrize("fmt", render.EXPORT_FORMATS)
def test_export(log, fmt):
    out = io.StringIO()
    assert render.export(reader.records(log), fmt, out) == 2
    text = out.getvalue()
    if fmt == "jsonl":
        assert text.encode() == log.active.read_bytes()
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        assert rows[0] == render.CSV_COLUMNS
        assert [r[3] for r in rows[1:]] == ["a", "b"] and rows[2][-1] == "line\none"
    else:
        assert text.startswith("# Conversation") and "hi, there" in text


def test_context_file_is_the_conversation_as_a_prompt(log):
    manifest = checkpoints.write(log, checkpoints.cut_from_files(log), checkpoints.Hasher(), "manual")
    path = restore.context_file(log, manifest)
    assert path == log.root / "restored" / f"{manifest['id']}.txt"
    text = path.read_text()
    assert text.startswith("Conversation so far (oldest first):\n") and "a: hi, there" in text
    assert path.stat().st_mode & 0o777 == 0o600


def test_write_now_is_a_manual_checkpoint_never_beside_a_daemon(log):
    with lock.held(log):
        with pytest.raises(lock.AlreadyRunning):
            checkpoints.write_now(log, "x")
    manifest = checkpoints.write_now(log, "mark")
    assert (manifest["reason"], manifest["label"], manifest["last_seq"]) == ("manual", "mark", 2)
    assert checkpoints.find(log, "mark")["id"] == manifest["id"] and not lock.is_locked(log)
