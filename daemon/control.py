"""The control socket: ``ipc://<log-dir>/daemon.sock`` (mode 0600).

Answers one-line text requests (``ping``, ``status``, ``checkpoint [label]``,
``sender_seq NAME``) with one JSON object. The daemon serves it from its main
loop between batches; ``ask()`` is the client side that ``persist-cli`` uses.

It must never stop the daemon nor stall its loop: the socket is a ROUTER (no
send/receive state machine a client could wedge), replies are sent without
blocking and dropped if the client is gone, a request longer than
``MAX_REQUEST`` bytes disconnects its sender, and one turn of the loop answers
at most ``PER_TURN`` requests.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import orjson
import zmq

from persist.daemon.gaps import SenderSequences
from persist.daemon.log.errors import ControlError

Handler = Callable[[str], dict[str, Any]]
IPC_PATH_MAX = 107  # sun_path on Linux, less the terminating NUL
MAX_REQUEST = 64 * 1024  # bytes in one frame; a longer one disconnects its client
PER_TURN = 100  # requests answered per call of serve(); the rest wait for the next turn
REPLY_HWM = 1000  # replies queued for one client that does not read them; then they are dropped


def socket_path(endpoint: str) -> str:
    return endpoint.removeprefix("ipc://")


def split_request(frames: list[bytes]) -> tuple[list[bytes], str | None]:
    """(the envelope to reply with, the request text), or text None if it is not one frame.

    A REQ client puts an empty delimiter frame after its routing id; a DEALER
    may or may not.
    """
    envelope_end = 2 if len(frames) > 1 and frames[1] == b"" else 1
    envelope, body = frames[:envelope_end], frames[envelope_end:]
    if len(body) != 1:
        return envelope, None
    return envelope, body[0].decode(errors="replace").strip()


def sender_seq_handler(senders: SenderSequences) -> Handler:
    """``sender_seq NAME``: the last ``sender_seq`` the daemon has recorded from NAME (None if none),
    and how many of NAME's numbers it found missing so far."""
    return lambda name: {"sender": name, "sender_seq": senders.last.get(name), "missing": senders.missed.get(name, 0)}


class ControlServer:
    """A ROUTER socket answering requests through ``handlers[command](argument)``."""

    def __init__(self, ctx: zmq.Context, endpoint: str, handlers: dict[str, Handler]) -> None:
        path = socket_path(endpoint)
        if len(path.encode()) > IPC_PATH_MAX:
            raise ControlError(f"control socket path {path} is longer than {IPC_PATH_MAX} bytes: use a shorter --log-dir")
        if os.path.lexists(path):
            os.unlink(path)  # left by a daemon that died (or planted); we hold the lock, so the name is ours
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST)
        self.sock.setsockopt(zmq.SNDHWM, REPLY_HWM)
        old = os.umask(0o177)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise ControlError(f"cannot bind control socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600, follow_symlinks=False)
        self.path = path
        self.handlers = handlers

    def serve(self) -> None:
        """Answer the requests waiting on the socket (at most ``PER_TURN``); never raises."""
        for _ in range(PER_TURN):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:  # nothing waiting (EAGAIN), or an interrupted call
                return
            envelope, request = split_request(frames)
            try:
                self.sock.send_multipart([*envelope, self.answer(request)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the client is gone or does not read its replies: nobody to tell

    def answer(self, request: str | None) -> bytes:
        """The JSON reply to one request; a failing handler is an error reply, never an exception."""
        if request is None:
            reply = {"ok": False, "error": "a request is one frame of text, such as 'status'"}
        else:
            command, _, argument = request.partition(" ")
            handler = self.handlers.get(command)
            if handler is None:
                reply = {"ok": False, "error": f"unknown command {command[:100]!r}; try: {', '.join(self.handlers)}"}
            else:
                try:
                    reply = {"ok": True, **handler(argument.strip())}
                except Exception as exc:  # a failed request must not stop recording
                    reply = {"ok": False, "error": repr(exc)}
        try:
            return orjson.dumps(reply, default=str)
        except TypeError as exc:
            return orjson.dumps({"ok": False, "error": f"reply not serialisable: {exc}"})

    def close(self) -> None:
        self.sock.close(linger=0)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def ask(endpoint: str, request: str, timeout_ms: int = 2000) -> dict[str, Any]:
    """Send one request to a daemon's control socket and return its answer."""
    if not os.path.exists(socket_path(endpoint)):
        raise ControlError(f"no daemon is listening on {socket_path(endpoint)}")
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(request.encode())
        if not sock.poll(timeout_ms):
            raise ControlError(f"the daemon on {socket_path(endpoint)} did not answer within {timeout_ms} ms")
        return orjson.loads(sock.recv())
    finally:
        sock.close(linger=0)


def answer(endpoint: str, request: str, timeout_ms: int = 2000) -> dict[str, Any] | None:
    """The daemon's answer to ``request`` if one answered ``ok``; None if none answered or it said no."""
    try:
        reply = ask(endpoint, request, timeout_ms)
    except ControlError:
        return None
    return reply if reply.get("ok") else None
