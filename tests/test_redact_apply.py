"""``persist-cli redact --check`` and ``redact apply`` (SPEC section 14): secrets in records already written are
replaced in a new generation of the closed segments, crash-safe, recorded, the checkpoint chain re-rooted so
``verify`` passes, the old bytes overwritten, the index rebuilt; restore and replay give the redacted frames."""

from __future__ import annotations

import base64
import os
import signal
import time

import orjson
import pytest
import zmq
from libdir import Built, cli, run_cli
from procs import process_gone, run, wait_for
from test_search import replay_into

from persist.daemon.log import checkpoints, lock, reader
from persist.daemon.log.layout import LogDir
from persist.daemon.log.record import decode_frames, is_exact, is_system
from persist.daemon.redact import Redactor, apply
from persist.daemon.redact.rules import builtin

GH = "ghp_" + "Zq7Lm2Nx8Rt4Vb6Yc1Wd3Hf5Jk9Ps0Ta2Ue4"
AWS = "AKIA" + "QX7ZL2MN4RT6VB3Y"
ANT = "sk-ant-api03-" + "Xy7" * 31 + "AA"
PEM = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
       "QyNTUxOQAAACDfake+fake/fakeFAKEfakeFAKEfakeFAKEfakeFAKEfakeAAAAJgAAAA\n-----END OPENSSH PRIVATE KEY-----")
SECRETS = [GH, AWS, ANT, "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"]


