"""The bus side: the socket on the agents' broker, its connection events, and how much waits in it.

Owns the ZeroMQ socket options that decide whether a message can be lost
before it reaches us: a receive high-water mark large enough that a burst
waits in memory, and a socket monitor that reports disconnects so the loop can
record them, and, with ``[curve]`` on, the keys it connects and binds with and
the refused handshakes it counts (``curve``). It never writes a record.

libzmq cannot say how many messages wait in a socket's queue, so the broker
side is an XSUB socket that a ``zmq.proxy_steerable`` thread (C code, no GIL)
forwards into an in-process SUB socket, the one the loop reads; the proxy
counts every frame and byte it forwards (its ``STATISTICS`` command), the
loop counts what it took, and the difference is what waits: ``waiting()``.
Subscriptions made on the SUB socket travel up through the proxy as they
would through any forwarder.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from persist.daemon import curve
from persist.daemon.config import CurveSection, DaemonSection
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.record import iso_utc

NOBLOCK = int(zmq.NOBLOCK)
MONITORED = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | curve.HANDSHAKE_FAILED
STATISTICS_TIMEOUT_MS = 1000  # the proxy answers within microseconds; a status never hangs on it
_names = itertools.count()
log = get_logger("persist.daemon")


class BusError(RuntimeError):
    """An endpoint could not be connected or bound, or its CURVE keys cannot be used."""


class Bus:
    """A SUB socket connected to (or bound on) the configured endpoints."""

    def __init__(self, ctx: zmq.Context, cfg: DaemonSection, secure: CurveSection | None = None) -> None:
        self.outer = ctx.socket(zmq.XSUB)  # the broker's side: connected, bound, CURVE, monitored; then the proxy's
        self.outer.setsockopt(zmq.RCVHWM, cfg.receive_hwm)
        self.outer.setsockopt(zmq.LINGER, 0)
        self.outer.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.proxy = Proxy(ctx, self.outer, cfg.receive_hwm)
        self.sock = ctx.socket(zmq.SUB)  # what the loop reads
        self.sock.setsockopt(zmq.RCVHWM, cfg.receive_hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.proxy.endpoint)
        self.subscriptions: list[str] = []
        self.subscribe(cfg.subscribe)
        self.received_frames = self.received_bytes = self.received_messages = 0
        self.monitor = self.outer.get_monitor_socket(MONITORED)
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
            client.client(self.outer)
        for endpoint in cfg.connect:
            self._attach(self.outer.connect, endpoint, "connect to")
        if server is not None:
            server.serve(self.outer)
        for endpoint in cfg.bind:
            self._attach(self.outer.bind, endpoint, "bind")
            self.endpoints.append(self.outer.getsockopt_string(zmq.LAST_ENDPOINT))
        self.connected_to = set(cfg.connect)
        now = iso_utc(time.time_ns())
        self.state = {e: {"endpoint": e, "state": "connecting", "since": now} for e in cfg.connect}
        self.state.update({e: {"endpoint": e, "state": "listening", "since": now} for e in self.endpoints[len(cfg.connect):]})
        self.last_message_ns = 0
        self.proxy.start()  # from here on only the proxy's thread touches ``outer``

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
        """Up to ``limit`` queued messages, or fewer once they hold ``max_bytes``, without
        waiting; ``([], 0)`` if none. Returns the messages and their size in bytes.

        Frames come as ``zmq.Frame`` so ``more`` says whether another follows:
        pyzmq's ``recv_multipart`` asks ``getsockopt(RCVMORE)`` per frame, which
        costs more than receiving the frame itself.
        """
        batch: list[list[bytes]] = []
        recv = self.sock.recv
        nbytes = nframes = 0
        try:
            while len(batch) < limit and nbytes < max_bytes:
                frame = recv(NOBLOCK, copy=False)
                frames = [frame.bytes]
                while frame.more:  # the rest of a multipart message is already here
                    frame = recv(NOBLOCK, copy=False)
                    frames.append(frame.bytes)
                batch.append(frames)
                nbytes += sum(map(len, frames))
                nframes += len(frames)
        except zmq.Again:
            pass
        if batch:
            self.last_message_ns = time.time_ns()
            self._took(len(batch), nframes, nbytes)
        return batch, nbytes

    def _took(self, messages: int, frames: int, nbytes: int) -> None:
        self.received_messages += messages
        self.received_frames += frames
        self.received_bytes += nbytes

    def waiting(self) -> dict[str, Any] | None:
        """What the broker has delivered and the loop has not yet taken: ``bytes`` and ``frames`` exactly,
        ``messages`` from the frames a message has had so far (exact while every message has as many);
        None if the proxy did not answer."""
        forwarded = self.proxy.forwarded()
        if forwarded is None:
            return None
        frames, nbytes = max(0, forwarded[0] - self.received_frames), max(0, forwarded[1] - self.received_bytes)
        per_message = self.received_frames / self.received_messages if self.received_messages else 2.0
        return {"messages": round(frames / per_message), "bytes": nbytes, "frames": frames}

    def discard(self, deadline: float) -> dict[str, Any]:
        """Receive and count what is still queued, without recording it, until the queue is
        empty or ``deadline`` (monotonic) passes: the counts of a shutdown gap record."""
        count = nbytes = nframes = 0
        first = None
        recv = self.sock.recv
        complete = False
        try:
            while count % 1000 or time.monotonic() < deadline:
                frame = recv(NOBLOCK, copy=False)
                nbytes += len(frame)
                nframes += 1
                while frame.more:
                    frame = recv(NOBLOCK, copy=False)
                    nbytes += len(frame)
                    nframes += 1
                count += 1
                first = first or time.time_ns()
        except zmq.Again:
            complete = True
        self._took(count, nframes, nbytes)
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
        self.proxy.stop()
        self.outer.disable_monitor()
        self.monitor.close(linger=0)
        self.outer.close(linger=0)
        self.sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()


class Proxy:
    """A ``zmq.proxy_steerable`` thread from the broker-side XSUB socket to an in-process XPUB socket,
    asked over a PAIR socket how many frames and bytes it has forwarded."""

    def __init__(self, ctx: zmq.Context, outer: zmq.Socket, hwm: int) -> None:
        name = f"inproc://persist-bus-{next(_names)}"
        self.endpoint = name
        self.outer = outer
        self.inner = ctx.socket(zmq.XPUB)  # towards the loop's SUB: subscriptions come back through it
        self.inner.setsockopt(zmq.SNDHWM, hwm)
        self.inner.setsockopt(zmq.LINGER, 0)
        self.inner.bind(name)
        self.steer = ctx.socket(zmq.PAIR)  # the proxy's end of the control pair
        self.steer.bind(name + "-control")
        self.control = ctx.socket(zmq.PAIR)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.setsockopt(zmq.RCVTIMEO, STATISTICS_TIMEOUT_MS)
        self.control.setsockopt(zmq.SNDTIMEO, STATISTICS_TIMEOUT_MS)
        self.control.connect(name + "-control")
        self.thread = threading.Thread(target=self._run, name="persist-bus-proxy", daemon=True)
        self.broken = False

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self.outer, self.inner, None, self.steer)
        except zmq.ZMQError as exc:  # only a closed context ends it otherwise; say so rather than go quiet
            if exc.errno != zmq.ETERM:
                self.broken = True
                log.error("bus_proxy_failed", error=str(exc), hint="restart the daemon; nothing more can arrive")

    def forwarded(self) -> tuple[int, int] | None:
        """(frames, bytes) forwarded to the loop's socket since the start; None if the proxy did not answer."""
        if not self.thread.is_alive():
            return None
        while self.control.poll(0):  # the late answer to a question that timed out
            self.control.recv_multipart()
        try:
            self.control.send(b"STATISTICS")
            stats = self.control.recv_multipart()
        except zmq.Again:
            return None
        return int.from_bytes(stats[6], "little"), int.from_bytes(stats[7], "little")

    def stop(self) -> None:
        if self.thread.is_alive():
            try:
                self.control.send(b"TERMINATE")
            except zmq.Again:
                pass
            self.thread.join(STATISTICS_TIMEOUT_MS / 1000)
        for sock in (self.control, self.steer, self.inner):
            sock.close(linger=0)
