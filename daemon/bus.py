"""The bus side: one SUB socket on the agents' broker, and its connection events.

Owns the ZeroMQ socket options that decide whether a message can be lost
before it reaches us: a receive high-water mark large enough that a burst
waits in memory, and a socket monitor that reports disconnects so the loop can
record them. It never writes anything.
"""

from __future__ import annotations

import zmq
from zmq.utils.monitor import recv_monitor_message

from persist.daemon.config import DaemonSection

NOBLOCK = int(zmq.NOBLOCK)
MONITORED = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED


class BusError(RuntimeError):
    """An endpoint could not be connected or bound."""


class Bus:
    """A SUB socket connected to (or bound on) the configured endpoints."""

    def __init__(self, ctx: zmq.Context, cfg: DaemonSection) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, cfg.receive_hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.subscriptions: list[str] = []
        self.subscribe(cfg.subscribe)
        self.monitor = self.sock.get_monitor_socket(MONITORED)
        self.endpoints = list(cfg.connect)
        for endpoint in cfg.connect:
            self._attach(self.sock.connect, endpoint, "connect to")
        for endpoint in cfg.bind:
            self._attach(self.sock.bind, endpoint, "bind")
            self.endpoints.append(self.sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self.connected_to = set(cfg.connect)

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

    def receive(self, limit: int) -> list[list[bytes]]:
        """Up to ``limit`` queued messages without waiting; ``[]`` if none.

        Frames come as ``zmq.Frame`` so ``more`` says whether another follows:
        pyzmq's ``recv_multipart`` asks ``getsockopt(RCVMORE)`` per frame, which
        costs more than receiving the frame itself.
        """
        batch: list[list[bytes]] = []
        recv = self.sock.recv
        try:
            while len(batch) < limit:
                frame = recv(NOBLOCK, copy=False)
                frames = [frame.bytes]
                while frame.more:  # the rest of a multipart message is already here
                    frame = recv(NOBLOCK, copy=False)
                    frames.append(frame.bytes)
                batch.append(frames)
        except zmq.Again:
            pass
        return batch

    def events(self) -> list[tuple[str, str]]:
        """Pending ``("connected" | "disconnected", endpoint)`` events of connected endpoints."""
        found = []
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            endpoint = event["endpoint"].decode(errors="replace")
            if endpoint in self.connected_to:
                found.append(("connected" if event["event"] == zmq.EVENT_CONNECTED else "disconnected", endpoint))
        return found

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
