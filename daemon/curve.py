"""CURVE on the bus (SPEC section 14): the keys, the sockets' options, who may connect, and refusals seen.

One keys directory (``[curve] keys_dir``, made by ``persist-cli keys init``)
serves every piece. Whoever *binds* (the broker, a daemon with ``--bind``,
``replay --bind``) is the CURVE server and needs ``server.key_secret``;
whoever *connects* (a daemon dialling its broker, the ``Publisher`` helper,
``replay``) is a client and needs ``client.key_secret`` and the server's
public ``server.key``. The files are ZeroMQ's certificate format (z85 keys,
as ``zmq.auth`` and czmq write them), 0600 in a 0700 directory; a secret key
file others may read is refused, as ssh refuses one.

Who may connect: the public keys (``*.key``) in ``<keys_dir>/clients/``, the
allow-list, checked by a ZAP handler (``Authenticator``, one per context);
or, with ``[curve] allow_any``, any client whose handshake is valid.

ZeroMQ says nothing about a refused handshake. ``Refusals`` reads a
socket's monitor for the handshake-failed events (a client without CURVE, a
key not on the list, a client that has the wrong server key) and keeps the
count and the last one; the ZAP handler adds who was refused (address and
public key). A client that retries every 100 ms is logged once per
``LOG_EVERY_S`` with how many times it tried, and counted every time.

``check_bind`` refuses to listen on anything but loopback without CURVE
(``--insecure`` says the user means it). This module never writes a log record.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.auth import CURVE_ALLOW_ANY
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from persist.daemon.log.record import iso_utc

SERVER, CLIENT, ALLOWED = "server", "client", "clients"
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
LOG_EVERY_S = 10.0
DOMAIN = "persist"  # the ZAP domain of every socket persist serves CURVE on
_LOOPBACK = re.compile(r"^tcp://(127(?:\.\d{1,3}){3}|localhost|\[::1\]|::1|lo):")
_PROTOCOL = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "the peer does not speak CURVE (no keys, or CURVE off on one side)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "the handshake did not decrypt (the client has another server key)",
    zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE: "the key exchange failed",
}


class CurveError(RuntimeError):
    """Keys that cannot be used: the message names the file and the config key."""


@dataclass(frozen=True)
class Keys:
    """What one piece needs from a keys directory: its own pair, and the server's public key if it connects."""

    public: bytes
    secret: bytes
    server_public: bytes | None = None  # a client's: the key of the server it connects to

    def client(self, sock: zmq.Socket) -> None:
        """Set ``sock`` up to connect as a CURVE client (before ``connect``)."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)

    def serve(self, sock: zmq.Socket) -> None:
        """Set ``sock`` up to accept CURVE clients only (before ``bind``; ZAP decides who)."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN.encode())
        # no ZAP handler answering means no client admitted (libzmq would otherwise let any valid key in)
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


# --- key files ---------------------------------------------------------------------------

