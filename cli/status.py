"""``persist-cli status``, ``doctor`` and ``stats``: is it recording, is it healthy, what is on the bus."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import click

from persist.cli.common import (
    Failure,
    ago,
    counts,
    daemon_status,
    fields,
    json_lines,
    json_option,
    require_log,
    size,
    style,
    table,
    with_log_dir,
)
from persist.daemon import config
from persist.daemon.log import lock, reader, stats
from persist.daemon.log.fsutil import cannot_write, too_open
from persist.daemon.log.layout import LogDir


@click.command()
@with_log_dir
@json_option
def status(cfg, log, as_json) -> None:
    """Is the daemon recording? pid, uptime, records, rate, last checkpoint, disk, gaps."""
    info = stats.summary(require_log(log), live := daemon_status(log))
    if as_json:
        return json_lines([info])
    if live:
        state = style("● recording", fg="green") + f"  pid {live['pid']}, up {live['uptime_s']:.0f} s"
    else:
        state = style("○ not running", fg="yellow") + "  (start it: persist-daemon)"
    rows = [
        ["daemon", state],
        ["log dir", info["log_dir"]],
        ["records", f"last seq {info['last_seq']}, newest {ago(info['last_record_at'])}"],
    ]
    if live:
        rows.append(["rate", f"{live['rate']:.1f} msg/s; {live['recorded']} this run; gaps {live['gaps']}"])
        if live.get("disk_full"):
            rows.append(["DISK FULL", style(f"{live['spooled']} records waiting in memory, {live['dropped']} dropped", fg="red")])
    cp = info["last_checkpoint"]
    rows.append(["checkpoint", f"{cp['id']} ({cp['reason']}), {ago(cp['created_at'])}" if cp else "none yet"])
    rows.append(["disk", f"{size(info['log_bytes'])} used by the log, {size(info['disk_free_bytes'])} free"])
    fields(rows, 12, bold=True)


def _check_modes(log) -> tuple[bool, str]:
    dirs = [log.root, log.segments, log.checkpoints, log.recovery]
    bad = too_open(dirs + [seg.path for seg, _ in reader.sizes(log)])
    if bad:
        return False, f"too open: {', '.join(map(str, bad[:3]))} — chmod 700 dirs, 600 files"
    return True, "directories 0700, files 0600"


def _check_writable(log) -> tuple[bool, str]:
    if not log.root.exists():
        return False, f"{log.root} does not exist — start persist-daemon once, or pass --log-dir"
    if exc := cannot_write(log.root):
        return False, f"cannot write {log.root}: {exc.strerror} — fix its owner/permissions"
    return True, f"{log.root} is writable"


def _check_endpoint(endpoint: str) -> tuple[bool, str]:
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp":
        return True, f"{endpoint} (not TCP: not probed)"
    host = "127.0.0.1" if parts.hostname in ("*", None) else parts.hostname
    try:
        with socket.create_connection((host, parts.port), timeout=1.0):
            return True, f"{endpoint} accepts connections"
    except OSError as exc:
        return False, f"{endpoint} unreachable ({exc.strerror or exc}) — start a broker: persist-cli broker"


@click.command()
@click.option("--config", "config_path", metavar="FILE", help="TOML config file.")
@click.option("--log-dir", metavar="DIR", help="The log dir (env PERSIST_LOG_DIR).")
def doctor(config_path, log_dir) -> None:
    """Check config, log dir, permissions, disk space, daemon and broker; one line each."""
    checks = list(_checks(config_path, log_dir))
    for name, ok, detail in checks:
        mark = style("✓", fg="green") if ok else style("✗", fg="red")
        click.echo(f"{mark} {name:<12} {detail}")
    if not all(ok for _, ok, _ in checks):
        raise Failure(f"{sum(not ok for _, ok, _ in checks)} check(s) failed")


def _checks(config_path: str | None, log_dir: str | None) -> Iterator[tuple[str, bool, str]]:
    """``(what, ok, detail and what to do)`` for each thing ``doctor`` looks at."""
    try:
        cfg = config.load(config_path, config.flags(log_dir))
        yield "config", True, f"valid ({cfg.source or 'defaults'})"
    except config.ConfigError as exc:
        yield "config", False, f"{exc} — fix it, then persist-daemon --check-config"
        cfg = config.Config()
    log = LogDir(cfg.log_dir)
    yield "log dir", *_check_writable(log)
    if log.root.exists():
        yield "permissions", *_check_modes(log)
        free = shutil.disk_usage(log.root).free
        yield "disk space", free > 1 << 30, f"{size(free)} free" + (
            "" if free > 1 << 30 else " — under 1 GiB: free space or move --log-dir")
        yield "daemon", *_check_daemon(log)
    for endpoint in cfg.daemon.connect:
        yield "broker", *_check_endpoint(endpoint)


def _check_daemon(log) -> tuple[bool, str]:
    if live := daemon_status(log):
        return True, f"recording, pid {live['pid']}, {live['rate']:.1f} msg/s"
    if lock.is_locked(log):
        return False, f"pid {lock.holder_pid(log)} holds the lock but does not answer — check its log"
    return False, "not running — start it: persist-daemon"


@click.command("stats")
@click.option("--watch", is_flag=True, help="Refresh every 2 s until Ctrl-C.")
@click.option("--top", type=int, default=15, show_default=True, help="Rows per table.")
@with_log_dir
@json_option
def stats_cmd(cfg, log, watch, top, as_json) -> None:
    """Records per topic and per sender, rate over the last minute, the checkpoint timeline."""
    require_log(log)
    tally = stats.Tally()
    try:
        while True:
            tally.update(log)
            data = tally.as_dict(log)
            if as_json:
                json_lines([data])
            else:
                if watch:
                    click.clear()
                _print_stats(data, top)
            if not watch:
                return
            time.sleep(2)
    except KeyboardInterrupt:
        pass


def _print_stats(data: dict, top: int) -> None:
    click.echo(f"{data['records']} records; {data['rate_last_minute']:.2f} msg/s over the last minute\n")
    counts("topic", data["topics"], top)
    click.echo()
    if data["senders"]:
        counts("sender", data["senders"], top)
        click.echo()
    cps = data["checkpoints"][-top:]
    if cps:
        table(["checkpoint", "reason", "created", "last seq"],
              [[c["id"], c["reason"], ago(c["created_at"]), c["last_seq"]] for c in cps], right=(3,))

