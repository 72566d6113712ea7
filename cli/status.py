"""``persist-cli status``, ``doctor`` and ``stats``: is it recording, is it healthy, what is on the bus."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
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
    when,
    with_log_dir,
)
from persist.daemon import config
from persist.daemon.log import lock, stats
from persist.daemon.log.fsutil import cannot_write
from persist.daemon.log.layout import LogDir

NOT_RECORDING = 3  # `status` when no daemon records, as `systemctl is-active` says "inactive"


def _archive_state(a: dict) -> str:
    """The shipper's standing, as ``status`` shows it."""
    behind = ("up to date" if a["records_behind"] == 0 else
              f"{a['records_behind']} records ({a['seconds_behind']} s) behind" if a["records_behind"] else
              f"shipped up to seq {a['shipped_seq']} of this fork")
    if a["connected"]:
        return f"connected, {behind}"
    return style(f"NOT connected ({a['last_error'] or 'no word from the shipper yet'}), {behind}", fg="red")


@click.command()
@with_log_dir
@json_option
def status(cfg, log, as_json) -> None:
    """Is the daemon recording, and reaching its broker? pid, uptime, records, rate, last checkpoint, disk, gaps.

    Exits 3 when no daemon is recording (as `systemctl is-active`)."""
    if not log.root.exists():
        message = f"log dir {log.root} does not exist; pass --log-dir or set PERSIST_LOG_DIR"
        if as_json:
            json_lines([{"running": False, "log_dir": str(log.root), "exists": False, "error": message}])
        else:
            click.echo(f"persist-cli: not recording: {message}", err=True)
        raise click.exceptions.Exit(NOT_RECORDING)
    info = stats.summary(require_log(log), live := daemon_status(log))
    info.setdefault("bus", [])
    if as_json:
        json_lines([info])
    else:
        _print_status(info, live)
    if not live:
        raise click.exceptions.Exit(NOT_RECORDING)


def reaching(bus: list[dict]) -> bool:
    """The daemon hears its bus: an endpoint is connected to a broker, or bound and listening."""
    return any(e.get("state") in ("connected", "listening") for e in bus)


def _print_status(info: dict, live: dict | None) -> None:
    bus = info["bus"]
    if not live:
        state = style("○ not running", fg="yellow") + "  (start it: persist-daemon)"
    elif reaching(bus) or not bus:
        state = style("● recording", fg="green") + f"  pid {live['pid']}, up {live['uptime_s']:.0f} s"
    else:
        since = min((e["since"] for e in bus if e.get("since")), default=None)
        state = (style("▲ running, NOT reaching the broker", fg="red", bold=True)
                 + f" {_since(since)}, pid {live['pid']}: nothing is recorded from the bus until it does")
    rows = [["daemon", state]]
    for e in bus:
        rows.append(["bus", f"{e['endpoint']}  {_endpoint_state(e)}"])
    rows += [
        ["log dir", info["log_dir"]],
        ["records", f"last seq {info['last_seq']}, newest {ago(info['last_record_at'])}"],
    ]
    if live:
        rows.append(["rate", f"{live['rate']:.1f} msg/s; {live['recorded']} this run; gaps {live['gaps']}"])
        rows.append(["waiting", _waiting(live.get("receive_queue"))])
        if live.get("disk_full"):
            rows.append(["DISK FULL", style(f"{live['spooled']} records waiting in memory, {live['dropped']} dropped", fg="red")])
        if live.get("archive"):
            rows.append(["archive", _archive_state(live["archive"])])
        if live.get("curve"):
            rows.append(["curve", _curve_state(live["curve"])])
    cp = info["last_checkpoint"]
    rows.append(["checkpoint", f"{cp['id']} ({cp['reason']}), {ago(cp['created_at'])}" if cp else "none yet"])
    rows.append(["disk", f"{size(info['log_bytes'])} used by the log, {size(info['disk_free_bytes'])} free"])
    fields(rows, 12, bold=True)


def _waiting(queue: dict | None) -> str:
    """What the daemon has received and not yet recorded (its inbox)."""
    if queue is None:
        return "unknown (a daemon of an older persist)"
    full = "; its inbox is full: more wait in its socket and the broker" if queue["full"] else ""
    return f"{queue['messages']} messages ({size(queue['bytes'])}) received, not yet recorded{full}"


def _curve_state(c: dict) -> str:
    """CURVE on the bus, as ``status`` shows it: who may connect, and the handshakes refused."""
    allow = "any valid key" if c["allow"] == "any" else f"{c['allow']} key(s) on the allow-list"
    if not c["refused"]:
        return f"on ({c['keys_dir']}), {allow}; no handshake refused"
    last = c["last_refused"]
    who = f" from {last['address']}" if last.get("address") else ""
    return (f"on ({c['keys_dir']}), {allow}; " + style(f"{c['refused']} handshake(s) refused", fg="red")
            + f", the last {ago(last['at'])} on {last['endpoint']}{who}: {last['reason']}")


def _since(iso: str | None) -> str:
    return f"since {when(iso)} ({ago(iso)})" if iso else "since the daemon started"


def _endpoint_state(e: dict) -> str:
    state = e.get("state")
    last = f"; last message {ago(e['last_message_at'])}" if e.get("last_message_at") else "; no message yet"
    if state in ("connected", "listening"):
        return style(state, fg="green") + f" {_since(e.get('since'))}{last}"
    return style(f"{state}: not reaching the broker", fg="red") + f" {_since(e.get('since'))}{last}"


