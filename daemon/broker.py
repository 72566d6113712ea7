"""A plain XSUB/XPUB proxy (``persist-cli broker``) for users who have no broker.

Publishers connect to the frontend (default 5556), subscribers such as
persist-daemon to the backend (default 5555). High-water marks are raised so a
burst waits in memory, and the backend never drops (``XPUB_NODROP``): when a
subscriber lags a full high-water mark behind, the proxy waits for it, and the
wait reaches the publishers (whose ``Publisher.send`` waits, then raises)
instead of a message being lost.

With ``[curve]`` on it is the CURVE server on both sides: publishers and
subscribers must hold a key on its allow-list (or any valid key with
``allow_any``), and each refused handshake is said on stderr (``curve``),
which ZeroMQ alone never does. SIGHUP reads the allow-list (``clients/``) again,
and says so in one line; an allow-list it cannot read leaves the old one in force.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from persist.daemon import curve
from persist.daemon.config import CurveSection
from persist.daemon.stopping import StopOnSignal


class BrokerError(RuntimeError):
    """The proxy cannot listen where it was asked to."""


HWM = 1_000_000


def say_refused(r: dict[str, Any]) -> None:
    who = f" from {r['address']}" if r.get("address") else ""
    key = f", client key {r['client_key']}" if r.get("client_key") else ""
    again = f" (and {r['repeated']} more times since the last report)" if r.get("repeated") else ""
    print(f"broker: refused a CURVE handshake on {r['endpoint']}{who}{key}: {r['reason']}{again}",
          file=sys.stderr, flush=True)


class _ReloadOnSighup:
    """Notes SIGHUP (in a plain attribute, as ``StopOnSignal`` does); the loop reloads when it looks."""

    def __init__(self) -> None:
        self.pending = False
        try:
            signal.signal(signal.SIGHUP, self._note)
        except ValueError:  # not the main thread (the proxy run from a test or a library): no SIGHUP reload
            pass

    def _note(self, _signum: int, _frame: Any) -> None:
        self.pending = True

    def due(self) -> bool:
        if not self.pending:
            return False
        self.pending = False
        return True


def run_proxy(frontend: str, backend: str, stop: StopOnSignal, hwm: int = HWM, secure: CurveSection | None = None,
              insecure: bool = False) -> None:
    """Forward publishers on ``frontend`` to subscribers on ``backend`` until ``stop`` is set.

    Says where it listens on stderr (the real ports when ``*`` was asked for).
    ``secure`` (a ``[curve]`` section that is enabled): CURVE on both sides.
    """
    secure = secure if secure is not None and secure.enabled else None
    try:
        curve.check_bind([frontend, backend], secure is not None, insecure, "the broker on")
        keys = curve.server_keys(secure.keys_path) if secure else None
    except curve.CurveError as exc:
        raise BrokerError(str(exc)) from None
    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    monitors = [curve.monitor(s) for s in (xsub, xpub)]
    for sock in (xsub, xpub):
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)
    xpub.setsockopt(zmq.XPUB_NODROP, 1)
    auth = None
    try:
        if keys is not None:
            auth = curve.Authenticator(ctx, secure.keys_path, secure.allow_any)
            keys.serve(xsub)
            keys.serve(xpub)
        xsub.bind(frontend)
        xpub.bind(backend)
    except (zmq.ZMQError, curve.CurveError) as exc:
        if auth is not None:
            auth.stop()
        ctx.destroy(linger=0)
        if isinstance(exc, curve.CurveError):
            raise BrokerError(str(exc)) from None
        raise BrokerError(f"cannot bind {exc.strerror}: is another broker running on {frontend} or {backend}?") from None
    refusals = curve.Refusals(say_refused, auth)
    hup = _ReloadOnSighup() if auth is not None else None
    front, back = (s.getsockopt_string(zmq.LAST_ENDPOINT) for s in (xsub, xpub))
    # The proxy owns its sockets on its own thread; it is told to stop over a control
    # socket, never by closing sockets under it (ZeroMQ sockets are not thread-safe).
    control = ctx.socket(zmq.PAIR)
    control.bind("inproc://broker-control")
    steer = ctx.socket(zmq.PAIR)
    steer.connect("inproc://broker-control")
    thread = threading.Thread(target=zmq.proxy_steerable, args=(xsub, xpub, None, steer), daemon=True)
    thread.start()
    allowed = "any valid key" if secure and secure.allow_any else f"the keys in {secure.keys_path / 'clients'}" \
        if secure else ""
    secured = f"CURVE on: {allowed}; " if secure else ""
    print(f"broker: publishers connect to {front}, subscribers to {back} ({secured}Ctrl-C stops)", file=sys.stderr,
          flush=True)
    poller = zmq.Poller()
    for mon in monitors:
        poller.register(mon, zmq.POLLIN)
    while not stop.is_set():
        for mon, _ in poller.poll(200):  # the monitors live on this thread; the proxy's sockets on its own
            refusals.event(recv_monitor_message(mon), curve.SERVER)
        if hup is not None and hup.due():
            try:
                n = auth.reload()
            except curve.CurveError as exc:
                print(f"broker: SIGHUP: {exc}; the old allow-list stays in force", file=sys.stderr, flush=True)
            else:
                print(f"broker: SIGHUP: {'any valid key' if n < 0 else f'{n} key(s)'} on the allow-list",
                      file=sys.stderr, flush=True)
    control.send(b"TERMINATE")
    thread.join(timeout=2)
    for mon in monitors:
        mon.close(linger=0)
    if auth is not None:
        auth.stop()
    if not thread.is_alive():  # a proxy still waiting on a stalled subscriber keeps its sockets; exit frees them
        ctx.destroy(linger=0)
