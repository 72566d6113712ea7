"""The bus's inbox: messages taken off the socket and not yet recorded, in order, counted exactly.

libzmq cannot say how many messages wait in a socket's queue, so the bus
takes them into this inbox as they arrive and ``status`` counts it. The
frames are packed into large buffers (``CHUNK``), not kept as a Python object
each: a burst of a few hundred thousand small objects leaves Python's heap
fragmented for good (the daemon stayed at ≈ 90 MB after a 200k-message
burst), where a buffer, once read, goes back to the C library and from there
to the system (``memory.release``).
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable

import zmq

NOBLOCK = int(zmq.NOBLOCK)
CHUNK = 1 << 20  # a new buffer once the last holds this many bytes


class Inbox:
    """A FIFO of multipart messages: ``fill`` from a socket, ``take`` whole messages as ``list[bytes]``."""

    def __init__(self) -> None:
        # each: (the frames' bytes one after another, each frame's length; ~length when more frames follow)
        self.chunks: deque[tuple[bytearray, array]] = deque()
        self.messages = 0
        self.bytes = 0
        self.next_frame = 0  # where the oldest message starts in chunks[0]: its frame index...
        self.next_byte = 0  # ... and its byte offset

    def __len__(self) -> int:
        return self.messages

    def _chunk(self) -> tuple[bytearray, array]:
        """The buffer the next message goes in."""
        if not self.chunks or len(self.chunks[-1][0]) >= CHUNK:
            self.chunks.append((bytearray(), array("q")))
        return self.chunks[-1]

    def fill(self, recv: Callable[..., zmq.Frame], most: int, max_bytes: int) -> int:
        """Receive with ``recv`` (a socket's, without waiting) until it has nothing, ``most`` messages were
        taken or the inbox holds ``max_bytes``; returns how many were taken.

        Frames come as ``zmq.Frame`` so ``more`` says whether another follows (pyzmq's
        ``recv_multipart`` asks ``getsockopt(RCVMORE)`` per frame, which costs more than
        receiving the frame itself) and their bytes are copied once, into the buffer.
        """
        taken, nbytes = 0, self.bytes
        data, sizes = self._chunk()
        try:
            while taken < most and nbytes < max_bytes:
                frame = recv(NOBLOCK, copy=False)
                while frame.more:  # the rest of a multipart message is already here
                    sizes.append(~len(frame))
                    data += frame.buffer
                    nbytes += len(frame)
                    frame = recv(NOBLOCK, copy=False)
                sizes.append(len(frame))
                data += frame.buffer
                nbytes += len(frame)
                taken += 1
                if len(data) >= CHUNK:
                    data, sizes = self._chunk()
        except zmq.Again:
            pass
        if not sizes:  # a buffer nothing was put in
            self.chunks.pop()
        self.messages += taken
        self.bytes = nbytes
        return taken

    def take(self, limit: int, max_bytes: int) -> tuple[list[list[bytes]], int]:
        """Up to ``limit`` of the oldest messages, or fewer once they hold ``max_bytes``; and their size in bytes."""
        batch: list[list[bytes]] = []
        nbytes = 0
        while self.messages and len(batch) < limit and nbytes < max_bytes:
            data, sizes = self.chunks[0]
            i, at, end = self.next_frame, self.next_byte, len(sizes)
            with memoryview(data) as view:
                while i < end and len(batch) < limit and nbytes < max_bytes:
                    frames = []
                    more = True
                    while more:
                        n = sizes[i]
                        i += 1
                        more = n < 0
                        size = ~n if more else n
                        frames.append(view[at:at + size].tobytes())
                        at += size
                        nbytes += size
                    batch.append(frames)
                    self.messages -= 1
            if i == end:  # read through: its memory goes back (a message after this one starts a new buffer)
                self.chunks.popleft()
                i = at = 0
            self.next_frame, self.next_byte = i, at
        self.bytes -= nbytes
        return batch, nbytes

    def clear(self) -> tuple[int, int]:
        """Forget every message; returns how many there were and their bytes."""
        counts = (self.messages, self.bytes)
        self.chunks.clear()
        self.messages = self.bytes = self.next_frame = self.next_byte = 0
        return counts