def _check_modes(log) -> tuple[bool, str]:
    """Every directory in the log dir 0700 and every file 0600 (sockets: no access for others)."""
    bad, count = [], 0
    for parent, dirs, names in os.walk(log.root):
        for path in [Path(parent)] + [Path(parent) / n for n in names]:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            count += 1
            allowed = 0o700 if stat.S_ISDIR(st.st_mode) or stat.S_ISSOCK(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) & ~allowed:
                bad.append(f"{path.relative_to(log.root)} ({stat.S_IMODE(st.st_mode):o})")
    if bad:
        return False, f"too open: {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''} — chmod 700 dirs, 600 files"
    return True, f"directories 0700, files 0600 (all {count} checked)"


def _check_writable(log) -> tuple[bool, str]:
    if not log.root.exists():
        return False, f"{log.root} does not exist — start persist-daemon once, or pass --log-dir"
    if exc := cannot_write(log.root):
        return False, f"cannot write {log.root}: {exc.strerror} — fix its owner/permissions"
    return True, f"{log.root} is writable"


def _check_endpoint(endpoint: str) -> tuple[bool, str]:
    """Connect to ``endpoint`` (TCP, or an ipc socket) and let go at once."""
    parts = urlsplit(endpoint)
    if parts.scheme == "ipc":
        path = endpoint[len("ipc://"):]
        address = "\0" + path[1:] if path.startswith("@") else path
        if not path.startswith("@") and not os.path.exists(path):
            return False, f"{endpoint}: no socket at {path} — start a broker there: persist-cli broker"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(address)
            return True, f"{endpoint} accepts connections"
        except OSError as exc:
            return False, f"{endpoint} refuses connections ({exc.strerror or exc}) — is its broker running?"
    if parts.scheme != "tcp":
        return True, f"{endpoint} ({parts.scheme}: cannot be probed from here; see persist-cli status)"
    host = "127.0.0.1" if parts.hostname in ("*", None) else parts.hostname
    try:
        with socket.create_connection((host, parts.port), timeout=1.0):
            return True, f"{endpoint} accepts connections"
    except OSError as exc:
        return False, f"{endpoint} unreachable ({exc.strerror or exc}) — start a broker: persist-cli broker"


def _check_bus(e: dict) -> tuple[bool, str]:
    """One endpoint of the running daemon, as the daemon sees it."""
    if e.get("state") == "connected":
        return True, f"{e['endpoint']} connected since {ago(e.get('since'))} (the running daemon's)"
    if e.get("state") == "listening":
        return True, f"{e['endpoint']} bound and listening (the running daemon's)"
    ok, detail = _check_endpoint(e["endpoint"])
    return False, (f"the running daemon is not reaching {e['endpoint']} ({e.get('state')} since {ago(e.get('since'))}); "
                   + ("it accepts connections from here: check the daemon's log" if ok else detail))


@click.command()
@click.option("--config", "config_path", metavar="FILE", help="TOML config file.")
@click.option("--log-dir", metavar="DIR", help="The log dir (env PERSIST_LOG_DIR).")
@json_option
def doctor(config_path, log_dir, as_json) -> None:
    """Check config, log dir, permissions, disk space, daemon and broker; one line each."""
    checks = list(_checks(config_path, log_dir))
    if as_json:
        json_lines({"check": name, "ok": ok, "detail": detail} for name, ok, detail in checks)
    else:
        for name, ok, detail in checks:
            mark = style("✓", fg="green") if ok else style("✗", fg="red")
            click.echo(f"{mark} {name:<12} {detail}")
    if not all(ok for _, ok, _ in checks):
        if as_json:
            raise click.exceptions.Exit(1)
        raise Failure(f"{sum(not ok for _, ok, _ in checks)} check(s) failed")


def _checks(config_path: str | None, log_dir: str | None) -> Iterator[tuple[str, bool, str]]:
    """``(what, ok, detail and what to do)`` for each thing ``doctor`` looks at.

    The broker is checked at the endpoints the running daemon uses (its ``status``), or the config's
    when none runs."""
    try:
        cfg = config.load(config_path, config.flags(log_dir))
        yield "config", True, f"valid ({cfg.source or 'defaults'})"
    except config.ConfigError as exc:
        yield "config", False, f"{exc} — fix it, then persist-daemon --check-config"
        cfg = config.Config()
    log = LogDir(cfg.log_dir)
    live = None
    yield "log dir", *_check_writable(log)
    if log.root.exists():
        yield "permissions", *_check_modes(log)
        free = shutil.disk_usage(log.root).free
        yield "disk space", free > 1 << 30, f"{size(free)} free" + (
            "" if free > 1 << 30 else " — under 1 GiB: free space or move --log-dir")
        live = daemon_status(log)
        yield "daemon", *_check_daemon(log, live)
    if live and live.get("bus"):
        for e in live["bus"]:
            yield "broker", *_check_bus(e)
    else:
        for endpoint in cfg.daemon.connect:
            yield "broker", *_check_endpoint(endpoint)


def _check_daemon(log, live: dict | None) -> tuple[bool, str]:
    if live:
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

