"""``persist-cli``: the click group; each command lives in its own module.

A bare ``persist-cli`` opens the menu on a terminal and prints help otherwise.
"""

from __future__ import annotations

import sys

import click

from persist.cli import checkpoints, menu, read, status
from persist.cli.broker import broker
from persist.cli.common import Failure, UsageError
from persist.daemon.checkpoints import CheckpointError
from persist.daemon.control import ControlError
from persist.daemon.restore import RestoreError


class Group(click.Group):
    """Turns the format library's errors into one-line messages with the right exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (CheckpointError, RestoreError) as exc:
            raise UsageError(str(exc)) from None
        except ControlError as exc:
            raise Failure(str(exc)) from None


@click.group(cls=Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Find, restore and replay what your agents said."""
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            ctx.invoke(menu.menu, log_dir=None, config_path=None)
        else:
            click.echo(ctx.get_help())


for command in (
    status.status, checkpoints.group, checkpoints.restore_cmd, read.recent, read.export, read.verify_cmd,
    read.recover, status.doctor, status.stats, menu.menu, broker,
):
    cli.add_command(command)


def main() -> None:
    cli()