def secret_free(root) -> list[str]:
    """Files under ``root`` that still hold one of the secrets (in the clear or base64'd)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for s in SECRETS:
                if s.encode() in data or base64.b64encode(s.encode())[:20] in data:
                    found.append(f"{path.relative_to(root)}: {s[:8]}")
    return found


@pytest.fixture
def leaky(tmp_path):
    """A log whose records leaked keys: two closed segments, checkpoints naming an active prefix and whole
    segments, and an active segment; a second of records with no secret between."""
    b = Built(tmp_path / "logs", start=time.time() - 3600)
    b.send(b"agent.chat", b'{"sender":"planner","text":"nothing to hide"}')
    b.send(b"agent.chat", orjson.dumps({"sender": "planner", "thread_id": GH, "text": f"use {GH} for the repo"}))
    b.checkpoint(label="early")  # names the active segment's first two records
    b.send(b"agent.env", f"AWS_ACCESS_KEY_ID={AWS}\nexport it".encode())
    b.send(b"agent.bin", b"\x00\xff" + ANT.encode() + b"\x80", b"extra " + GH.encode())
    b.rotate()
    b.checkpoint()
    b.send(b"agent.chat", orjson.dumps({"sender": "coder", "text": "a key:\n" + PEM}))
    b.send(b"agent.chat", b'{"sender":"coder","text":"plain again"}')
    b.rotate()
    b.checkpoint(label="mid")
    b.send(b"agent.chat", orjson.dumps({"sender": "coder", "text": f"and again {GH}"}))
    b.checkpoint()
    b.close()
    return b


def test_redact_check_shows_what_the_rules_would_catch_never_the_secret(tmp_path):
    doc = tmp_path / "paste.json"
    doc.write_text(orjson.dumps({"history": [{"content": f"token {GH}"}, {"env": {"AWS_ACCESS_KEY_ID": AWS}}],
                                 "key": PEM}, option=orjson.OPT_INDENT_2).decode() + f"\n{ANT}\n")
    ran = run_cli("redact", "--check", doc, "--log-dir", tmp_path)
    assert ran.returncode == 1, ran.stderr
    rules = [line.split()[1] for line in ran.stdout.splitlines()]
    assert sorted(rules) == ["anthropic-api-key", "aws-access-key-id", "github-token", "private-key"]
    for s in (GH, AWS, ANT):
        assert s not in ran.stdout
    assert f"{doc}:4:" in ran.stdout, "line and column say where"
    as_json = [orjson.loads(x) for x in run_cli("redact", "--check", doc, "--json").stdout.splitlines()]
    assert {f["rule"]: f["length"] for f in as_json}["github-token"] == len(GH)
    clean = tmp_path / "clean.txt"
    clean.write_text("sk-learn and a uuid 01a2198b-bef1-7f55-89ad-cdfee288bf82")
    ok = run_cli("redact", "--check", clean)
    assert ok.returncode == 0 and ok.stdout == ""
    listed = run_cli("redact", "--list", "--json")
    rows = {r["id"]: r for r in map(orjson.loads, listed.stdout.splitlines())}
    assert rows["github-token"]["on"] and not rows["high-entropy"]["on"]
    assert run_cli("redact", "--check", clean, "--enable", "nope").returncode == 2


def test_redact_apply_rewrites_closed_segments_and_verify_restore_and_replay_see_the_redacted_log(leaky):
    log = leaky.log
    before = {e.seq: e for e in reader.records(log)}
    assert secret_free(log.root), "the fixture leaked"
    ran = cli(log.root, "redact", "apply", "--since", "2h", "--json")
    assert ran.returncode == 0, ran.stderr
    result = orjson.loads(ran.stdout)
    assert result["records"] == 5 and result["secrets"] == {"github-token": 5, "aws-access-key-id": 1,
                                                            "anthropic-api-key": 1, "private-key": 1}
    assert secret_free(log.root) == [], "no file in the log dir holds a secret: segments, checkpoints, index"
    after = {e.seq: e for e in reader.records(log)}
    assert not (log.root / apply.INTENT).exists()
    assert list(after) == list(before) + [max(before) + 1], "same seqs; one record more"
    (record,) = [e for e in after.values() if e.rec["topic"] == "$persist/redact"]
    assert is_system(record.rec) and record.rec["payload"]["records"] == 5
    for seq, old in before.items():
        new = after[seq]
        assert (new.rec["id"], new.rec["received_at"]) == (old.rec["id"], old.rec["received_at"])
        if is_exact(new.rec):
            assert new.line == old.line, "a record without a secret is byte for byte what it was"
    binary = next(e for e in after.values() if e.rec["topic"] == "agent.bin")
    assert decode_frames(binary.line) == [b"agent.bin", b"\x00\xff[REDACTED:anthropic-api-key]\x80",
                                          b"extra [REDACTED:github-token]"]
    chat = after[2].rec
    assert chat["payload"]["text"] == "use [REDACTED:github-token] for the repo"
    assert chat["meta"]["thread_id"] == "[REDACTED:github-token]", "meta copied from the payload is redacted too"
    assert {n["at"] for n in chat["meta"]["redacted"]} == {"payload.thread_id", "payload.text", "meta.thread_id"}

    verified = cli(log.root, "verify", "--json")
    assert verified.returncode == 0, verified.stdout
    assert orjson.loads(verified.stdout)["redacted"] == 5
    rerooted = [m for m in checkpoints.listing(log) if m["id"] in result["checkpoints_rerooted"]]
    assert len(rerooted) == 4, "every manifest from the first naming a rewritten segment on"

    out = log.root.parent / "restored"
    restored = cli(log.root, "restore", "mid", "--out", out)
    assert restored.returncode == 0, restored.stderr
    assert cli(out, "verify").returncode == 0 and secret_free(out) == []
    assert [e.rec["id"] for e in reader.records(LogDir(out))] == [after[s].rec["id"] for s in range(1, 7)]

    assert cli(log.root, "search", GH[:12]).returncode == 1, "the index forgot the secret"
    assert cli(log.root, "search", "REDACTED").returncode == 0

    ctx = zmq.Context()
    try:
        replayed, got = replay_into(ctx, log.root, "--as-fast", "--json")
    finally:
        ctx.destroy(linger=0)
    assert replayed.returncode == 0, replayed.stderr
    assert orjson.loads(replayed.stdout)["redacted"] == 5
    assert got == [e.frames() for e in after.values() if not is_system(e.rec)]
    assert not any(s.encode() in f for frames in got for f in frames for s in SECRETS)


def test_redact_apply_killed_after_its_intent_is_finished_by_recover_and_recorded_once(leaky):
    log = leaky.log
    redactor = Redactor(builtin(), key=b"k" * 32)
    with lock.held(log):
        apply.close_active(log, None, None)
        steps = apply.plan(log, redactor, None, None)
        (log.root / apply.INTENT).write_bytes(orjson.dumps(steps))
        final, new, old = steps["files"][0]
        apply.swap(log.root / final, log.root / new, log.root / old)  # then the crash
    assert cli(log.root, "verify").returncode == 1, "half done: a checkpoint does not hold"
    ran = cli(log.root, "recover", "--json")
    assert ran.returncode == 0, ran.stderr
    assert orjson.loads(ran.stdout)["finished_redact"]["records"] == 5
    assert cli(log.root, "verify").returncode == 0
    assert secret_free(log.root) == []
    assert not any(p.name.endswith((apply.NEW, apply.OLD)) for p in log.root.rglob("*"))
    assert cli(log.root, "recover").returncode == 0
    topics = [e.rec["topic"] for e in reader.records(log)]
    assert topics.count("$persist/redact") == 1
    again = cli(log.root, "redact", "apply", "--since", "1d")
    assert again.returncode == 0 and "nothing to redact" in again.stdout


def test_a_plan_that_never_committed_leaves_the_log_as_it_was(leaky):
    log = leaky.log
    before = {p: p.read_bytes() for p in (log.segments.iterdir())}
    with lock.held(log):
        steps = apply.plan(log, Redactor(builtin()), None, None)
    assert steps is not None
    assert {p: p.read_bytes() for p in before} == before
    ran = cli(log.root, "redact", "apply", "--since", "1d", "--dry-run", "--json")
    assert orjson.loads(ran.stdout)["records"] == 5
    assert cli(log.root, "redact", "apply", "--since", "1d").returncode == 0, "stale temp files are cleared"
    assert cli(log.root, "verify").returncode == 0 and secret_free(log.root) == []


def test_redact_apply_refuses_while_a_daemon_holds_the_lock_and_respects_the_range(leaky):
    log = leaky.log
    with lock.held(log):
        ran = cli(log.root, "redact", "apply", "--since", "1d")
    assert ran.returncode == 1 and "--stop-daemon" in ran.stderr and len(ran.stderr.splitlines()) == 1
    assert secret_free(log.root)
    ran = cli(log.root, "redact", "apply", "--since", "5m", "--json")
    assert orjson.loads(ran.stdout)["records"] == 0, "every record is an hour old"
    assert secret_free(log.root)


def test_destroy_overwrites_the_bytes_before_it_unlinks(tmp_path):
    path = tmp_path / "old"
    path.write_bytes(b"secret " * 1000)
    witness = os.open(path, os.O_RDONLY)  # the inode, seen after its only name is gone
    try:
        apply.destroy(path)
        assert not path.exists() and os.pread(witness, 8000, 0) == bytes(7000)
    finally:
        os.close(witness)


def test_destroy_leaves_a_hard_linked_backup_its_bytes_and_says_so(tmp_path, capsys):
    path, backup = tmp_path / "old", tmp_path / "backup"
    path.write_bytes(b"secret " * 1000)
    os.link(path, backup)  # cp -l: a backup sharing the inode
    apply.destroy(path)
    assert not path.exists() and backup.read_bytes() == b"secret " * 1000, "not zeroed under the backup's name"
    said = [line for line in capsys.readouterr().err.splitlines() + capsys.readouterr().out.splitlines()
            if "redact_old_bytes_kept" in line]
    assert len(said) == 1 and str(path) in said[0], said


def test_an_interrupted_apply_is_finished_without_rebuilding_the_index(leaky, monkeypatch):
    """A daemon finishes it before it says READY: the index is destroyed, and made again by the next search."""
    import importlib

    from persist.daemon.index import files, index_path

    rebuild_module = importlib.import_module("persist.daemon.index.rebuild")
    log = leaky.log
    assert cli(log.root, "search", "plain").returncode == 0 and index_path(log).exists()
    redactor = Redactor(builtin(), key=b"k" * 32)
    with lock.held(log):
        apply.close_active(log, None, None)
        steps = apply.plan(log, redactor, None, None)
        (log.root / apply.INTENT).write_bytes(orjson.dumps(steps))  # then the crash

        def no_rebuild(*_a, **_k):
            raise AssertionError("a whole index rebuild while finishing the apply")

        monkeypatch.setattr(rebuild_module, "rebuild", no_rebuild)
        assert apply.finish_interrupted(log)["records"] == 5
    assert not any(p.exists() for p in files(index_path(log)))
    monkeypatch.undo()
    found = cli(log.root, "search", "plain", "--json")
    assert found.returncode == 0 and "plain again" in found.stdout, found.stdout + found.stderr
    assert secret_free(log.root) == []


def test_stop_daemon_redacts_what_a_running_daemon_recorded_and_starts_it_again(recorder, log_dir):
    daemon, pub = recorder()
    pub.send(b"agent.chat", orjson.dumps({"sender": "planner", "text": f"my token is {GH}"}))
    daemon.wait_records(1)
    refused = run("persist-cli", "redact", "apply", "--since", "1h", "--log-dir", str(log_dir))
    assert refused.returncode == 1 and "--stop-daemon" in refused.stderr
    ran = run("persist-cli", "redact", "apply", "--since", "1h", "--stop-daemon", "--log-dir", str(log_dir), "--json",
              timeout=60)
    assert ran.returncode == 0, ran.stderr
    result = orjson.loads(ran.stdout)
    pid = result["restarted_pid"]
    try:
        assert result["records"] == 1 and result["stopped_pid"] == daemon.proc.pid
        assert daemon.proc.wait(5) == 0, "stopped cleanly"
        assert secret_free(log_dir) == []
        pub.send(b"agent.chat", b'{"sender":"planner","text":"after the redaction"}')
        wait_for(lambda: any(e.rec["topic"] == "agent.chat" and e.rec["payload"]["text"] == "after the redaction"
                             for e in reader.records(LogDir(log_dir))), what="the restarted daemon recording")
        assert cli(log_dir, "verify").returncode == 0
        topics = [e.rec["topic"] for e in reader.records(LogDir(log_dir))]
        assert topics.index("$persist/redact") < topics.index("$persist/start", topics.index("$persist/stop"))
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: process_gone(pid), what="the restarted daemon to stop")


def test_redact_check_previews_only_a_public_prefix(tmp_path):
    paste = tmp_path / "paste.txt"
    paste.write_text(f"db postgres://app:hunter2pw@db.internal/prod and {GH} and {ANT}\n")
    ran = cli(tmp_path / "logs", "redact", "--check", str(paste), "--json")
    assert ran.returncode == 1
    previews = {f["rule"]: f["preview"] for f in map(orjson.loads, ran.stdout.splitlines())}
    assert previews == {"url-password": "…", "github-token": "ghp_…", "anthropic-api-key": "sk-ant-…"}, previews
    assert "hunt" not in ran.stdout
