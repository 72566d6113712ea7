"""``persist-cli keys init``: the CURVE key pairs every piece of the bus uses (SPEC section 14)."""

from __future__ import annotations

from pathlib import Path

import click

from persist.cli.common import Failure, json_lines, json_option, with_log_dir
from persist.daemon import curve


@click.group()
def group() -> None:
    """CURVE keys for the bus: authentication and encryption between publishers, broker and daemon."""


@group.command("init")
@click.option("--dir", "directory", metavar="DIR", help="Where to make them (default: [curve] keys_dir).")
@with_log_dir
@json_option
def init(cfg, log, directory: str | None, as_json: bool) -> None:
    """Make a server and a client key pair (z85, 0600), the client's public key on the allow-list (clients/)."""
    where = Path(directory).expanduser() if directory else cfg.curve.keys_path
    try:
        made = curve.init(where)
    except curve.CurveError as exc:
        raise Failure(str(exc)) from None
    except OSError as exc:
        raise Failure(f"cannot make keys in {where}: {exc.strerror}; choose another --dir") from None
    if as_json:
        json_lines([{"keys_dir": str(where), "files": {k: str(v) for k, v in made.items()}}])
        return
    click.echo(f"made in {where} (directory 0700, files 0600):")
    click.echo("  server.key_secret   the broker's (or a binding daemon's) key pair: stays on its host")
    click.echo("  server.key          its public key: every client needs a copy")
    click.echo("  client.key_secret   the key pair of publishers, the daemon that connects, replay")
    click.echo("  clients/client.key  the allow-list: every *.key here may connect")
    click.echo("\nTo use them, in the config of every piece (or PERSIST_CURVE_ENABLED=1, PERSIST_CURVE_KEYS_DIR):")
    click.echo(f'  [curve]\n  enabled = true\n  keys_dir = "{where}"')