def init(directory: Path) -> dict[str, Path]:
    """Make a server and a client key pair in ``directory`` (0700), the client's public key on the
    allow-list; refuse (``CurveError``) if it already holds a key: a key is never overwritten."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / ALLOWED).mkdir(mode=0o700, exist_ok=True)
    for name in (SERVER, CLIENT):
        for suffix in (".key", ".key_secret"):
            if (directory / f"{name}{suffix}").exists():
                raise CurveError(f"{directory / (name + suffix)} already exists: keys are never overwritten; "
                                 "choose another --dir, or remove the old keys yourself")
    made = {}
    for name in (SERVER, CLIENT):
        public, secret = zmq.curve_keypair()
        made[f"{name}.key"] = _write_cert(directory / f"{name}.key", public)
        made[f"{name}.key_secret"] = _write_cert(directory / f"{name}.key_secret", public, secret)
        if name == CLIENT:
            made["clients/client.key"] = _write_cert(directory / ALLOWED / "client.key", public)
    return made


def _write_cert(path: Path, public: bytes, secret: bytes | None = None) -> Path:
    kind = "Secret" if secret else "Public"
    text = (f"#   ZeroMQ CURVE {kind} Certificate, made by persist-cli keys init\n"
            + ("#   DO NOT GIVE THIS FILE TO ANYONE; it stays 0600.\n" if secret else "")
            + f'\nmetadata\ncurve\n    public-key = "{public.decode()}"\n'
            + (f'    secret-key = "{secret.decode()}"\n' if secret else ""))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _read_cert(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    from zmq.auth import load_certificate

    what = "key pair" if secret else "public key"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CurveError(f"[curve] keys_dir: no {what} {path}; make the keys with persist-cli keys init "
                         f"--dir {path.parent}") from None
    if secret and stat.S_IMODE(st.st_mode) & 0o077:
        raise CurveError(f"[curve] keys_dir: {path} may be read by others (mode {stat.S_IMODE(st.st_mode):o}): "
                         f"chmod 600 {path}")
    try:
        public, secret_key = load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveError(f"[curve] keys_dir: {path} is not a CURVE certificate ({exc})") from None
    if not _z85_key(public) or (secret and not _z85_key(secret_key)):
        raise CurveError(f"[curve] keys_dir: {path} does not hold a 40-character z85 {what}")
    return public, secret_key


def _z85_key(key: bytes | None) -> bool:
    return key is not None and len(key) == 40


def server_keys(directory: Path) -> Keys:
    public, secret = _read_cert(directory / f"{SERVER}.key_secret", secret=True)
    return Keys(public, secret)


def client_keys(directory: Path) -> Keys:
    public, secret = _read_cert(directory / f"{CLIENT}.key_secret", secret=True)
    server_public, _ = _read_cert(directory / f"{SERVER}.key", secret=False)
    return Keys(public, secret, server_public)


def allowed_dir(directory: Path) -> Path:
    path = directory / ALLOWED
    if not path.is_dir():
        raise CurveError(f"[curve] keys_dir: no allow-list directory {path} (the clients' *.key files); make it, "
                         "or set [curve] allow_any = true")
    return path


def read_allowed(path: Path) -> dict[bytes, bool]:
    """The public keys of the ``*.key`` files in ``path`` (``CurveError`` naming the first that cannot be used)."""
    from zmq.auth import load_certificate

    certs = {}
    for cert in sorted(path.glob("*.key")):
        try:
            public, _ = load_certificate(cert)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CurveError(f"[curve] keys_dir: allow-list file {cert} cannot be used ({why}); fix or remove "
                             "it") from None
        if not _z85_key(public):
            raise CurveError(f"[curve] keys_dir: allow-list file {cert} does not hold a 40-character z85 public "
                             "key; fix or remove it")
        certs[public] = True
    return certs


# --- binding -----------------------------------------------------------------------------

def loopback(endpoint: str) -> bool:
    """True for an endpoint only this machine can reach (loopback TCP, ipc, inproc)."""
    return endpoint.startswith(("ipc://", "inproc://")) or bool(_LOOPBACK.match(endpoint))


def check_bind(endpoints: list[str], curve: bool, insecure: bool, what: str) -> None:
    """``CurveError`` naming the first endpoint that is not loopback, unless CURVE is on or ``insecure``."""
    if curve or insecure:
        return
    for endpoint in endpoints:
        if not loopback(endpoint):
            raise CurveError(f"refusing to bind {what} {endpoint} without CURVE: anyone who reaches it could write "
                             "into the recorded history; set [curve] enabled = true (persist-cli keys init), bind "
                             "127.0.0.1, or pass --insecure")


# --- who may connect, and who was refused ----------------------------------------------------

class Authenticator(ThreadAuthenticator):
    """The ZAP handler of one context: the allow-list (or any valid key); notes each client it refuses."""

    def __init__(self, ctx: zmq.Context, keys_dir: Path, allow_any: bool) -> None:
        super().__init__(ctx)
        self.keys_dir = keys_dir
        self.allow_any = allow_any
        self.denied: deque[dict[str, str]] = deque(maxlen=256)  # filled by the ZAP thread, read by Refusals
        self._request: list[bytes] = []
        if not allow_any:
            allowed_dir(keys_dir)
        self.start()
        try:
            self.reload()
        except BaseException:  # a bad allow-list: no ZAP thread left running behind the error
            self.stop()
            raise

    def reload(self) -> int:
        """Read the allow-list again (SIGHUP); the number of keys on it (-1: any key).

        All or nothing: a ``*.key`` that cannot be read or holds no 40-character public key (a directory, a
        file without permission, a stray) is a ``CurveError`` naming it, and the list in force stays."""
        if self.allow_any:
            self.configure_curve(domain=DOMAIN, location=CURVE_ALLOW_ANY)
            return -1
        certs = read_allowed(allowed_dir(self.keys_dir))
        self.allow_any = False
        self.certs[DOMAIN] = certs  # one assignment: the ZAP thread sees the old list or the new one
        return len(certs)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._request = msg
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous") -> None:
        if status_code != b"200":
            msg = self._request
            key = msg[6] if len(msg) > 6 and len(msg[6]) == 32 else b""
            self.denied.append({"address": msg[3].decode(errors="replace") if len(msg) > 3 else "",
                                "client_key": z85.encode(key).decode() if key else "",
                                "reason": status_text.decode(errors="replace")})
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


def describe(event: int, value: int) -> str:
    """What a handshake-failed monitor event means, in words."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"the client's key is not on the allow-list (ZAP {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return _PROTOCOL.get(value, f"protocol error {value:#x}")
    return "the handshake broke off (a client without CURVE keys, or one that left)"


