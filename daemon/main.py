"""``persist-daemon``: flags → config → lock → ``Recorder`` → exit code.

Exit codes: 0 stopped cleanly, 1 could not record (lock held, log dir not
writable, endpoint in use, fsync failed), 2 bad config or flags. Every failure
is one line naming the file, key or flag at fault; never a traceback.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from persist.daemon import config, curve, logs, redact
from persist.daemon.bus import BusError
from persist.daemon.control import ControlError
from persist.daemon.log import lock, restore
from persist.daemon.log.errors import RestoreError
from persist.daemon.log.fsutil import NotOurs, write_atomically
from persist.daemon.log.layout import LogDir
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.store import FsyncFailed
from persist.daemon.loop import Recorder
from persist.daemon.redact import apply as redact_apply
from persist.daemon.redact.rules import RuleError

LEVELS = ("debug", "info", "warning", "error")
log = get_logger("persist.daemon")


def fail(code: int, message: str) -> None:
    click.echo(f"persist-daemon: {message}", err=True)
    sys.exit(code)


def flag_overrides(connect, bind, subscribe, log_dir, checkpoint_interval, fsync, log_format, log_level, archive_url,
                   keys_dir=None):
    daemon = {
        "connect": list(connect) or None,
        "bind": list(bind) or None,
        "subscribe": list(subscribe) or None,
        "log_dir": log_dir,
        "fsync": fsync,
        "log_format": log_format,
        "log_level": log_level,
    }
    return {
        "daemon": {k: v for k, v in daemon.items() if v is not None},
        "checkpoint": {"interval": checkpoint_interval} if checkpoint_interval is not None else {},
        "archive": {"url": archive_url} if archive_url is not None else {},
        "curve": {"enabled": True, "keys_dir": keys_dir} if keys_dir is not None else {},
    }


def check_curve(cfg: config.Config, insecure: bool) -> None:
    """The keys this daemon needs can be read, and it binds nothing but loopback without CURVE (``CurveError``)."""
    curve.check_bind(cfg.daemon.bind, cfg.curve.enabled, insecure, "the daemon's SUB socket on")
    if cfg.curve.enabled:
        if cfg.daemon.connect:
            curve.client_keys(cfg.curve.keys_path)
        if cfg.daemon.bind:
            curve.server_keys(cfg.curve.keys_path)
            if not cfg.curve.allow_any:
                curve.read_allowed(curve.allowed_dir(cfg.curve.keys_path))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="FILE", help="TOML config file (default: first of $PERSIST_CONFIG, ./persist.toml, ~/.config/persist/config.toml, /etc/persist/config.toml).")
@click.option("--connect", multiple=True, metavar="ENDPOINT", help="Broker endpoint to SUB from (repeatable; default tcp://127.0.0.1:5555).")
@click.option("--bind", multiple=True, metavar="ENDPOINT", help="Bind the SUB socket here instead (publishers connect to it).")
@click.option("--subscribe", multiple=True, metavar="PREFIX", help="Topic prefix to record (repeatable; default everything).")
@click.option("--log-dir", metavar="DIR", help="Where to record (default ./conversation_logs).")
@click.option("--checkpoint-interval", type=float, metavar="SECONDS", help="Seconds between automatic checkpoints (default 300).")
@click.option("--fsync", type=click.Choice(["always", "batch", "off"]), help="always: fsync every batch; batch: at most 50 ms or 1000 records between fsyncs (default); off: leave it to the OS.")
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]), help="Log lines for humans (console) or machines (json); auto picks by TTY.")
@click.option("--log-level", type=click.Choice(LEVELS), help="Lowest level logged (default info).")
@click.option("--archive-url", metavar="URL", help="Ship every record to this PostgreSQL (postgresql://…; or PERSIST_ARCHIVE_URL, [archive] url).")
@click.option("--keys-dir", metavar="DIR", help="CURVE on the bus with the keys in DIR (persist-cli keys init; [curve] keys_dir).")
@click.option("--insecure", is_flag=True, help="Allow --bind on an address other than loopback without CURVE.")
@click.option("--check-config", is_flag=True, help="Validate the config and flags, print the result, exit.")
@click.option("--launched", is_flag=True, hidden=True, help="Started by the launcher: stop when the last agent leaves.")
def main(config_path, check_config, launched, insecure, **flags) -> None:
    """Record every message on the agents' ZeroMQ bus into a durable JSONL log."""
    overrides = flag_overrides(**flags)
    try:
        cfg = config.load(config_path, overrides)
        if cfg.redact.enabled:
            redact.load_rules(cfg.redact)  # the rule file too: a bad rule is refused before anything starts
        check_curve(cfg, insecure)
    except (config.ConfigError, curve.CurveError) as exc:
        fail(2, f"{exc}")
    except RuleError as exc:
        fail(2, f"config key '{exc.key}': {exc.problem}")
    if check_config:
        click.echo(f"config ok ({cfg.source or 'defaults'}): log_dir={cfg.log_dir} connect={cfg.daemon.connect} bind={cfg.daemon.bind}"
                   + (f" curve={cfg.curve.keys_path}" if cfg.curve.enabled else ""))
        return
    logs.setup(cfg.daemon.log_format, cfg.daemon.log_level)
    sys.exit(record(cfg, lambda: config.load(config_path, overrides), launched))


def record(cfg: config.Config, reload, launched: bool = False) -> int:
    """Hold the log dir's lock and record until stopped; the process exit code."""
    os.umask(0o077)  # whatever this process and its children (the indexer, SQLite) create is private
    log_dir = LogDir(cfg.log_dir)
    try:
        log_dir.create()
        lock_fd = lock.acquire(log_dir)
    except (lock.AlreadyRunning, NotOurs) as exc:
        fail(1, str(exc))
    except OSError as exc:
        fail(1, f"cannot use log dir {cfg.log_dir}: {exc.strerror}; choose a writable --log-dir")
    try:
        recorder = Recorder(cfg, reload, launched)
    except redact.KeyFileError as exc:
        fail(1, str(exc))
    try:
        write_atomically(log_dir.pid_file, f"{os.getpid()}\n".encode())
        restore.finish_interrupted(log_dir)  # an in-place restore a crash cut short
        redact_apply.finish_interrupted(log_dir)  # a redact apply a crash cut short
        recorder.start()
        recorder.run()
        return 0
    except (BusError, ControlError, RestoreError, redact_apply.RedactApplyError) as exc:
        log.error("cannot_start", error=str(exc))
        click.echo(f"persist-daemon: {exc}", err=True)
        return 1
    except FsyncFailed as exc:
        log.critical("fsync_failed", error=str(exc), hint="not retried; restart the daemon, it repairs and resumes")
        return 1
    except OSError as exc:
        log.critical("io_error", error=str(exc), file=exc.filename)
        click.echo(f"persist-daemon: {exc}", err=True)
        return 1
    except Exception as exc:
        log.critical("crashed", error=repr(exc), traceback=traceback.format_exc())
        return 1
    finally:
        log_dir.pid_file.unlink(missing_ok=True)
        os.close(lock_fd)
