"""Following the source for the live page: one thread reads each record as it is appended and hands it to
every subscriber (an SSE stream), and counts records per second (and per sender) for the rate sparkline and
the agents' rates. ``Tail`` is the part both sources share; ``LogTail`` follows a log dir (the archive's is
``archive_source.ArchiveTail``).

``LogTail`` reads through ``reader.lines`` from the byte where it stopped (as ``stats.Tally`` does), woken by
``watch`` when the log dir changes and every ``POLL`` seconds anyway; it never writes and takes no lock,
so the writer is never slowed. A subscriber too slow to keep up (its queue over ``MAX_QUEUE`` records or
``MAX_QUEUE_BYTES``) is
dropped: its browser reconnects with the last seq it showed (``Last-Event-ID``) and catches up from the
log, so nothing is missed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from typing import Any

from persist.daemon.log import reader, times
from persist.daemon.log.layout import LogDir
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.reader import Entry
from persist.daemon.log.record import is_system
from persist.daemon.log.watch import watch

POLL = 0.1  # seconds between reads when no change was noticed (watchdog may hold an event up to 0.5 s)
MAX_QUEUE = 20000  # records waiting for one subscriber before it is dropped
MAX_QUEUE_BYTES = 64 << 20  # or bytes of their lines: a record may be 16 MiB
RATE_WINDOW = 120  # seconds the sparkline spans
PREFILL = 50000  # records read back from the tail at start to fill the sparkline
RETRY = 1.0  # seconds before the tail reads again after an error
log = get_logger("persist.web")


class Subscriber:
    """A live page's queue: lists of new records, or None once it was dropped."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.queue, self.size, self.bytes = loop, asyncio.Queue(), 0, 0

    def offer(self, batch: list[Entry]) -> bool:
        if self.size > MAX_QUEUE or self.bytes > MAX_QUEUE_BYTES:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)
            return False
        self.size += len(batch)
        self.bytes += sum(len(e.line) for e in batch)
        self.loop.call_soon_threadsafe(self.queue.put_nowait, batch)
        return True

    async def get(self, timeout: float, gather: float = 0.0) -> list[Entry] | None:
        """The next records (None once dropped); with ``gather``, also those that come within that many seconds
        after the first, in one list: a page swaps in a few dozen rows at a time, not one per record."""
        batch = await asyncio.wait_for(self.queue.get(), timeout)
        if batch is not None and gather:
            await asyncio.sleep(gather)
            while batch is not None and not self.queue.empty():
                more = self.queue.get_nowait()
                batch = None if more is None else batch + more
        if batch is not None:
            self.size -= len(batch)
            self.bytes -= sum(len(e.line) for e in batch)
        return batch


