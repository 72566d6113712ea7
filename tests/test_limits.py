"""Out-of-range input gets one line and exit 2, never a traceback; a SIGHUP's log_level takes effect."""

from __future__ import annotations

import signal

import pytest
from test_config import one_line_error

from libdir import run_cli
from persist.daemon.log.layout import LogDir
from procs import run, wait_for


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("[daemon]\nreceive_hwm = 9223372036854775808\n", ["daemon.receive_hwm", "at most 2147483647"]),
        ("[daemon]\ncommit_interval_ms = 99999999999\n", ["daemon.commit_interval_ms", "at most"]),
        ("[checkpoint]\ninterval = nan\n", ["checkpoint.interval", "greater than 0 and at most"]),
        ("[checkpoint]\ninterval = inf\n", ["checkpoint.interval", "at most"]),
        ("[launcher]\ngrace_s = nan\n", ["launcher.grace_s", "at most"]),
        ("[launcher]\ngrace_s = -inf\n", ["launcher.grace_s", "greater than 0"]),
        ("[storage]\nrotate_bytes = 9223372036854775807\n", ["storage.rotate_bytes", "at most"]),
    ],
)
def test_out_of_range_numbers_fail_check_config_naming_the_key(workdir, toml, words):
    cfg = workdir / "bad.toml"
    cfg.write_text(toml)
    one_line_error(run("persist-daemon", "--config", str(cfg), "--check-config"), 2, *words)


@pytest.mark.parametrize(("env", "key"), [({"PERSIST_CHECKPOINT_INTERVAL": "nan"}, "checkpoint.interval"),
                                          ({"PERSIST_RECEIVE_HWM": "1e30"}, "daemon.receive_hwm"),
                                          ({"PERSIST_LAUNCHER_GRACE_S": "inf"}, "launcher.grace_s"),
                                          ({"PERSIST_LOG_DIR": "/tmp/not-utf8-\udcff"}, "daemon.log_dir")])
def test_out_of_range_environment_values(env, key):
    one_line_error(run("persist-daemon", "--check-config", env=env), 2, key)


def test_nan_interval_flag():
    one_line_error(run("persist-daemon", "--checkpoint-interval", "nan", "--check-config"), 2, "checkpoint.interval")


def test_a_config_file_that_is_not_utf8_is_named(workdir):
    cfg = workdir / "latin1.toml"
    cfg.write_bytes(b'[daemon]\nlog_dir = "caf\xe9"\n')
    one_line_error(run("persist-daemon", "--config", str(cfg), "--check-config"), 2, str(cfg), "UTF-8")
    one_line_error(run_cli("status", "--config", str(cfg)), 2, str(cfg), "UTF-8")


@pytest.fixture
def small_log(workdir):
    log = LogDir(workdir / "logs")
    log.create()
    log.active.write_text('{"v":1,"seq":1,"id":"x","received_at":"2026-11-24T19:22:01.123456Z",'
                          '"topic":"a","meta":{},"payload":{}}\n')
    return log


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["export", "--since", "99999999999d"], ["--since", "99999999999d"]),
        (["export", "--until", "99999999999999999999w"], ["--until"]),
        (["recent", "-n", "99999999999999999999"], ["-n", "99999999999999999999"]),
        (["restore", "some-id", "--out", "{file}"], ["--out", "is a file"]),
    ],
)
def test_out_of_range_cli_flags(small_log, workdir, args, words):
    existing = workdir / "a-file"
    existing.write_text("keep me\n")
    args = [a.replace("{file}", str(existing)) for a in args]
    one_line_error(run_cli(*args, "--log-dir", str(small_log.root)), 2, *words)
    assert existing.read_text() == "keep me\n"


def test_sighup_applies_a_new_log_level(recorder, workdir):
    daemon, _pub = recorder('[daemon]\nlog_level = "warning"\n')
    (workdir / "persist.toml").write_text('[daemon]\nlog_level = "info"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: '"event":"reloaded"' in daemon.errors(), what="an info line after the reload")
    assert '"event":"recording"' not in daemon.errors(), "info lines were held back before the reload"
    assert daemon.stop() == 0
