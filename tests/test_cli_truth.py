"""What persist-cli shows must be true (issue 12), on logs the format library wrote (no daemon):
search answers from a complete index or says how far behind it is; a checkpoint label names one
checkpoint; diff lists the records between; prune --dry-run; token budgets where an agent gets text;
doctor's permission check looks at every file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from libdir import Built, cli
from persist.daemon import index
from persist.daemon.log import restore
from procs import short_tmpdir, unavailable


@pytest.fixture
def workdir():
    d = short_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def chat(root, n: int = 12) -> Built:
    built = Built(root)
    for i in range(n):
        built.send(b"agent.chat", b'{"sender":"a%d","text":"turn %d of the talk"}' % (i % 2, i))
    return built


# --- search: complete, or says how far behind -----------------------------------------------------------


def test_search_during_index_rebuild_answers_from_the_old_complete_index(workdir):
    built = chat(workdir / "logs", 5100)
    built.send(b"agent.chat", b'{"text":"the needle at the very end"}')
    built.close()
    assert cli(built.root, "search", "needle").returncode == 0  # the index exists and is complete
    seen = []

    def mid_rebuild(done: int) -> None:  # called after each committed batch of the new index
        if not seen:
            seen.append(cli(built.root, "search", "needle", "--json"))

    assert index.rebuild(built.log, mid_rebuild) == 5101
    assert seen, "rebuild never reported progress mid-way"
    assert seen[0].returncode == 0 and "needle" in seen[0].stdout, seen[0]
    assert json.loads(cli(built.root, "search", "needle", "--json").stdout)["seq"] == 5101


def test_search_while_the_indexer_only_starts_waits_for_its_index(workdir):
    built = chat(workdir / "logs").close()
    fd = index.try_indexer_lock(built.log)  # an indexer has started, its index file is not there yet

    def indexer() -> None:
        time.sleep(0.3)
        index.update(built.log)

    t = threading.Thread(target=indexer)
    t.start()
    try:
        result = cli(built.root, "search", "turn", "--json")
    finally:
        t.join()
        os.close(fd)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 12, result


def test_search_says_how_many_records_a_busy_indexer_has_not_reached(workdir):
    built = chat(workdir / "logs", 3)
    assert cli(built.root, "search", "turn").returncode == 0
    for i in range(4):
        built.send(b"agent.chat", b'{"text":"late word %d"}' % i)
    built.close()
    fd = index.try_indexer_lock(built.log)  # an indexer holds the index and is behind
    try:
        result = cli(built.root, "search", "turn")
    finally:
        os.close(fd)
    assert "not reached the newest 4 record(s)" in result.stderr, result
    assert len(cli(built.root, "search", "late", "--json").stdout.splitlines()) == 4, "caught up with no indexer"


def test_search_and_threads_after_an_in_place_restore_with_no_daemon(workdir):
    built = chat(workdir / "logs", 6)
    cp = built.checkpoint("manual", "six")
    for i in range(3):
        built.send(b"agent.chat", b'{"text":"after the checkpoint %d"}' % i)
    built.close()
    assert cli(built.root, "search", "turn").returncode == 0
    assert cli(built.root, "restore", "six").returncode == 0
    assert not index.index_path(built.log).exists(), "the restore set the index aside"
    found = cli(built.root, "search", "turn", "--json")
    assert found.returncode == 0 and len(found.stdout.splitlines()) == cp["last_seq"], found
    assert cli(built.root, "threads").returncode == 0


# --- checkpoints -----------------------------------------------------------------------------------------


def test_a_duplicate_label_is_refused_like_git_tag(workdir):
    built = chat(workdir / "logs").close()
    assert cli(built.root, "checkpoints", "create", "--label", "offline").returncode == 0
    again = cli(built.root, "checkpoints", "create", "--label", "offline")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1, again
    assert "already names" in again.stderr
    assert cli(built.root, "checkpoints", "show", "offline").returncode == 0, "the label still resolves"
    assert len(list(built.log.checkpoints.glob("*.json"))) == 1


def test_diff_lists_the_records_between_and_warns_when_reversed(workdir):
    built = chat(workdir / "logs", 4)
    a = built.checkpoint("manual", "a")
    built.send(b"agent.chat", b'{"sender":"x","text":"between one"}')
    built.send(b"agent.chat", b'{"sender":"x","text":"between two"}')
    b = built.checkpoint("manual", "b")
    built.close()
    lines = cli(built.root, "checkpoints", "diff", "a", "b", "--json").stdout.splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["seq"] for r in records] == list(range(a["last_seq"] + 1, b["last_seq"] + 1))
    assert [r["payload"]["text"] for r in records] == ["between one", "between two"]
    human = cli(built.root, "checkpoints", "diff", "a", "b")
    assert "between one" in human.stdout and "between two" in human.stdout and human.stderr == ""
    reversed_ = cli(built.root, "checkpoints", "diff", "b", "a")
    assert reversed_.returncode == 0 and "newer than" in reversed_.stderr and "between two" in reversed_.stdout


def test_prune_dry_run_and_a_negative_keep(workdir):
    built = chat(workdir / "logs", 2)
    for _ in range(3):
        built.send(b"agent.chat", b'{"text":"more"}')
        built.checkpoint("timer")
    built.close()
    dry = cli(built.root, "checkpoints", "prune", "--keep", "1", "--dry-run")
    assert dry.returncode == 0 and "would prune 2" in dry.stdout
    assert len(list(built.log.checkpoints.glob("*.json"))) == 3, "a dry run deletes nothing"
    bad = cli(built.root, "checkpoints", "prune", "--keep", "-1")
    assert bad.returncode == 2 and len(list(built.log.checkpoints.glob("*.json"))) == 3


# --- token budgets -----------------------------------------------------------------------------------------


def test_restore_print_prompt_keeps_the_newest_turns_that_fit(workdir):
    built = Built(workdir / "logs")
    for i in range(40):
        built.send(b"agent.chat", b'{"text":"turn %d"}' % i, meta={"tokens": 1000})
    built.checkpoint("manual", "all")
    built.close()
    default = cli(built.root, "restore", "all", "--print", "--format", "prompt")
    assert default.returncode == 0 and "turn 39" in default.stdout and "turn 31" not in default.stdout
    assert "32 earlier turn(s) left out to fit 8000 tokens" in default.stderr
    small = cli(built.root, "restore", "all", "--print", "--format", "prompt", "--max-tokens", "2000")
    assert "turn 38" in small.stdout and "turn 37" not in small.stdout
    everything = cli(built.root, "restore", "all", "--print", "--format", "prompt", "--max-tokens", "0")
    assert "turn 0\n" in everything.stdout + "\n" and everything.stderr == ""
    path, left_out = restore.write_context(built.log, restore.checkpoints.find(built.log, "all"), 3000)
    assert left_out == 37 and path.read_text().startswith("(37 earlier turn(s) left out")


# --- doctor: every file is checked ------------------------------------------------------------------------


def test_doctor_files_check_looks_at_every_file(workdir):
    built = chat(workdir / "logs").close()
    assert cli(built.root, "search", "turn").returncode == 0  # an index, -wal/-shm
    cfg = workdir / "persist.toml"
    cfg.write_text(f'[daemon]\nlog_dir = "{built.root}"\nconnect = ["ipc://{workdir}/no-broker"]\n')
    ok = [json.loads(x) for x in cli(built.root, "doctor", "--config", str(cfg), "--json").stdout.splitlines()]
    assert {c["check"]: c["ok"] for c in ok}["permissions"] is True
    os.chmod(index.index_path(built.log), 0o644)
    result = cli(built.root, "doctor", "--config", str(cfg), "--json")
    checks = {c["check"]: c for c in map(json.loads, result.stdout.splitlines())}
    assert checks["permissions"]["ok"] is False and "index.sqlite" in checks["permissions"]["detail"]
    assert checks["broker"]["ok"] is False and "no-broker" in checks["broker"]["detail"], "ipc is probed"
    assert result.returncode == 1


# --- systemd: the sandbox, and root-run commands on the service's log --------------------------------------


def test_system_unit_is_sandboxed_to_the_local_bus_and_verifies(workdir):
    from procs import BIN

    unit = (BIN.parent.parent / "systemd" / "persist-daemon.service").read_text()
    settings = [tuple(line.split("=", 1)) for line in unit.splitlines() if "=" in line and not line.startswith("#")]
    for key, value in [("IPAddressDeny", "any"), ("IPAddressAllow", "localhost"), ("ProtectProc", "invisible"),
                       ("ProcSubset", "pid"), ("SystemCallFilter", "@system-service")]:
        assert (key, value) in settings, key
    if shutil.which("systemd-analyze"):
        exe = dict(settings)["ExecStart"].split()[0]
        local = workdir / "persist-daemon.service"
        local.write_text(unit.replace(exe, str(BIN / "persist-daemon")))
        result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True)
        assert result.returncode == 0 and str(local) not in result.stderr, result.stderr


def test_root_run_commands_leave_nothing_the_service_user_cannot_write(workdir):
    if os.geteuid() != 0:
        unavailable("needs root: a root-run command on another user's log dir")
    built = chat(workdir / "logs").close()
    service = 65534  # the log dir belongs to the service's user, not to root
    for parent, dirs, names in os.walk(built.root):
        for p in [parent, *(os.path.join(parent, n) for n in dirs + names)]:
            os.chown(p, service, service)
    assert cli(built.root, "search", "turn").returncode == 0
    assert cli(built.root, "index", "rebuild").returncode == 0
    for command in (["threads"], ["info"], ["stats"], ["recent"], ["verify"], ["export"], ["status"], ["doctor"],
                    ["checkpoints", "list"]):
        assert cli(built.root, *command).returncode in (0, 1, 3), command  # 1: doctor finds no broker
    for refused in (["recover"], ["checkpoints", "create"]):  # writers refuse a log dir that is not root's
        assert cli(built.root, *refused).returncode != 0, refused
    mine = [p for p in built.root.rglob("*") if p.lstat().st_uid != service]
    assert mine == [], f"left owned by root: {mine}"
