"""``Publisher``: how an agent puts messages on the bus without losing its first ones.

A plain ZeroMQ PUB socket that sends at once loses everything it sends before
its connection and the subscriptions behind it are set up (the slow-joiner
effect). This helper uses an XPUB socket, which *receives* the subscriptions
of whoever listens (through a broker's XSUB, or directly from persist-daemon's
SUB), and its first ``send`` waits until one has arrived. Each JSON message is
stamped with the sender's name and its own sequence number (``sender_seq``),
which persist-daemon uses to name any message that went missing.
"""

from __future__ import annotations

from typing import Any

import orjson
import zmq

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"  # the broker's publisher side


class NoSubscriber(TimeoutError):
    """Nobody subscribed within the wait: messages sent now would be lost."""


class Publisher:
    def __init__(self, sender: str, endpoint: str = DEFAULT_ENDPOINT, wait: float = 5.0,
                 seq_field: str = "sender_seq", ctx: zmq.Context | None = None) -> None:
        self.sender = sender
        self.endpoint = endpoint
        self.wait = wait
        self.seq_field = seq_field
        self.seq = 0
        self.sock = (ctx or zmq.Context.instance()).socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 5000)  # close() still delivers what was sent
        self.sock.connect(endpoint)
        self.subscribed = False

    def wait_for_subscriber(self, timeout: float | None = None) -> None:
        """Block until a subscriber's subscription arrives (persist-daemon subscribes to everything)."""
        if self.subscribed:
            return
        timeout = self.wait if timeout is None else timeout
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise NoSubscriber(f"no subscriber on {self.endpoint} within {timeout:.1f} s: "
                               "is the broker running (persist-cli broker) and persist-daemon connected?")
        while self.sock.poll(0, zmq.POLLIN):
            self.sock.recv()  # subscription messages; their content is not needed
        self.subscribed = True

    def send(self, topic: str, message: dict[str, Any] | bytes | str, *extra: bytes) -> int:
        """Publish ``message`` on ``topic``; a dict is stamped with sender and sequence. Returns the seq."""
        self.wait_for_subscriber()
        self.seq += 1
        if isinstance(message, dict):
            body = orjson.dumps({"sender": self.sender, self.seq_field: self.seq, **message})
        else:
            body = message.encode() if isinstance(message, str) else message
        self.sock.send_multipart([topic.encode(), body, *extra])
        return self.seq

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
