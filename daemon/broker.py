"""A plain XSUB/XPUB proxy (``persist-cli broker``) for users who have no broker.

Publishers connect to the frontend (default 5556), subscribers such as
persist-daemon to the backend (default 5555). High-water marks are raised so a
burst waits in memory, and the backend never drops (``XPUB_NODROP``): when a
subscriber lags a full high-water mark behind, the proxy waits for it, and the
wait reaches the publishers (whose ``Publisher.send`` waits, then raises)
instead of a message being lost.
"""

from __future__ import annotations

import sys
import threading

import zmq

from persist.daemon.stopping import StopOnSignal


class BrokerError(RuntimeError):
    """The proxy cannot listen where it was asked to."""


HWM = 1_000_000


def run_proxy(frontend: str, backend: str, stop: StopOnSignal, hwm: int = HWM) -> None:
    """Forward publishers on ``frontend`` to subscribers on ``backend`` until ``stop`` is set.

    Says where it listens on stderr (the real ports when ``*`` was asked for).
    """
    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    for sock in (xsub, xpub):
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)
    xpub.setsockopt(zmq.XPUB_NODROP, 1)
    try:
        xsub.bind(frontend)
        xpub.bind(backend)
    except zmq.ZMQError as exc:
        ctx.destroy(linger=0)
        raise BrokerError(f"cannot bind {exc.strerror}: is another broker running on {frontend} or {backend}?") from None
    front, back = (s.getsockopt_string(zmq.LAST_ENDPOINT) for s in (xsub, xpub))
    # The proxy owns its sockets on its own thread; it is told to stop over a control
    # socket, never by closing sockets under it (ZeroMQ sockets are not thread-safe).
    control = ctx.socket(zmq.PAIR)
    control.bind("inproc://broker-control")
    steer = ctx.socket(zmq.PAIR)
    steer.connect("inproc://broker-control")
    thread = threading.Thread(target=zmq.proxy_steerable, args=(xsub, xpub, None, steer), daemon=True)
    thread.start()
    print(f"broker: publishers connect to {front}, subscribers to {back} (Ctrl-C stops)", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    control.send(b"TERMINATE")
    thread.join(timeout=2)
    if not thread.is_alive():  # a proxy still waiting on a stalled subscriber keeps its sockets; exit frees them
        ctx.destroy(linger=0)
