"""Which incoming messages are replays (SPEC section 4, ``meta.replay_of``).

``persist-cli replay`` sends the recorded frames again, byte for byte, so
nothing in a replayed message tells it apart. Before sending, replay tells the
recording daemon, over its control socket, the SHA-256 of the frames it is
about to send and the seq each was recorded under; the first message that
arrives with those frames is stamped ``meta.replay_of``. Expectations expire
after ``EXPIRE_S`` and are capped in number, so a replay that never arrives
(another bus, a topic the daemon does not subscribe to) costs nothing lasting.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

EXPIRE_S = 30.0
MAX_PENDING = 100_000


class ReplayMarks:
    """sha256 → the seqs announced for those frames, oldest first."""

    def __init__(self) -> None:
        self.pending: dict[str, deque[tuple[float, int]]] = {}  # (expires, seq); empty when no replay is under way
        self.order: deque[tuple[float, str]] = deque()  # (expires, sha256) in announcement order
        self.count = 0

    def expect(self, argument: str) -> dict[str, Any]:
        """Control request ``replay_expect <sha256>:<seq> ...``: note what a replay is about to send."""
        now = time.monotonic()
        self.expire(now)
        added = 0
        for item in argument.split():
            sha, _, seq = item.partition(":")
            if len(sha) != 64 or not seq.isdigit() or self.count >= MAX_PENDING:
                continue
            self.pending.setdefault(sha, deque()).append((now + EXPIRE_S, int(seq)))
            self.order.append((now + EXPIRE_S, sha))
            self.count += 1
            added += 1
        return {"expected": added, "pending": self.count}

    def take(self, sha256: str) -> int | None:
        """The seq a message with these frames replays, if one was announced (used once)."""
        seqs = self.pending.get(sha256)
        if not seqs:
            return None
        _, seq = seqs.popleft()
        if not seqs:
            del self.pending[sha256]
        self.count -= 1
        return seq

    def expire(self, now: float) -> None:
        """Forget announcements older than ``EXPIRE_S`` (their messages never came)."""
        while self.order and self.order[0][0] <= now:
            _, sha = self.order.popleft()
            seqs = self.pending.get(sha)
            if seqs and seqs[0][0] <= now:  # not taken since: it never came
                seqs.popleft()
                self.count -= 1
                if not seqs:
                    del self.pending[sha]
