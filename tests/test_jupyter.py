"""A real peer nobody here wrote: a Jupyter kernel's IOPub stream, recorded and read (SPEC section 15).

The kernel (ipykernel, started by jupyter_client) prints, raises, displays an
image and sends a comm message with a binary buffer; a real daemon records its
IOPub port while a raw SUB on the same port sees the same frames. Then every
reading command must show what a person means by each message: the body and
the header fields, not ``<IDS|MSG>``.
"""

from __future__ import annotations

import threading
import time

import orjson
import pytest
import zmq
from jupyter_client import KernelManager

from persist.daemon.log.record import is_system
from procs import Daemon, run, wait_for

CELL = '''
print("hello from the kernel")
from IPython.display import display, Image
import base64
display(Image(data=base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")))
from comm import create_comm
create_comm(target_name="persist.test", data={"opened": True}).send(data={"hello": "comm"},
                                                                      buffers=[b"\\x00\\x01binary\\xff"])
1/0
'''


@pytest.fixture(scope="module")
def kernel_session(tmp_path_factory):
    """One kernel, one cell, recorded by a daemon and seen by a raw SUB; shared by the module's tests."""
    km = KernelManager(kernel_name="python3")
    km.start_kernel(extra_arguments=["--HistoryManager.enabled=False"])
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    info = km.get_connection_info()
    iopub = f"{info['transport']}://{info['ip']}:{info['iopub_port']}"
    log_dir = tmp_path_factory.mktemp("jupyter") / "logs"
    daemon = Daemon(log_dir, "--connect", iopub).start()
    ctx = zmq.Context()
    raw = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.SUBSCRIBE, b"")
    raw.connect(iopub)
    seen: list[list[bytes]] = []
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            if raw.poll(100):
                seen.append(raw.recv_multipart())

    thread = threading.Thread(target=receive)
    thread.start()
    try:
        # both subscribers are joined once each has seen a status message of its own asking
        wait_for(lambda: kc.kernel_info() and len(seen) > 1 and any(
            e.rec["topic"].endswith(".status") for e in daemon.records()), timeout=30, what="both subscribers")
        first = len(seen)
        msg_id = kc.execute(CELL)
        wait_for(lambda: any(b'"idle"' in f[-1] and msg_id.encode() in f[4] for f in seen[first:]), timeout=30,
                 what="the cell to finish")
        cell = [f for f in seen[first:] if msg_id.encode() in f[4]]
        wait_for(lambda: len([e for e in daemon.records() if msg_id in e.line.decode(errors="replace")]) >= len(cell),
                 what="the daemon to record the cell")
        yield daemon, msg_id, cell
    finally:
        done.set()
        thread.join()
        ctx.destroy(linger=0)
        if daemon.proc.poll() is None:
            daemon.stop()
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def cli(daemon, *args):
    return run("persist-cli", *args, "--log-dir", str(daemon.log_dir))


def cell_records(daemon, msg_id):
    return [e for e in daemon.records() if not is_system(e.rec) and e.rec["meta"].get("thread_id") == msg_id]


def test_every_message_is_recorded_byte_for_byte(kernel_session):
    daemon, msg_id, cell = kernel_session
    recorded = [e.frames() for e in cell_records(daemon, msg_id)]
    assert recorded == cell, "the same frames as a raw SUB on the same port, in order"
    assert any(len(f) == 8 for f in recorded), "the comm message kept its binary buffer"


def test_the_envelope_gives_kind_thread_and_sender(kernel_session):
    daemon, msg_id, _ = kernel_session
    metas = {e.rec["meta"]["msg_type"]: e.rec["meta"] for e in cell_records(daemon, msg_id)}
    assert {"execute_input", "stream", "display_data", "error", "status", "comm_msg"} <= set(metas)
    assert metas["execute_input"]["kind"] == "request" and metas["stream"]["kind"] == "response"
    assert metas["error"]["kind"] == "error" and metas["status"]["kind"] == "heartbeat"
    assert all(m["profile"] == "jupyter" and m["body"] == 6 and m["parent_id"] == msg_id for m in metas.values())
    assert len({m["sender"] for m in metas.values()}) == 1, "one kernel session sends them all"


def test_search_finds_the_error_and_the_printed_words(kernel_session):
    daemon, msg_id, _ = kernel_session
    for word, msg_type in (("ZeroDivisionError", "error"), ("hello", "stream")):
        result = wait_for(lambda: (r := cli(daemon, "search", word, "--json")).returncode == 0 and r,
                          what=f"a hit for {word}")
        hits = [orjson.loads(x) for x in result.stdout.splitlines()]
        assert any(h["meta"].get("msg_type") == msg_type for h in hits), (word, hits)


