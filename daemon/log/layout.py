"""The log directory's layout (SPEC section 3): where each file lives, and the tree made safely.

``LogDir`` names the paths; ``create`` makes the tree 0700 and refuses one
that holds a symlink or anything of another user's. Which segments exist,
safe against a rotation under the reader, is ``reader.segments``' business.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from persist.daemon.log.fsutil import DIR_MODE, check_owned, ensure_dir

ACTIVE = "current_session.jsonl"


@dataclass(frozen=True)
class LogDir:
    """Paths inside one log directory."""

    root: Path

    @property
    def active(self) -> Path:
        return self.root / ACTIVE

    @property
    def segments(self) -> Path:
        return self.root / "segments"

    @property
    def recovery(self) -> Path:
        return self.root / "recovery"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def index(self) -> Path:
        """The search index's folder (derived data, ``persist.daemon.index``'s)."""
        return self.root / "metadata_index"

    @property
    def pid_file(self) -> Path:
        return self.root / "daemon.pid"

    @property
    def lock_file(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def control_endpoint(self) -> str:
        return f"ipc://{self.root / 'daemon.sock'}"

    def create(self) -> None:
        """Make the directory tree, mode 0700 (tightening it if it came looser, as from a git clone).

        Refuses (``NotOurs``) a tree holding a symlink or anything of another user's.
        """
        check_owned(ensure_dir(self.root))
        for d in (self.root, self.segments, self.recovery, self.checkpoints):
            ensure_dir(d)
            if d.stat().st_mode & 0o077:
                os.chmod(d, DIR_MODE)

    def is_log_dir(self) -> bool:
        return self.active.exists() or self.segments.is_dir()


def segment_name(first_seq: int) -> str:
    """Closed segments are named by their first seq, so names sort by seq."""
    return f"seg-{first_seq:016d}.jsonl"
