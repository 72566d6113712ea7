"""CURVE on the bus (SPEC section 14), over real sockets on loopback: keys from ``persist-cli keys init``;
a broker and a daemon that take only keyed clients, say who they refused and record nothing of them; a
keyed publisher recorded byte for byte; a TCP relay that never sees a word sent through CURVE."""

from __future__ import annotations

import os
import signal
import socket
import stat
import threading
import time
import uuid
from pathlib import Path

import pytest
import zmq
from zmq.auth import load_certificate

from libdir import Built, cli, run_cli
from persist.agent.publisher import NoSubscriber
from persist.agent.publisher import Publisher as AgentPublisher
from persist.daemon.curve import CurveError, check_bind, client_keys, loopback
from persist.daemon.log.record import decode_frames
from procs import Broker, Daemon, eventually, read_until, run, wait_for


@pytest.fixture
def keys(workdir) -> Path:
    ran = run_cli("keys", "init", "--dir", workdir / "keys")
    assert ran.returncode == 0, ran.stderr
    return workdir / "keys"


def stranger_keys(workdir, keys) -> Path:
    """A keys dir with the right server key but a client pair the allow-list does not hold."""
    other = workdir / "stranger"
    assert run_cli("keys", "init", "--dir", other).returncode == 0
    (other / "server.key").unlink()
    (other / "server.key").write_bytes((keys / "server.key").read_bytes())
    return other