class Refusals:
    """Counts refused handshakes from monitor events, and says each new one through ``say``."""

    def __init__(self, say: Callable[[dict[str, Any]], None], auth: Authenticator | None = None) -> None:
        self.say = say
        self.auth = auth
        self.count = 0
        self.last: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._logged: dict[tuple, tuple[float, int]] = {}  # (endpoint, reason, key) -> (logged at, since then)

    def event(self, event: dict[str, Any], side: str) -> bool:
        """Note one monitor event; True if it was a refused handshake. ``side``: ``server`` (we refused a
        client) or ``client`` (the server refused us)."""
        kind = event["event"]
        if not kind & HANDSHAKE_FAILED:
            return False
        now = time.time_ns()
        refusal = {"endpoint": event["endpoint"].decode(errors="replace"), "side": side,
                   "reason": describe(kind, event["value"]), "at": iso_utc(now)}
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH and side == SERVER and self.auth is not None and self.auth.denied:
            refusal.update(self.auth.denied.popleft())
            refusal["reason"] = f"the client's key is not on the allow-list ({refusal['reason']})"
        if side == CLIENT and kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            refusal["reason"] = "the server refused this client's key (not on its allow-list)"
        with self._lock:
            self.count += 1
            self.last = refusal
            key = (refusal["endpoint"], refusal["reason"], refusal.get("client_key"))
            logged_at, since = self._logged.get(key, (0.0, 0))
            if now / 1e9 - logged_at < LOG_EVERY_S:
                self._logged[key] = (logged_at, since + 1)
                return True
            if len(self._logged) > 1024:
                self._logged.clear()
            self._logged[key] = (now / 1e9, 0)
        self.say({**refusal, "repeated": since})
        return True

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"refused": self.count, "last_refused": self.last}


def monitor(sock: zmq.Socket, events: int = 0) -> zmq.Socket:
    """A monitor socket for ``sock``'s handshake failures (and ``events``), made before it connects or binds."""
    return sock.get_monitor_socket(HANDSHAKE_FAILED | events)


def handshake_failure(mon: zmq.Socket) -> str | None:
    """Why ``mon``'s socket could not complete a handshake, if a monitor event says so (reads what waits)."""
    from zmq.utils.monitor import recv_monitor_message

    why = None
    while mon.poll(0):
        event = recv_monitor_message(mon)
        if event["event"] & HANDSHAKE_FAILED:
            why = describe(event["event"], event["value"])
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                why = "the server refused this client's CURVE key (not on its allow-list)"
    return why


def for_config(curve: Any) -> tuple[Path, bool] | None:
    """``(keys_dir, allow_any)`` of a ``[curve]`` section that is enabled, else None."""
    return (curve.keys_path, curve.allow_any) if curve.enabled else None
