"""Helpers of the chaos suite: how many rounds, and a steady publishing load."""

from __future__ import annotations

import os
import threading
import time

ROUNDS = int(os.environ.get("PERSIST_CHAOS_ROUNDS", "8"))


class Load:
    """A publisher thread that keeps sending numbered messages until stopped."""

    def __init__(self, publisher, topic: bytes = b"load", size: int = 300) -> None:
        self.pub = publisher
        self.topic = topic
        self.pad = b"x" * size
        self.sent = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.sent += 1
            self.pub.send(self.topic, b'{"sender":"load","n":%d,"pad":"%s"}' % (self.sent, self.pad))
            if self.sent % 20 == 0:
                time.sleep(0.002)  # a few thousand msg/s: load, not a flood that fills the disk

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        self.thread.join()
