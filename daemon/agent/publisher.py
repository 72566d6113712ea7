"""``Publisher``: how an agent puts messages on the bus without losing any.

A plain ZeroMQ PUB socket loses what it sends before its connection and the
subscriptions behind it are set up (the slow-joiner effect), drops what
exceeds its high-water mark, and loses its queue when the process exits. This
helper closes each hole:

* an XPUB socket *receives* the subscriptions of whoever listens (through a
  broker's XSUB, or directly from persist-daemon's SUB), and the first
  ``send`` waits until one has arrived;
* ``XPUB_NODROP``: at the high-water mark ``send`` waits (at most
  ``send_timeout``) instead of dropping, and raises ``Undelivered`` if the bus
  still takes nothing;
* each dict message is stamped with the sender's name and its own sequence
  number (``sender_seq``), and ``close()`` (or ``flush()``) waits until the
  recording daemon says it has that number, asking its control socket; where
  no daemon answers (another host, no log dir), it waits until ZeroMQ has
  handed the queue to the network. Either way it raises ``Undelivered``,
  counting what it could not confirm, rather than returning having lost some.

With ``[curve]`` on in the config it finds (``PERSIST_CONFIG`` or the usual
search path), or given ``curve=KEYS_DIR``, it connects as a CURVE client with
``client.key_secret`` and ``server.key`` from that directory (SPEC section
14). A bus that refuses its handshake is named in ``NoSubscriber``: ZeroMQ
would otherwise just never deliver.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import zmq

from persist.daemon import config
from persist.daemon import curve as _curve
from persist.daemon.control import ControlError, ask
from persist.daemon.log import lock
from persist.daemon.log.layout import LogDir

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"  # the broker's publisher side
SEND_HWM = 10_000  # messages queued in this process before send waits
ACK_POLL_S = 0.02


class NoSubscriber(TimeoutError):
    """Nobody subscribed within the wait: messages sent now would be lost."""


class Undelivered(RuntimeError):
    """Messages the helper could not confirm as delivered; ``count`` says how many."""

    def __init__(self, count: int, message: str) -> None:
        super().__init__(message)
        self.count = count


class Publisher:
    """Stamped, acknowledged publishing for one agent (use as a context manager, or call ``close()``)."""

    def __init__(self, sender: str, endpoint: str = DEFAULT_ENDPOINT, wait: float = 5.0,
                 seq_field: str = "sender_seq", ctx: zmq.Context | None = None,
                 log_dir: str | Path | None = None, send_timeout: float = 30.0, close_timeout: float = 30.0,
                 curve: str | Path | bool | None = None) -> None:
        """``curve``: None, the config's ``[curve]`` decides; False, no CURVE; a keys directory, CURVE with its
        client key pair and server key (``curve.CurveError`` if they cannot be used)."""
        keys = _client_keys(curve)
        self.sender = sender
        self.endpoint = endpoint
        self.wait = wait
        self.seq_field = seq_field
        self.seq = 0  # the last sequence number stamped (and sent)
        self.raw_sent = 0  # messages sent without a stamp (bytes, str)
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.log_dir = log_dir
        self.own_ctx = ctx is None  # a context of our own: terminating it flushes the queue
        self.ctx = zmq.Context() if ctx is None else ctx
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.setsockopt(zmq.SNDTIMEO, int(send_timeout * 1000))
        if keys is not None:
            keys.client(self.sock)
        self.handshake = _curve.monitor(self.sock)  # until a subscriber is there: says why none came
        self.sock.connect(endpoint)
        self.subscribed = False
        self.missing_before: int | None = None

    def wait_for_subscriber(self, timeout: float | None = None) -> None:
        """Block until a subscriber's subscription arrives (persist-daemon subscribes to everything)."""
        if self.subscribed:
            return
        timeout = self.wait if timeout is None else timeout
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            refused = _curve.handshake_failure(self.handshake)
            if refused:
                raise NoSubscriber(f"the bus at {self.endpoint} refused this publisher's handshake: {refused}; "
                                   "see [curve] in the config (persist-cli keys init)")
            raise NoSubscriber(f"no subscriber on {self.endpoint} within {timeout:.1f} s: "
                               "is the broker running (persist-cli broker) and persist-daemon connected?")
        while self.sock.poll(0, zmq.POLLIN):
            self.sock.recv()  # subscription messages; their content is not needed
        self.subscribed = True
        self._stop_watching()
        log = self.recording_log()
        before = self.acknowledged(log.control_endpoint) if log else None
        self.missing_before = None if before is None else before[1]  # the daemon's count before our first send

    def send(self, topic: str, message: dict[str, Any] | bytes | str, *extra: bytes) -> int:
        """Publish ``message`` on ``topic``; a dict is stamped with sender and sequence. Returns the seq.

        Waits while the bus is full; raises ``Undelivered`` (the message not
        sent, its seq not used) if it stays full for ``send_timeout``.
        """
        self.wait_for_subscriber()
        stamped = isinstance(message, dict)
        if stamped:
            body = orjson.dumps({"sender": self.sender, self.seq_field: self.seq + 1, **message})
        else:
            body = message.encode() if isinstance(message, str) else message
        try:
            self.sock.send_multipart([topic.encode(), body, *extra])
        except zmq.Again:
            raise Undelivered(1, f"not sent: the bus at {self.endpoint} took nothing for {self.send_timeout:.0f} s "
                                 "(broker or recorder stalled); send it again later") from None
        if stamped:
            self.seq += 1
        else:
            self.raw_sent += 1
        return self.seq

    def recording_log(self) -> LogDir | None:
        """The log dir of the daemon recording this bus: ``log_dir``, or the configured one."""
        try:
            return LogDir(Path(self.log_dir) if self.log_dir is not None else config.load().log_dir)
        except config.ConfigError:
            return None

    def acknowledged(self, endpoint: str) -> tuple[int, int] | None:
        """``(the last sequence number the daemon recorded from this sender, how many of its numbers
        it found missing)``; None if no daemon answers that."""
        try:
            reply = ask(endpoint, f"sender_seq {self.sender}", timeout_ms=1000)
        except ControlError:
            return None
        if not reply.get("ok"):
            return None  # a daemon that does not know the request
        number, missing = reply.get("sender_seq"), reply.get("missing")
        return (number if type(number) is int else 0, missing if type(missing) is int else 0)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the recording daemon has every stamped message sent so far.

        Raises ``Undelivered`` counting the ones it has not confirmed after
        ``timeout`` (default ``close_timeout``). Returns at once if no daemon
        records the log dir; one that records it but does not answer (busy with a
        burst, stopped) is waited for like one that answers.
        """
        log = self.recording_log()
        if not self.seq or log is None:
            return
        endpoint = log.control_endpoint
        wait = self.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while (answer := self.acknowledged(endpoint)) is None:
            if not lock.is_locked(log):
                return  # nobody records it here: what close() can do is see the queue handed to the network
            if time.monotonic() >= deadline:
                raise Undelivered(self.seq, f"none of {self.seq} messages from {self.sender!r} confirmed: the "
                                            f"daemon recording {log.root} did not answer within {wait:.0f} s")
            time.sleep(ACK_POLL_S)
        while answer[0] < self.seq:
            if time.monotonic() >= deadline:
                missing = self.seq - answer[0]
                raise Undelivered(missing, f"{missing} of {self.seq} messages from {self.sender!r} not confirmed "
                                           f"within {wait:.0f} s by the daemon on {endpoint} (it has up to {answer[0]})")
            time.sleep(ACK_POLL_S)
            answer = self.acknowledged(endpoint) or answer
        lost = answer[1] - self.missing_before if self.missing_before is not None else 0
        if lost > 0:
            raise Undelivered(lost, f"{lost} of {self.seq} messages from {self.sender!r} never reached the daemon "
                                    f"on {endpoint} (its gap records name them)")

    def _stop_watching(self) -> None:
        if self.handshake is not None:
            self.sock.disable_monitor()
            self.handshake.close(linger=0)
            self.handshake = None

    def close(self, timeout: float | None = None) -> None:
        """Deliver everything sent, then close; raise ``Undelivered`` saying how many could not be."""
        if self.sock.closed:
            return
        self._stop_watching()
        timeout = self.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            self.flush(timeout)
        finally:
            self.sock.close(linger=max(0, int((deadline - time.monotonic()) * 1000)))
            if self.own_ctx:
                self.ctx.term()  # returns once the queue is on the network, or the linger is over
        if self.own_ctx and time.monotonic() >= deadline and (self.seq or self.raw_sent):
            sent = self.seq + self.raw_sent
            raise Undelivered(sent, f"could not hand all of {sent} messages to {self.endpoint} within {timeout:.0f} s; "
                                    "some may be lost")

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _client_keys(choice: str | Path | bool | None) -> _curve.Keys | None:
    """The CURVE client keys a ``Publisher`` uses: from ``choice``, or from the config when it is None."""
    if choice is None:
        cfg = config.load()
        return _curve.client_keys(cfg.curve.keys_path) if cfg.curve.enabled else None
    if choice is False:
        return None
    if choice is True:
        raise TypeError("curve=True: give the keys directory (or None to follow the config)")
    return _curve.client_keys(Path(choice).expanduser())
