"""``persist-cli replay``: publish recorded messages again, same frames, original pacing ÷ rate."""

from __future__ import annotations

import sys

import click
import zmq

from persist.cli.common import (
    Failure,
    UsageError,
    json_lines,
    json_option,
    parse_when,
    progress,
    require_log,
    with_log_dir,
)
from persist.daemon.config import ENDPOINT
from persist.daemon.log import checkpoints
from persist.daemon.log.record import is_exact
from persist.daemon.replay import ReplayError, Selection, announced, ready_socket, send


@click.command()
@click.option("--checkpoint", "checkpoint_id", metavar="ID", help="Replay what was recorded after checkpoint ID.")
@click.option("--since", help="From this time: local (2026-11-24 19:22, 19:22), zoned ISO, 2h, today.")
@click.option("--until", help="Up to this time (same forms as --since).")
@click.option("--topic", "topics", multiple=True, help="Topic prefix (repeatable).")
@click.option("--sender")
@click.option("--thread", "thread_id")
@click.option("--to", "endpoint", default="tcp://127.0.0.1:5556", show_default=True,
              help="Where to publish (default: the broker's publisher side).")
@click.option("--bind", is_flag=True, help="Bind ENDPOINT instead of connecting (subscribers connect to us).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Speed-up: original gaps are divided by this.")
@click.option("--as-fast", is_flag=True, help="No pacing: send as fast as possible.")
@click.option("--wait", type=float, default=10.0, show_default=True, help="Seconds to wait for a subscriber.")
@click.option("--dry-run", is_flag=True, help="Print what would be sent (JSON Lines), send nothing.")
@click.option("--keys-dir", metavar="DIR", help="CURVE with the keys in DIR (persist-cli keys init; [curve] keys_dir).")
@click.option("--insecure", is_flag=True, help="Allow --bind on an address other than loopback without CURVE.")
@with_log_dir
@json_option
def replay(cfg, log, checkpoint_id, since, until, topics, sender, thread_id, endpoint, bind, rate, as_fast, wait,
           dry_run, keys_dir, insecure, as_json) -> None:
    """Publish recorded messages again, byte for byte, in recorded order (never $persist/ records)."""
    require_log(log)
    if not ENDPOINT.match(endpoint):
        raise UsageError(f"--to {endpoint!r} is not a ZeroMQ endpoint such as tcp://127.0.0.1:5556")
    after = checkpoints.find(log, checkpoint_id)["last_seq"] if checkpoint_id else 0
    selection = Selection(after, parse_when(since, "--since"), parse_when(until, "--until"), tuple(topics),
                          sender, thread_id)
    if dry_run:
        json_lines(e.line for e in selection.entries(log))
        return
    total = sum(1 for _ in selection.entries(log))
    if total == 0:
        if as_json:
            return json_lines([{"replayed": 0, "to": endpoint}])
        click.echo("nothing to replay for that selection", err=True)
        return
    if keys_dir:
        cfg.curve.enabled, cfg.curve.keys_dir = True, keys_dir
    ctx = zmq.Context()
    outlet = None
    try:
        try:
            outlet = ready_socket(ctx, endpoint, bind, wait, cfg.curve, insecure)
        except ReplayError as exc:
            raise Failure(str(exc)) from None
        sock = outlet.sock
        redacted = 0

        def sent(e) -> None:
            nonlocal redacted
            bar.update(1)
            redacted += not is_exact(e.rec)

        with progress(total, f"replaying to {endpoint}") as bar:
            try:
                entries = announced(selection.entries(log), log, chunk=1000 if as_fast else 1)
                n = send(sock, entries, None if as_fast else rate, sent)
            except KeyboardInterrupt:
                click.echo(f"\nreplay stopped after {bar.pos} of {total} messages", err=True)
                sys.exit(130)
        if as_json:
            json_lines([{"replayed": n, "to": endpoint, "redacted": redacted}])
        else:
            click.echo(f"replayed {n} messages to {endpoint}", err=True)
            if redacted:
                click.echo(f"{redacted} of them redacted: sent as recorded, with their secrets replaced, "
                           "not the bytes first published", err=True)
    finally:
        if outlet is not None:
            outlet.close()
        ctx.destroy(linger=5000)