def test_thread_is_the_cells_input_and_outputs_in_order(kernel_session):
    daemon, msg_id, _ = kernel_session
    result = cli(daemon, "thread", msg_id, "--format", "json")
    assert result.returncode == 0, result.stderr
    types = [orjson.loads(x)["meta"]["msg_type"] for x in result.stdout.splitlines()]
    assert types[0] == "status" and "execute_input" in types and types.index("execute_input") < types.index("error")
    prompt = cli(daemon, "thread", msg_id, "--format", "prompt").stdout
    assert 'print("hello from the kernel")' in prompt and "hello from the kernel\n" in prompt
    assert "ZeroDivisionError: division by zero" in prompt and "\x1b[" not in prompt, "tracebacks without ANSI"
    assert "[image/png, " in prompt and "[binary, 9 bytes: 00 01 62 69 6e 61 72 79 …]" in prompt
    assert "<IDS|MSG>" not in prompt


def test_recent_shows_message_types_and_text(kernel_session):
    daemon, _, _ = kernel_session
    out = cli(daemon, "recent", "-n", "50").stdout
    assert "[stream]" in out and "hello from the kernel" in out and "[error]" in out
    assert "<IDS|MSG>" not in out


def test_replay_gives_the_same_frames(kernel_session, ctx):
    daemon, msg_id, cell = kernel_session
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    got: list[list[bytes]] = []
    thread = threading.Thread(target=lambda: [got.append(sub.recv_multipart()) for _ in iter(lambda: sub.poll(3000), 0)])
    thread.start()
    assert cli(daemon, "replay", "--as-fast", "--thread", msg_id, "--to", f"tcp://127.0.0.1:{port}").returncode == 0
    thread.join()
    assert got == cell


def test_a_malformed_envelope_is_recorded_and_shown_as_is(recorder):
    daemon, p = recorder()
    bad = [[b"kernel.x.stream", b"<IDS|MSG>", b"sig"], [b"kernel.x.stream", b"<IDS|MSG>", b"sig", b"not json",
                                                         b"{}", b"{}", b'{"name":"stdout","text":"still shown"}']]
    for frames in bad:
        p.send(*frames)
    recs = daemon.wait_records(2)
    assert [e.frames() for e in recs] == bad
    assert "profile" not in recs[0].rec["meta"] and recs[1].rec["meta"]["profile"] == "jupyter"
    out = cli(daemon, "recent", "-n", "2").stdout
    assert "still shown" in out and "<IDS|MSG>" in out, "too few frames: shown as sent"


def test_a_header_body_bus_and_a_custom_profile(recorder, workdir):
    config = """
[[enrich.profiles]]
name = "events"
use = "header-body"
topic = "events."

[[enrich.profiles]]
name = "legacy"
frame = 1
value = "V1"
body = 3
headers = { meta = 2 }
fields = { sender = "meta.who", thread_id = "body.conversation", kind = "meta.op" }
kinds = { ask = "request" }
"""
    daemon, p = recorder(config)
    p.send(b"events.chat", b'{"sender":"planner","thread_id":"t-9","kind":"request"}', b'{"text":"plan the release"}')
    p.send(b"legacy", b"V1", b'{"who":"old-bot","op":"ask"}', b'{"conversation":"t-9","message":"legacy words"}')
    recs = daemon.wait_records(2)
    metas = [e.rec["meta"] for e in recs]
    assert metas[0]["profile"] == "events" and metas[0]["sender"] == "planner" and metas[0]["kind"] == "request"
    assert metas[1]["profile"] == "legacy" and metas[1]["sender"] == "old-bot" and metas[1]["kind"] == "request"
    thread = cli(daemon, "thread", "t-9", "--format", "prompt").stdout
    assert "plan the release" in thread and "legacy words" in thread
    found = wait_for(lambda: (r := cli(daemon, "search", "legacy", "--json")).returncode == 0 and r.stdout,
                     what="the legacy body to be searchable")
    assert orjson.loads(found.splitlines()[0])["meta"]["profile"] == "legacy"


def test_a_bad_profile_is_one_line_naming_the_key(workdir):
    (workdir / "p.toml").write_text('[[enrich.profiles]]\nname = "x"\ntopic = "a."\nbody = -1\n')
    result = run("persist-daemon", "--config", str(workdir / "p.toml"), "--check-config")
    assert result.returncode == 2 and "enrich.profiles[0].body" in result.stderr, result.stderr


def test_without_a_profile_every_json_frame_is_searchable(recorder):
    daemon, p = recorder()
    p.send(b"agent.multi", b'{"text":"first frame"}', b'{"note":"a marmalade in the third frame"}', b"\x00\xff")
    daemon.wait_records(1)
    found = wait_for(lambda: (r := cli(daemon, "search", "marmalade", "--json")).returncode == 0 and r.stdout,
                     what="the third frame's words to be searchable")
    assert orjson.loads(found)["topic"] == "agent.multi"
