"""Config and bad start-up input: one line naming the key or file, exit 1 or 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from persist.daemon import config
from procs import run

EXAMPLE = Path(__file__).resolve().parent.parent / "daemon" / "persist.example.toml"


def one_line_error(result, code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("[daemon]\nfsyncc = 'batch'\n", ["daemon.fsyncc", "unknown key"]),
        ("[daemon]\nfsync = 'sometimes'\n", ["daemon.fsync", "always, batch, off"]),
        ("[daemon]\nconnect = ['not an endpoint']\n", ["daemon.connect", "not a ZeroMQ endpoint"]),
        ("[storage]\nrotate_bytes = -5\n", ["storage.rotate_bytes", "greater than 0"]),
        ("[storage]\nrotate_bytes = 'big'\n", ["storage.rotate_bytes", "must be int"]),
        ("[nonsense]\nx = 1\n", ["nonsense", "unknown section"]),
        ("[[enrich.tags]]\nname = 'x'\nregex = '('\n", ["enrich.tags[0].regex", "does not compile"]),
        ("[daemon\n", ["not valid TOML"]),
    ],
)
def test_bad_config_exits_2_naming_the_key(workdir, toml, words):
    cfg = workdir / "bad.toml"
    cfg.write_text(toml)
    one_line_error(run("persist-daemon", "--config", str(cfg), "--check-config"), 2, *words)
    one_line_error(run("persist-daemon", "--config", str(cfg)), 2, *words)


def test_missing_config_file_names_it(workdir):
    one_line_error(run("persist-daemon", "--config", str(workdir / "nope.toml")), 2, "nope.toml", "does not exist")


def test_bad_environment_value_names_the_variable(workdir):
    one_line_error(run("persist-daemon", "--check-config", env={"PERSIST_FSYNC": "never"}), 2, "$PERSIST_FSYNC")


@pytest.mark.parametrize("endpoint", ["tcp://nowhere", "tcp://127.0.0.1:99999", "tcp://127.0.0.1:0", "udp://x:1"])
def test_endpoint_flag_that_does_not_parse(workdir, endpoint):
    one_line_error(run("persist-daemon", "--log-dir", str(workdir / "l"), "--connect", endpoint), 2, "daemon.connect")


def test_log_dir_that_cannot_be_created_exits_1(workdir):
    blocker = workdir / "a-file"
    blocker.write_text("")
    one_line_error(run("persist-daemon", "--log-dir", str(blocker / "logs"), "--connect", "tcp://127.0.0.1:9"),
                   1, "cannot use log dir", "logs")


def test_bind_on_a_port_in_use_exits_1(workdir):
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUB)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    try:
        result = run("persist-daemon", "--log-dir", str(workdir / "l"), "--bind", f"tcp://127.0.0.1:{port}")
        assert result.returncode == 1 and "Address already in use" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        ctx.destroy(linger=0)


def test_precedence_file_then_env_then_flags(workdir, monkeypatch):
    cfg = workdir / "p.toml"
    cfg.write_text("[daemon]\nfsync = 'off'\nlog_dir = '/from/file'\n[checkpoint]\ninterval = 60\n")
    monkeypatch.setenv("PERSIST_FSYNC", "always")
    monkeypatch.setenv("PERSIST_CHECKPOINT_INTERVAL", "30")
    monkeypatch.setenv("PERSIST_CONNECT", "tcp://10.0.0.1:1,tcp://10.0.0.2:2")
    loaded = config.load(str(cfg), {"daemon": {"log_dir": "/from/flag"}})
    assert loaded.daemon.fsync == "always" and loaded.checkpoint.interval == 30.0
    assert loaded.daemon.log_dir == "/from/flag"
    assert loaded.daemon.connect == ["tcp://10.0.0.1:1", "tcp://10.0.0.2:2"]


def test_search_path_and_persist_config(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("PERSIST_CONFIG", raising=False)
    (workdir / "persist.toml").write_text("[daemon]\nfsync = 'off'\n")
    assert config.load().daemon.fsync == "off"
    other = workdir / "other.toml"
    other.write_text("[daemon]\nfsync = 'always'\n")
    monkeypatch.setenv("PERSIST_CONFIG", str(other))
    assert config.load().daemon.fsync == "always"


def test_the_shipped_example_is_valid_and_all_defaults():
    result = run("persist-daemon", "--config", str(EXAMPLE), "--check-config")
    assert result.returncode == 0, result.stderr
    loaded = config.load(str(EXAMPLE))
    defaults = config.Config()
    for section in config.SECTIONS:
        if section != "enrich":
            assert getattr(loaded, section) == getattr(defaults, section), section


def test_archive_url_flag_is_checked_like_the_config_key(workdir):
    bad = run("persist-daemon", "--log-dir", str(workdir / "l"), "--archive-url", "mysql://db/x", "--check-config")
    assert bad.returncode == 2 and "archive.url" in bad.stderr and "mysql" not in bad.stderr, bad.stderr
    good = run("persist-daemon", "--log-dir", str(workdir / "l"), "--archive-url", "postgresql://127.0.0.1/x",
               "--check-config")
    assert good.returncode == 0, good.stderr


def test_the_sections_become_dataclasses_when_first_made():
    """Importing the config (or ``config.log_dir`` with no file or variable) makes no dataclass; the first
    instance makes them all, as if decorated where they are written."""
    import os
    import subprocess
    import sys

    probe = ("import dataclasses as d\nfrom persist.daemon import config as c\nc.log_dir(None, 'x')\n"
             "print(d.is_dataclass(c.Config))\nc.EnrichSection()\n"
             "print(all(d.is_dataclass(k) for k in (*c.SECTIONS.values(), c.Config)), "
             "[f.name for f in d.fields(c.Config)] == list(c.Config.__annotations__), c.Config() == c.Config())")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["False", "True", "True", "True"], out
