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
