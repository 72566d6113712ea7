"""``persist-cli``: the click group; each command lives in its own module."""

from __future__ import annotations

import click

from persist.cli.broker import broker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Find, restore and replay what your agents said."""


cli.add_command(broker)


def main() -> None:
    cli()
