"""The bus side: one SUB socket on the agents' broker, its connection events, and what waits.

Owns the ZeroMQ socket options that decide whether a message can be lost
before it reaches us: a receive high-water mark large enough that a burst
waits in memory, and a socket monitor that reports disconnects so the loop can
record them, and, with ``[curve]`` on, the keys it connects and binds with and
the refused handshakes it counts (``curve``). It never writes a record.

libzmq cannot say how many messages wait in a socket's queue, so the bus
takes what the socket holds into an inbox of its own as it arrives (taking
frames off the socket costs a fraction of recording them; ``inbox``) and
hands the loop its batches from there: ``waiting()`` is then the inbox,
counted exactly. The inbox holds half of ``daemon.receive_hwm`` messages (and
at most ``INBOX_BYTES``), the socket the other half; once both are full the
socket reads no more and TCP pushes back on the broker, as it always did:
nothing is dropped here.
"""

from __future__ import annotations

import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from persist.daemon import curve
from persist.daemon.config import CurveSection, DaemonSection
from persist.daemon.inbox import NOBLOCK, Inbox
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.record import iso_utc

MONITORED = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | curve.HANDSHAKE_FAILED
INBOX_BYTES = 256 << 20  # the inbox takes no more than this off the socket; the rest waits there
TAKE_AT_ONCE = 10_000  # messages taken off the socket per turn of the loop, at most (it stays responsive)
log = get_logger("persist.daemon")


class BusError(RuntimeError):
    """An endpoint could not be connected or bound, or its CURVE keys cannot be used."""


