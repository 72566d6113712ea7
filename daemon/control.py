"""The control socket: ``ipc://<log-dir>/daemon.sock`` (mode 0600).

Answers one-line text requests (``ping``, ``status``, ``checkpoint [label]``)
with one JSON object. The daemon serves it from its main loop between
batches; ``ask()`` is the client side that ``persist-cli`` uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import orjson
import zmq

from persist.daemon.errors import ControlError

Handler = Callable[[str], dict[str, Any]]
IPC_PATH_MAX = 107  # sun_path on Linux, less the terminating NUL


def socket_path(endpoint: str) -> str:
    return endpoint.removeprefix("ipc://")


class ControlServer:
    """A REP socket answering requests through ``handlers[command](argument)``."""

    def __init__(self, ctx: zmq.Context, endpoint: str, handlers: dict[str, Handler]) -> None:
        path = socket_path(endpoint)
        if len(path.encode()) > IPC_PATH_MAX:
            raise ControlError(f"control socket path {path} is longer than {IPC_PATH_MAX} bytes: use a shorter --log-dir")
        if os.path.exists(path):
            os.unlink(path)  # left by a daemon that died; we hold the lock, so it is ours
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        old = os.umask(0o177)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise ControlError(f"cannot bind control socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.path = path
        self.handlers = handlers

    def serve(self) -> None:
        """Answer every request waiting on the socket."""
        while True:
            try:
                request = self.sock.recv(zmq.NOBLOCK).decode(errors="replace").strip()
            except zmq.Again:
                return
            command, _, argument = request.partition(" ")
            handler = self.handlers.get(command)
            if handler is None:
                reply = {"ok": False, "error": f"unknown command {command!r}; try: {', '.join(self.handlers)}"}
            else:
                try:
                    reply = {"ok": True, **handler(argument.strip())}
                except Exception as exc:  # a failed request must not stop recording
                    reply = {"ok": False, "error": repr(exc)}
            self.sock.send(orjson.dumps(reply, default=str))

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