def plain_pub(ctx, endpoint: str, keys_dir: Path | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    if keys_dir is not None:
        client_keys(keys_dir).client(sock)
    sock.connect(endpoint)
    return sock


def hammer(sock: zmq.Socket, frames: list[bytes], seconds: float) -> None:
    """Keep sending for ``seconds``: a socket whose handshake went through would get some across."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass
        time.sleep(0.02)


def raw_log_bytes(log_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(log_dir.rglob("*.jsonl")))


def test_keys_init_makes_private_z85_key_pairs_and_never_overwrites(keys):
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret", "clients/client.key"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600, name
    server_public, server_secret = load_certificate(keys / "server.key_secret")
    client_public, client_secret = load_certificate(keys / "client.key_secret")
    assert len(server_public) == len(server_secret) == len(client_public) == 40
    assert load_certificate(keys / "server.key") == (server_public, None)
    assert load_certificate(keys / "clients" / "client.key") == (client_public, None)
    assert zmq.curve_public(client_secret) == client_public
    before = (keys / "server.key_secret").read_bytes()
    again = run_cli("keys", "init", "--dir", keys)
    assert again.returncode == 1 and "already exists" in again.stderr and len(again.stderr.splitlines()) == 1
    assert (keys / "server.key_secret").read_bytes() == before
    (keys / "client.key_secret").chmod(0o644)
    with pytest.raises(CurveError, match=r"client\.key_secret may be read by others.*chmod 600"):
        client_keys(keys)


def test_a_curve_broker_records_keyed_publishers_byte_for_byte_and_refuses_the_others(
        workdir, log_dir, keys, ctx, monkeypatch):
    broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "--keys-dir", str(keys))
    daemon = Daemon(log_dir, "--connect", broker.backend, "--keys-dir", str(keys))
    try:
        daemon.start()
        config = workdir / "persist.toml"
        config.write_text(f'[curve]\nenabled = true\nkeys_dir = "{keys}"\n')
        monkeypatch.setenv("PERSIST_CONFIG", str(config))  # the helper finds its keys as an agent would
        sent = [[b"agent.bin", bytes(range(256)), b"\x00extra\xff"], [b"agent.text", "naïve\nline".encode()],
                [b"agent.json", b'{"text":  "spaced"}']]
        with AgentPublisher("keyed", broker.frontend, log_dir=log_dir) as pub:
            pub.send("agent.chat", {"text": "hello through curve"})
            for frames in sent:
                pub.send(frames[0].decode(), *frames[1:])
        records = {e.rec["topic"]: e for e in daemon.wait_records(4)}
        for frames in sent:
            assert decode_frames(records[frames[0].decode()].line) == frames, "recorded byte for byte"
        assert records["agent.chat"].rec["payload"]["text"] == "hello through curve"

        unkeyed = plain_pub(ctx, broker.frontend)
        stranger = plain_pub(ctx, broker.frontend, stranger_keys(workdir, keys))
        hammer(unkeyed, [b"agent.chat", b"UNKEYED-WORD"], 1.0)
        hammer(stranger, [b"agent.chat", b"STRANGER-WORD"], 1.0)
        seen = read_until(broker.proc.stderr.fileno(), "not on the allow-list")  # said after the unkeyed one
        unkeyed_lines = [line for line in seen.splitlines() if "client key" not in line]
        assert unkeyed_lines and ("without CURVE" in unkeyed_lines[0] or "does not speak CURVE" in unkeyed_lines[0])
        stranger_public = load_certificate(workdir / "stranger" / "client.key")[0].decode()
        assert f"client key {stranger_public}" in seen and "from 127.0.0.1" in seen, seen
        with pytest.raises(NoSubscriber, match="refused this publisher's handshake.*allow-list"):
            AgentPublisher("stranger", broker.frontend, wait=1.5, curve=workdir / "stranger").send("x", {"a": 1})
        with pytest.raises(NoSubscriber, match="refused this publisher's handshake.*(does not speak|without) CURVE"):
            AgentPublisher("plain", broker.frontend, wait=1.5, curve=False).send("x", {"a": 1})
        raw = raw_log_bytes(log_dir)
        assert b"UNKEYED-WORD" not in raw and b"STRANGER-WORD" not in raw, "nothing of a refused client is recorded"
        assert daemon.stop() == 0
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.kill9()
        broker.kill()


def test_a_binding_daemon_refuses_unkeyed_and_unknown_clients_logs_and_counts_them(workdir, log_dir, keys, ctx):
    daemon = Daemon(log_dir, "--bind", "tcp://127.0.0.1:*", "--keys-dir", str(keys)).start()
    try:
        endpoint = daemon.status()["endpoints"][0]
        assert daemon.status()["curve"] == {"keys_dir": str(keys), "allow": 1, "refused": 0, "last_refused": None}
        unkeyed = plain_pub(ctx, endpoint)
        hammer(unkeyed, [b"agent.chat", b"UNKEYED-WORD"], 0.8)
        first = eventually(lambda: daemon.status()["curve"]["refused"])
        assert first >= 1 and "CURVE" in daemon.status()["curve"]["last_refused"]["reason"]
        unkeyed.close()  # it retries every 100 ms: each of its refusals would be the last one
        time.sleep(0.3)
        stranger_dir = stranger_keys(workdir, keys)
        stranger = plain_pub(ctx, endpoint, stranger_dir)
        hammer(stranger, [b"agent.chat", b"STRANGER-WORD"], 0.8)
        last = eventually(lambda: (daemon.status()["curve"]["last_refused"] or {}).get("client_key"))
        assert last == load_certificate(stranger_dir / "client.key")[0].decode()
        assert daemon.status()["curve"]["last_refused"]["address"] == "127.0.0.1"
        keyed = plain_pub(ctx, endpoint, keys)
        frames = [b"agent.bin", b"\x00\x01 keyed \xfe", b"tail"]
        wait_for(lambda: hammer(keyed, frames, 0.1) or daemon.user_records(), what="a keyed message recorded")
        assert decode_frames(daemon.user_records()[0].line) == frames
        shown = cli(log_dir, "status")
        assert "curve" in shown.stdout and "handshake(s) refused" in shown.stdout, shown.stdout
        for sock in (stranger, keyed):
            sock.close()
        assert daemon.stop() == 0
        refused = [line for line in daemon.errors().splitlines() if "handshake_refused" in line]
        assert any("CURVE" in line and "client_key" not in line for line in refused), daemon.errors()[-2000:]
        assert any(last in line for line in refused)
        assert len(refused) <= 4, "a client retrying every 100 ms is logged once per 10 s, not each time"
        raw = raw_log_bytes(log_dir)
        assert b"UNKEYED-WORD" not in raw and b"STRANGER-WORD" not in raw
    finally:
        if daemon.proc.poll() is None:
            daemon.kill9()


class Relay:
    """A plain TCP relay that keeps every byte it forwards (an eavesdropper on the wire)."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closing = True
        self.server.close()


@pytest.mark.parametrize("secure", [True, False], ids=["curve", "plain"])
def test_a_relay_between_publisher_and_broker_never_sees_a_word_sent_through_curve(workdir, keys, secure):
    word = f"unique-{uuid.uuid4().hex}".encode()
    extra = ["--keys-dir", str(keys)] if secure else []
    broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", *extra)
    relay = Relay(broker.frontend)
    daemon = Daemon(workdir / "logs", "--connect", broker.backend, *extra)
    try:
        daemon.start()
        with AgentPublisher("relayed", relay.endpoint, log_dir=daemon.log_dir, curve=keys if secure else False) as pub:
            pub.send("agent.chat", {"text": f"the word is {word.decode()}"})
        (record,) = daemon.wait_records(1)
        assert word.decode() in record.rec["payload"]["text"], "recorded through the relay either way"
        with relay.lock:
            seen = bytes(relay.seen)
        assert len(seen) > 100, "the relay carried the connection"
        if secure:
            assert word not in seen and b"the word is" not in seen, "CURVE: the relay sees only ciphertext"
        else:
            assert word in seen, "without CURVE the relay reads the word (so the test can fail)"
        assert daemon.stop() == 0
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.kill9()
        relay.close()
        broker.kill()


def test_replay_through_a_curve_broker_with_keys_and_refused_without(workdir, log_dir, keys):
    broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "--keys-dir", str(keys))
    daemon = Daemon(log_dir, "--connect", broker.backend, "--keys-dir", str(keys))
    try:
        daemon.start()
        with AgentPublisher("src", broker.frontend, log_dir=log_dir, curve=keys) as pub:
            pub.send("agent.chat", {"text": "say it twice"})
        (original,) = daemon.wait_records(1)
        refused = cli(log_dir, "replay", "--as-fast", "--to", broker.frontend, "--wait", "1.5")
        assert refused.returncode == 1 and "refused the replay's handshake" in refused.stderr, refused.stderr
        ran = cli(log_dir, "replay", "--as-fast", "--to", broker.frontend, "--keys-dir", str(keys), "--json")
        assert ran.returncode == 0, ran.stderr
        copies = wait_for(lambda: [e for e in daemon.user_records() if e.rec["meta"].get("replay_of")],
                          what="the replayed copy")
        assert decode_frames(copies[0].line) == decode_frames(original.line)
        assert daemon.stop() == 0
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.kill9()
        broker.kill()


