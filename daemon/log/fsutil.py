"""Crash-safe, private file primitives: modes, ownership, directory fsync, atomic replace.

Everything persist replaces (pid files, manifests, quarantined bytes) goes
through ``write_atomically``: temp file, fsync, rename, fsync the directory.
Files in a log dir are opened with ``open_private`` (0600, never through a
symlink) and a log dir is used only once ``check_owned`` finds every entry
in it belongs to this user: nobody else can make persist write elsewhere.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o700


class NotOurs(PermissionError):
    """A path in the log dir is a symlink or belongs to another user: persist will not use it."""


def open_private(path: Path, flags: int) -> int:
    """``os.open`` for a file in a log dir: created 0600, never through a symlink (``NotOurs``)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotOurs(f"{path} is a symbolic link; persist never opens one in a log dir: "
                          "remove it (and find out who put it there)") from None
        raise


def open_reading(path: Path) -> BinaryIO:
    """``path`` opened for reading as a binary file, never through a symlink (``NotOurs``)."""
    return os.fdopen(open_private(path, os.O_RDONLY), "rb")


def read_private(path: Path) -> bytes:
    """The bytes of ``path``, not followed if it is a symlink."""
    with open_reading(path) as f:
        return f.read()


def check_owned(root: Path) -> None:
    """Raise ``NotOurs`` unless ``root`` and everything under it belong to this user, with no symlinks.

    ``root`` itself may be reached through a symlink (the user chose it);
    nothing inside it may be one.
    """
    me = os.geteuid()
    _check_entry(root, os.stat(root), me)
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(parent) / name
            try:
                _check_entry(path, os.lstat(path), me)
            except FileNotFoundError:
                pass  # removed while we looked (a pruned checkpoint, a replaced temp file)


def _check_entry(path: Path, st: os.stat_result, me: int) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise NotOurs(f"{path} is a symbolic link; persist never opens one in a log dir: "
                      "remove it (and find out who put it there)")
    if st.st_uid != me:
        raise NotOurs(f"{path} belongs to uid {st.st_uid}, not to this user (uid {me}): "
                      "chown it to this user or choose another --log-dir")


def too_open(paths: Iterable[Path]) -> list[Path]:
    """Those of ``paths`` others may read or enter (wider than 0700 for a directory, 0600 for a file)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        if stat.S_IMODE(st.st_mode) & ~(DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE):
            out.append(p)
    return out


def cannot_write(directory: Path) -> OSError | None:
    """Why a file cannot be created in ``directory`` (None if one can: a probe file is made and removed)."""
    probe = directory / f".probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc
    return None


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 if missing; return it."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def last_newline(fd: int, end: int) -> int:
    """Offset just after the last ``\\n`` before ``end`` (0 if none): where the whole lines of a file end."""
    pos, size = end, 1 << 12  # most files end with one: a small read first, then larger ones up to 1 MiB
    while pos > 0:
        start = max(0, pos - size)
        chunk = os.pread(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos, size = start, min(2 * size, 1 << 20)
    return 0


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` or raise: ``os.write`` may write less than asked."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def create_new(path: Path | str, mode: int = FILE_MODE) -> int:
    """A new file at ``path`` (never an existing one: ``FileExistsError``) with exactly ``mode``; its fd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, mode)
    return fd


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # left by a crash: a new file, never one found there, gets the data
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep what it could not finish
        raise
    fsync_dir(path.parent)


def read_intent(path: Path, error: type[Exception]) -> dict | None:
    """The steps a crash-safe change wrote before making it (``restore.intent``, ``redact.intent``), or None if
    there are none; an unreadable one is ``error``, one line saying what to do."""
    import orjson

    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        raise error(f"{path} cannot be read ({exc}); move it away and run persist-cli verify") from None