class Bus:
    """A SUB socket connected to (or bound on) the configured endpoints."""

    def __init__(self, ctx: zmq.Context, cfg: DaemonSection, secure: CurveSection | None = None) -> None:
        self.inbox_limit = max(1, cfg.receive_hwm // 2)  # receive_hwm in all: half in the inbox, half in the socket
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, max(1, cfg.receive_hwm - self.inbox_limit))
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.inbox = Inbox()  # taken off the socket, not yet handed to the loop
        self.subscriptions: list[str] = []
        self.subscribe(cfg.subscribe)
        self.monitor = self.sock.get_monitor_socket(MONITORED)
        self.curve = secure if secure is not None and secure.enabled else None
        self.auth: curve.Authenticator | None = None
        self.allowed = 0
        try:
            client = curve.client_keys(self.curve.keys_path) if self.curve and cfg.connect else None
            server = curve.server_keys(self.curve.keys_path) if self.curve and cfg.bind else None
            if server is not None:  # the ZAP handler is there before the first client can knock
                self.auth = curve.Authenticator(ctx, self.curve.keys_path, self.curve.allow_any)
                self.allowed = self.auth.reload()
        except curve.CurveError as exc:
            self.close()
            raise BusError(str(exc)) from None
        self.refusals = curve.Refusals(lambda r: log.warning("handshake_refused", **r), self.auth)
        self.endpoints = list(cfg.connect)
        if client is not None:  # options are taken at connect/bind time: clients first, then the server side
            client.client(self.sock)
        for endpoint in cfg.connect:
            self._attach(self.sock.connect, endpoint, "connect to")
        if server is not None:
            server.serve(self.sock)
        for endpoint in cfg.bind:
            self._attach(self.sock.bind, endpoint, "bind")
            self.endpoints.append(self.sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self.connected_to = set(cfg.connect)
        now = iso_utc(time.time_ns())
        self.state = {e: {"endpoint": e, "state": "connecting", "since": now} for e in cfg.connect}
        self.state.update({e: {"endpoint": e, "state": "listening", "since": now} for e in self.endpoints[len(cfg.connect):]})
        self.last_message_ns = 0

    def _attach(self, how, endpoint: str, verb: str) -> None:
        try:
            how(endpoint)
        except zmq.ZMQError as exc:
            raise BusError(f"cannot {verb} {endpoint}: {exc.strerror}") from None

    def subscribe(self, prefixes: list[str]) -> None:
        """Replace the subscription prefixes (``""`` means everything).

        New prefixes first, then the dropped ones go: a prefix kept across a
        reload is never unsubscribed, not even for a moment, so nothing it
        covers is lost to the reload.
        """
        for prefix in prefixes:
            if prefix not in self.subscriptions:
                self.sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        for old in self.subscriptions:
            if old not in prefixes:
                self.sock.setsockopt(zmq.UNSUBSCRIBE, old.encode())
        self.subscriptions = list(prefixes)

    def receive(self, limit: int, max_bytes: int) -> tuple[list[list[bytes]], int]:
        """Up to ``limit`` messages, or fewer once they hold ``max_bytes``, without waiting;
        ``([], 0)`` if none. Returns the messages and their size in bytes. What the socket
        holds is taken into the inbox first, so that ``waiting()`` can count it."""
        self.take()
        return self.inbox.take(limit, max_bytes)

    def take(self) -> None:
        """Move what the socket holds into the inbox, up to its bounds and ``TAKE_AT_ONCE`` messages."""
        room = min(TAKE_AT_ONCE, self.inbox_limit - len(self.inbox))
        if room > 0 and self.inbox.fill(self.sock.recv, room, INBOX_BYTES):
            self.last_message_ns = time.time_ns()

    def waiting(self) -> dict[str, Any]:
        """What was received and not yet handed to the loop: ``messages`` and ``bytes`` (exact), and ``full``:
        the inbox is at its bound, so more may wait in the socket and, pushed back, in the broker."""
        inbox = self.inbox
        return {"messages": len(inbox), "bytes": inbox.bytes,
                "full": len(inbox) >= self.inbox_limit or inbox.bytes >= INBOX_BYTES}

    def discard(self, deadline: float) -> dict[str, Any]:
        """Receive and count what is still queued, without recording it, until the queue is
        empty or ``deadline`` (monotonic) passes: the counts of a shutdown gap record."""
        count, nbytes = self.inbox.clear()  # taken off the socket, never recorded
        first = time.time_ns() if count else None
        recv = self.sock.recv
        complete = False
        try:
            while count % 1000 or time.monotonic() < deadline:
                frame = recv(NOBLOCK, copy=False)
                nbytes += len(frame)
                while frame.more:
                    frame = recv(NOBLOCK, copy=False)
                    nbytes += len(frame)
                count += 1
                first = first or time.time_ns()
        except zmq.Again:
            complete = True
        gap: dict[str, Any] = {"dropped": count, "bytes": nbytes, "count_complete": complete}
        if first:
            gap.update({"from": iso_utc(first), "to": iso_utc(time.time_ns())})
        return gap

    def events(self) -> list[tuple[str, str]]:
        """Pending ``("connected" | "disconnected", endpoint)`` events of connected endpoints."""
        found = []
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            endpoint = event["endpoint"].decode(errors="replace")
            if self.refusals.event(event, curve.CLIENT if endpoint in self.connected_to else curve.SERVER):
                continue
            if endpoint in self.connected_to:
                what = "connected" if event["event"] == zmq.EVENT_CONNECTED else "disconnected"
                self.state[endpoint] = {"endpoint": endpoint, "state": what, "since": iso_utc(time.time_ns())}
                found.append((what, endpoint))
        return found

    def status(self) -> list[dict[str, Any]]:
        """Each endpoint: ``connecting``, ``connected``, ``disconnected`` or ``listening``, since when;
        and when the last message arrived (from any of them)."""
        last = iso_utc(self.last_message_ns) if self.last_message_ns else None
        return [{**state, "last_message_at": last} for state in self.state.values()]

    def curve_status(self) -> dict[str, Any] | None:
        """CURVE on the bus: the keys dir, who may connect, how many handshakes were refused (None: off)."""
        if self.curve is None:
            return None
        return {"keys_dir": str(self.curve.keys_path), "allow": "any" if self.curve.allow_any else self.allowed,
                **self.refusals.status()}

    def reload_allow_list(self) -> None:
        """SIGHUP: read ``clients/`` again (a key added or removed counts from the next handshake)."""
        if self.auth is not None:
            try:
                self.allowed = self.auth.reload()
            except curve.CurveError as exc:
                log.error("allow_list_unreadable", error=str(exc), hint="the old allow-list stays in force")

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