def test_binding_beyond_loopback_without_curve_is_refused_unless_insecure(workdir, keys):
    assert loopback("tcp://127.0.0.1:7") and loopback("tcp://[::1]:5") and loopback("ipc:///tmp/x")
    assert not loopback("tcp://*:7") and not loopback("tcp://0.0.0.0:1") and not loopback("tcp://eth0:1")
    with pytest.raises(CurveError, match=r"refusing to bind .* tcp://\*:1 without CURVE.*--insecure"):
        check_bind(["tcp://127.0.0.1:1", "tcp://*:1"], curve=False, insecure=False, what="x on")
    log = str(workdir / "l")
    refused = run("persist-daemon", "--log-dir", log, "--bind", "tcp://0.0.0.0:*", "--check-config")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "tcp://0.0.0.0:*" in refused.stderr and "--insecure" in refused.stderr
    for ok in (["--insecure"], ["--keys-dir", str(keys)]):
        allowed = run("persist-daemon", "--log-dir", log, "--bind", "tcp://0.0.0.0:*", *ok, "--check-config")
        assert allowed.returncode == 0, allowed.stderr
    broker = run("persist-cli", "broker", "--frontend", "tcp://*:*", "--backend", "tcp://127.0.0.1:*", timeout=20)
    assert broker.returncode == 1 and "refusing to bind the broker on tcp://*:*" in broker.stderr, broker.stderr
    built = Built(workdir / "built")
    built.send(b"agent.chat", b'{"text":"x"}')
    built.close()
    replay = cli(built.root, "replay", "--bind", "--to", "tcp://0.0.0.0:*", "--as-fast")
    assert replay.returncode == 1 and "refusing to bind replay on tcp://0.0.0.0:*" in replay.stderr, replay.stderr


