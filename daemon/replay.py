"""Crash-recovery replay: publish recorded messages again, the same frames, in recorded order.

Never replays the daemon's own ``$persist/`` records. Paced by the original
gaps between messages divided by ``rate`` (or as fast as possible). Sends
through an XPUB socket so that it can wait until a subscriber is there before
the first message: nothing is lost to the slow-joiner effect. Each message is
announced to the daemon recording the log first, so that if the replay goes
back onto the recorded bus its copy is marked ``meta.replay_of``.
With ``[curve]`` on it connects as a CURVE client (or, with ``--bind``, serves
CURVE to the keys on the allow-list), and a refused handshake is named.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import zmq

from persist.daemon import curve
from persist.daemon.config import CurveSection
from persist.daemon.control import ask
from persist.daemon.log import reader
from persist.daemon.log.errors import ControlError
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import is_system
from persist.daemon.log.select import matches
from persist.daemon.log.times import epoch


class ReplayError(RuntimeError):
    """The replay cannot start: the endpoint cannot be used, or nobody listens there."""


class NoSubscriber(ReplayError):
    """Nobody subscribed on the target endpoint within the wait."""


@dataclass
class Selection:
    """What to replay: records after ``after_seq``, within ``since``..``until``, on these topics, from this
    sender, in this thread (None: any)."""

    after_seq: int = 0
    since: str | None = None
    until: str | None = None
    topics: tuple[str, ...] = field(default_factory=tuple)  # prefixes; any may match
    sender: str | None = None
    thread: str | None = None

    def entries(self, log: LogDir) -> Iterator[reader.Entry]:
        """The agents' records selected, in recorded order (reading stops at the first one after ``until``)."""
        for e in reader.records(log, self.after_seq):
            if is_system(e.rec):
                continue
            if self.until is not None and e.rec["received_at"] > self.until:
                return
            if matches(e.rec, self.topics or None, self.sender, self.since, thread=self.thread):
                yield e


@dataclass
class Outlet:
    """The replay's XPUB socket, and the ZAP handler it serves CURVE with when it binds."""

    sock: zmq.Socket
    auth: curve.Authenticator | None = None
    handshake: zmq.Socket | None = None  # the monitor that says why no subscriber came

    def stop_watching(self) -> None:
        if self.handshake is not None:
            self.sock.disable_monitor()
            self.handshake.close(linger=0)
            self.handshake = None

    def close(self) -> None:
        self.stop_watching()
        if self.auth is not None:
            self.auth.stop()


def open_socket(ctx: zmq.Context, endpoint: str, bind: bool, secure: CurveSection | None = None,
                insecure: bool = False) -> Outlet:
    """An XPUB socket bound or connected to ``endpoint``, with CURVE if ``secure`` is an enabled ``[curve]``."""
    secure = secure if secure is not None and secure.enabled else None
    if bind:
        curve.check_bind([endpoint], secure is not None, insecure, "replay on")
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.LINGER, 10_000)
    out = Outlet(sock, handshake=curve.monitor(sock))
    try:
        if secure is not None:
            if bind:
                keys = curve.server_keys(secure.keys_path)
                out.auth = curve.Authenticator(ctx, secure.keys_path, secure.allow_any)
                keys.serve(sock)
            else:
                curve.client_keys(secure.keys_path).client(sock)
        (sock.bind if bind else sock.connect)(endpoint)
    except BaseException:  # no ZAP thread or socket left behind a bad key or a taken port
        out.close()
        sock.close(linger=0)
        raise
    return out


def ready_socket(ctx: zmq.Context, endpoint: str, bind: bool, wait: float, secure: CurveSection | None = None,
                 insecure: bool = False) -> Outlet:
    """An XPUB socket on ``endpoint`` that a subscriber has joined (``ReplayError`` if none within ``wait`` s,
    or if its keys cannot be used)."""
    out = None
    try:
        out = open_socket(ctx, endpoint, bind, secure, insecure)
        wait_for_subscriber(out.sock, endpoint, wait, out.handshake)
        out.stop_watching()
    except curve.CurveError as exc:
        raise ReplayError(str(exc)) from None
    except zmq.ZMQError as exc:
        raise ReplayError(f"cannot {'bind' if bind else 'connect to'} {endpoint}: {exc.strerror}") from None
    except ReplayError:
        if out is not None:
            out.close()
        raise
    return out


def wait_for_subscriber(sock: zmq.Socket, endpoint: str, timeout: float, handshake: zmq.Socket | None = None) -> None:
    if not sock.poll(int(timeout * 1000), zmq.POLLIN):
        refused = curve.handshake_failure(handshake) if handshake is not None else None
        if refused:
            raise NoSubscriber(f"{endpoint} refused the replay's handshake: {refused}; see [curve] in the "
                               "config (persist-cli keys init)")
        raise NoSubscriber(f"no subscriber on {endpoint} within {timeout:.0f} s: is the broker running "
                           "(persist-cli broker) and something subscribed?")
    while sock.poll(0, zmq.POLLIN):
        sock.recv()


def send(sock: zmq.Socket, entries: Iterator[reader.Entry], rate: float | None,
         sent: Callable[[reader.Entry], None] | None = None) -> int:
    """Publish each entry's frames; ``rate`` None means as fast as possible."""
    n = 0
    first_orig = first_wall = None
    for e in entries:
        if rate is not None:
            t = epoch(e.rec["received_at"])
            if first_orig is None:
                first_orig, first_wall = t, time.monotonic()
            delay = first_wall + (t - first_orig) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sock.send_multipart(e.frames())
        n += 1
        if sent:
            sent(e)
    return n


def announced(entries: Iterator[reader.Entry], log: LogDir, chunk: int) -> Iterator[reader.Entry]:
    """``entries``, each announced to the daemon recording ``log`` before it is sent, ``chunk``
    at a time, so that the copy it records is stamped ``meta.replay_of`` (SPEC section 4).

    Without a daemon there is nobody to tell: the entries pass unannounced.
    """
    buffered: list[reader.Entry] = []
    listening = True
    for e in entries:
        buffered.append(e)
        if len(buffered) >= chunk:
            listening = listening and _announce(log, buffered)
            yield from buffered
            buffered = []
    if buffered and listening:
        _announce(log, buffered)
    yield from buffered


def _announce(log: LogDir, entries: list[reader.Entry]) -> bool:
    """Tell the daemon which frames are about to come back; False if no daemon answers."""
    marks = " ".join(f"{e.rec['meta']['sha256']}:{e.seq}" for e in entries if "sha256" in e.rec.get("meta", {}))
    try:
        ask(log.control_endpoint, f"replay_expect {marks}", timeout_ms=2000)
    except ControlError:
        return False
    return True
