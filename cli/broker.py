"""``persist-cli broker``: run the plain XSUB/XPUB proxy of ``persist.daemon.broker``."""

from __future__ import annotations

import signal

import click

from persist.daemon import config
from persist.daemon.broker import HWM, BrokerError, run_proxy
from persist.daemon.stopping import StopOnSignal

__all__ = ["broker", "run_proxy"]


@click.command()
@click.option("--frontend", default="tcp://127.0.0.1:5556", show_default=True, help="Where publishers connect.")
@click.option("--backend", default="tcp://127.0.0.1:5555", show_default=True, help="Where subscribers (persist-daemon) connect.")
@click.option("--hwm", default=HWM, show_default=True, type=click.IntRange(1, 2**31 - 1),
              help="Messages queued per peer; past it the proxy waits for the slow one (it never drops).")
@click.option("--config", "config_path", metavar="FILE", help="TOML config file: its [curve] section.")
@click.option("--keys-dir", metavar="DIR", help="CURVE on both sides with the keys in DIR (persist-cli keys init).")
@click.option("--insecure", is_flag=True, help="Allow binding an address other than loopback without CURVE.")
def broker(frontend: str, backend: str, hwm: int, config_path: str | None, keys_dir: str | None,
           insecure: bool) -> None:
    """Run a plain XPUB/XSUB proxy: publishers → FRONTEND, subscribers → BACKEND."""
    try:
        cfg = config.load(config_path, {"curve": {"enabled": True, "keys_dir": keys_dir} if keys_dir else {}})
    except config.ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        run_proxy(frontend, backend, StopOnSignal(signal.SIGINT, signal.SIGTERM), hwm, cfg.curve, insecure)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None