def test_missing_keys_are_one_line_naming_the_file_and_the_fix(workdir, keys):
    empty = workdir / "nokeys"
    ran = run("persist-daemon", "--log-dir", str(workdir / "l"), "--keys-dir", str(empty), "--check-config")
    assert ran.returncode == 2 and len(ran.stderr.splitlines()) == 1, ran.stderr
    assert "nokeys/client.key_secret" in ran.stderr and "persist-cli keys init" in ran.stderr
    os.makedirs(empty, mode=0o700)
    (empty / "client.key_secret").write_bytes((keys / "client.key_secret").read_bytes())
    (empty / "client.key_secret").chmod(0o600)
    with pytest.raises(CurveError, match=r"no public key .*nokeys/server\.key; make the keys"):
        AgentPublisher("x", "tcp://127.0.0.1:9", curve=empty)
    binding = run("persist-daemon", "--log-dir", str(workdir / "l"), "--bind", "tcp://127.0.0.1:*", "--keys-dir",
                  str(empty), "--check-config")
    assert binding.returncode == 2 and "nokeys/server.key_secret" in binding.stderr, binding.stderr


def test_the_allow_list_is_read_again_on_sighup_and_allow_any_takes_any_valid_key(workdir, log_dir, keys, ctx):
    stranger_dir = stranger_keys(workdir, keys)
    daemon = Daemon(log_dir, "--bind", "tcp://127.0.0.1:*", "--keys-dir", str(keys)).start()
    try:
        endpoint = daemon.status()["endpoints"][0]
        stranger = plain_pub(ctx, endpoint, stranger_dir)
        hammer(stranger, [b"agent.chat", b"BEFORE-SIGHUP"], 0.5)
        assert eventually(lambda: daemon.status()["curve"]["refused"]), "refused while not on the list"
        (keys / "clients" / "stranger.key").write_bytes((stranger_dir / "client.key").read_bytes())
        daemon.proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: daemon.status()["curve"]["allow"] == 2), daemon.status()["curve"]
        stranger.close()  # ZeroMQ does not retry a handshake the server refused: the agent connects again
        stranger = plain_pub(ctx, endpoint, stranger_dir)
        wait_for(lambda: hammer(stranger, [b"agent.chat", b"AFTER-SIGHUP"], 0.1) or daemon.user_records(),
                 what="the stranger's message recorded once its key is on the list")
        assert b"BEFORE-SIGHUP" not in raw_log_bytes(log_dir)
        stranger.close()
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill9()
    config = workdir / "any.toml"
    config.write_text(f'[curve]\nenabled = true\nkeys_dir = "{keys}"\nallow_any = true\n')
    other = Daemon(workdir / "any-logs", "--bind", "tcp://127.0.0.1:*", "--config", str(config)).start()
    try:
        endpoint = other.status()["endpoints"][0]
        assert other.status()["curve"]["allow"] == "any"
        fresh = workdir / "fresh"
        assert run_cli("keys", "init", "--dir", fresh).returncode == 0
        (fresh / "server.key").unlink()
        (fresh / "server.key").write_bytes((keys / "server.key").read_bytes())
        anyone = plain_pub(ctx, endpoint, fresh)
        unkeyed = plain_pub(ctx, endpoint)
        wait_for(lambda: hammer(anyone, [b"agent.chat", b"ANY-KEY"], 0.1) or other.user_records(),
                 what="a key on no list, accepted under allow_any")
        hammer(unkeyed, [b"agent.chat", b"NO-KEY"], 0.5)
        assert eventually(lambda: other.status()["curve"]["refused"]), "a client without CURVE is still refused"
        assert b"NO-KEY" not in raw_log_bytes(workdir / "any-logs")
        anyone.close()
        unkeyed.close()
        assert other.stop() == 0
    finally:
        if other.proc.poll() is None:
            other.kill9()


# --- a bad allow-list file: refused at start in one line, and SIGHUP keeps the old list -----------