class Tail(ABC):
    """New records handed to every live page, and counted for the rates; started by the first subscriber,
    stopped with the server. What finds the new records is a subclass's: ``LogTail`` (a log dir) or
    ``archive_source.ArchiveTail`` (the archive). ``error``: why it cannot read now (None when it can)."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.per_second: Counter = Counter()
        self.senders: dict[int, Counter] = {}  # second → records per sender in it
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: str | None = None

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> Subscriber:
        sub = Subscriber(loop)
        self.ensure_started()
        with self.lock:
            self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self.lock:
            self.subscribers.discard(sub)

    def ensure_started(self) -> None:
        with self.lock:
            if self.thread is not None:
                return
            self._begin()
            self.thread = threading.Thread(target=self._follow, name="persist-web-tail", daemon=True)
            self.thread.start()

    def _follow(self) -> None:
        """``_run``, and again after any error (said in ``error`` and the server's log), until ``stopping``:
        a live page must never go quiet for good because one read failed."""
        while not self.stopping.is_set():
            try:
                self._run()
            except Exception as exc:  # noqa: BLE001 - any failure of a read: say it, wait, read again
                self.error = f"reading new records failed ({exc!r}); trying again"
                log.warning("web_tail_error", error=repr(exc))
                self.stopping.wait(RETRY)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=2)

    def rate(self, now: float | None = None) -> list[int]:
        """Records per second over the last ``RATE_WINDOW`` seconds, oldest first (this second last)."""
        self.ensure_started()
        end = int(now if now is not None else time.time())
        with self.lock:
            return [self.per_second.get(s, 0) for s in range(end - RATE_WINDOW + 1, end + 1)]

    def sender_rates(self) -> dict[str, float]:
        """Records per minute of each sender over the last ``RATE_WINDOW`` seconds."""
        self.ensure_started()
        start = int(time.time()) - RATE_WINDOW
        total: Counter = Counter()
        with self.lock:
            for second, counted in self.senders.items():
                if second > start:
                    total.update(counted)
        return {sender: n * 60 / RATE_WINDOW for sender, n in total.items()}

    @abstractmethod
    def _begin(self) -> None:
        """Where to start (the end of what is there now) and the rate's last two minutes; under ``lock``."""

    @abstractmethod
    def _run(self) -> None:
        """The thread: hand each new record out (``_hand_out``) until ``stopping``."""

    def _count(self, rec: dict[str, Any]) -> None:
        at = self._second(rec)
        if at is None:
            return
        self.per_second[at] += 1
        meta = rec.get("meta")
        if isinstance(meta, dict) and meta.get("sender") is not None and not is_system(rec):
            self.senders.setdefault(at, Counter())[str(meta["sender"])] += 1

    @staticmethod
    def _second(rec: dict[str, Any]) -> int | None:
        try:
            return int(times.epoch(rec["received_at"]))
        except (KeyError, TypeError, ValueError):
            return None

    def _hand_out(self, batch: list[Entry]) -> None:
        if not batch:
            return
        with self.lock:
            for e in batch:
                self._count(e.rec)
            cutoff = int(time.time()) - RATE_WINDOW - 5
            for old in [s for s in self.per_second if s < cutoff]:
                del self.per_second[old]
                self.senders.pop(old, None)
            dropped = [sub for sub in self.subscribers if not sub.offer(batch)]
            self.subscribers.difference_update(dropped)


class LogTail(Tail):
    """A log dir followed from its end."""

    def __init__(self, log: LogDir) -> None:
        super().__init__()
        self.log = log
        self.observer = None
        self.last_seq = 0

    def _begin(self) -> None:
        self.position, self.last_seq = self._end()
        self._prefill()
        self.observer = watch(str(self.log.root), lambda _event: self.wake.set())

    def stop(self) -> None:
        self.stopping.set()
        if self.observer is not None:
            self.observer.stop()
        super().stop()

    def _end(self) -> tuple[tuple[str | None, int], int]:
        """Where the log ends now: the last segment's whole lines, and the newest seq."""
        last = None
        for seg, whole, _size in reader.extents(self.log):
            last = (seg.name, whole)
        newest = reader.last_record(self.log)
        return (last or (None, 0)), (newest.seq if newest else 0)

    def _prefill(self) -> None:
        """Count the records of the last ``RATE_WINDOW`` seconds, read back from the tail."""
        cutoff = time.time() - RATE_WINDOW
        for n, e in enumerate(reader.records_backward(self.log)):
            at = self._second(e.rec)
            if at is None or at < cutoff or n >= PREFILL:
                break
            self._count(e.rec)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.wake.clear()  # before reading: a write meanwhile sets it again, and is read at once
            batch: list[Entry] = []
            for line in reader.lines(self.log, self.position, after_seq=self.last_seq):
                self.position = (line.segment, line.end)
                e = reader.entry(line.data, line.path)
                if e is not None and e.seq > self.last_seq:
                    self.last_seq = e.seq
                    batch.append(e)
                    if len(batch) >= 1000:
                        self._hand_out(batch)
                        batch = []
            self.error = None  # this read worked (cleared before the records go out, which show it did)
            self._hand_out(batch)
            self.wake.wait(POLL)
