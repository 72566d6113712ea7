"""The control socket under hostile clients: no request stops the daemon or wedges the socket."""

from __future__ import annotations

import socket

import zmq

from persist.daemon.control import MAX_REQUEST, ask, socket_path


def hostile_requests(ctx: zmq.Context, endpoint: str) -> None:
    """Every kind of bad client at once: odd frames, bytes, sizes, and clients that never read."""
    cases = [[b"ping", b"second frame"], [b"\xff\xfe\x00binary"], [b""], [b"x" * (MAX_REQUEST * 16)],
             [b"status", b"", b""], [b"checkpoint " + b"\xc3\x28" * 50], [b"ping"] * 40]
    for frames in cases:
        req = ctx.socket(zmq.REQ)
        req.connect(endpoint)
        req.send_multipart(frames)
        req.close(linger=500)  # gone before the answer comes
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.SNDHWM, 0)
    dealer.connect(endpoint)
    for i in range(3000):  # never reads a reply
        dealer.send_multipart([b"", b"status"] if i % 2 else [b"ping", b"two", b"three"])
    dealer.send_multipart([b"", b""])
    dealer.send(b"")
    for _ in range(200):  # clients that ask and leave at once
        req = ctx.socket(zmq.REQ)
        req.connect(endpoint)
        req.send(b"status")
        req.close(linger=0)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # not ZeroMQ at all
    raw.connect(socket_path(endpoint))
    raw.sendall(b"\xff" * 10 + b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)) * 64)
    raw.close()
    dealer.close(linger=2000)


def test_no_request_stops_the_daemon_or_wedges_the_socket(recorder, ctx):
    daemon, pub = recorder()
    endpoint = daemon.log.control_endpoint
    hostile_requests(ctx, endpoint)
    assert ask(endpoint, "ping", timeout_ms=5000)["ok"]
    lingering = ctx.socket(zmq.REQ)  # a client that sent two frames is answered, not dropped
    lingering.connect(endpoint)
    lingering.send_multipart([b"ping", b"again"])
    assert lingering.poll(5000), "a two-frame request gets an answer"
    assert "one frame" in lingering.recv_json()["error"]
    lingering.close()
    assert daemon.status()["ok"]
    pub.send(b"agent.after", b'{"text":"still recording"}')
    assert [e.rec["topic"] for e in daemon.wait_records(1)] == ["agent.after"]
    assert daemon.stop() == 0