def test_a_malformed_allow_list_file_is_one_line_at_start_and_sighup_keeps_the_old_list(workdir, log_dir, keys):
    bad = keys / "clients" / "bad.key"
    bad.write_text("not a certificate\n")
    ran = run("persist-daemon", "--log-dir", str(workdir / "l"), "--bind", "tcp://127.0.0.1:*", "--keys-dir",
              str(keys))
    assert ran.returncode == 2 and len(ran.stderr.splitlines()) == 1, ran.stderr
    assert "clients/bad.key" in ran.stderr and "Traceback" not in ran.stderr
    bad.unlink()
    (keys / "clients" / "dir.key").mkdir()
    ran = run("persist-daemon", "--log-dir", str(workdir / "l"), "--bind", "tcp://127.0.0.1:*", "--keys-dir",
              str(keys))
    assert ran.returncode == 2 and "clients/dir.key" in ran.stderr and len(ran.stderr.splitlines()) == 1, ran.stderr
    (keys / "clients" / "dir.key").rmdir()

    daemon = Daemon(log_dir, "--bind", "tcp://127.0.0.1:*", "--keys-dir", str(keys)).start()
    try:
        assert daemon.status()["curve"]["allow"] == 1
        bad.write_text("public-key = nope\n")  # there, but not a 40-character z85 key
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "allow_list_unreadable" in daemon.errors(), what="the SIGHUP's one line")
        said = [line for line in daemon.errors().splitlines() if "allow_list_unreadable" in line]
        assert len(said) == 1 and "clients/bad.key" in said[0] and "old allow-list" in said[0], said
        assert daemon.proc.poll() is None and daemon.status()["curve"]["allow"] == 1, "alive, the old list in force"
        bad.unlink()
        daemon.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert daemon.status()["curve"]["allow"] == 1
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill9()


def test_an_authenticator_that_cannot_read_its_list_leaves_no_thread(workdir, keys, ctx):
    from persist.daemon.curve import Authenticator

    (keys / "clients" / "bad.key").write_text("garbage\n")
    before = threading.active_count()
    with pytest.raises(CurveError, match=r"clients/bad\.key"):
        Authenticator(ctx, keys, False)
    assert eventually(lambda: threading.active_count() == before), "the ZAP thread was stopped"


def test_replay_that_cannot_bind_stops_its_zap_thread(workdir, keys, ctx):
    from persist.daemon.config import CurveSection
    from persist.daemon.replay import open_socket

    taken = ctx.socket(zmq.PUB)
    taken.setsockopt(zmq.LINGER, 0)
    taken.bind("tcp://127.0.0.1:*")
    endpoint = taken.getsockopt_string(zmq.LAST_ENDPOINT)
    before = threading.active_count()
    with pytest.raises(zmq.ZMQError):
        open_socket(ctx, endpoint, True, CurveSection(enabled=True, keys_dir=str(keys)))
    assert eventually(lambda: threading.active_count() == before), "the ZAP thread was stopped"
    taken.close()


def test_a_curve_server_with_no_zap_handler_admits_nobody(workdir, keys, ctx):
    """ZAP_ENFORCE_DOMAIN: without it libzmq lets any valid key in when no ZAP handler answers."""
    from persist.daemon.curve import server_keys

    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    server_keys(keys).serve(sub)
    assert sub.getsockopt(zmq.ZAP_ENFORCE_DOMAIN) == 1
    sub.bind("tcp://127.0.0.1:*")
    pub = plain_pub(ctx, sub.getsockopt_string(zmq.LAST_ENDPOINT), keys)  # a key on the list, even
    hammer(pub, [b"agent.chat", b"x"], 1.0)
    assert not sub.poll(200), "nothing gets through with no ZAP handler to say yes"
    pub.close()
    sub.close()


def test_the_broker_reads_its_allow_list_again_on_sighup(workdir, log_dir, keys, ctx):
    stranger_dir = stranger_keys(workdir, keys)
    broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "--keys-dir", str(keys))
    daemon = Daemon(log_dir, "--connect", broker.backend, "--keys-dir", str(keys))
    try:
        daemon.start()
        (keys / "clients" / "bad.key").mkdir()
        broker.proc.send_signal(signal.SIGHUP)
        said = read_until(broker.proc.stderr.fileno(), "stays in force")
        assert "clients/bad.key" in said and broker.proc.poll() is None, said
        (keys / "clients" / "bad.key").rmdir()
        (keys / "clients" / "stranger.key").write_bytes((stranger_dir / "client.key").read_bytes())
        broker.proc.send_signal(signal.SIGHUP)
        assert "2 key(s) on the allow-list" in read_until(broker.proc.stderr.fileno(), "on the allow-list")
        stranger = plain_pub(ctx, broker.frontend, stranger_dir)
        wait_for(lambda: hammer(stranger, [b"agent.chat", b"AFTER-SIGHUP"], 0.1) or daemon.user_records(),
                 what="the stranger's message through the broker once its key is on the list")
        stranger.close()
        assert daemon.stop() == 0
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.kill9()
        broker.kill()
