"""``persist-cli``: the click group; each command lives in its own module.

Commands are imported only when run, so ``persist-cli recent`` starts fast.
A bare ``persist-cli`` opens the menu on a terminal and prints help otherwise.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from persist.cli.common import Failure, UsageError
from persist.daemon import logs
from persist.daemon.log.errors import CheckpointError, ControlError, RestoreError, SearchIndexError
from persist.daemon.log.fsutil import NotOurs

COMMANDS = {
    "status": "status:status",
    "checkpoints": "checkpoints:group",
    "restore": "checkpoints:restore_cmd",
    "recent": "read:recent",
    "export": "read:export",
    "verify": "read:verify_cmd",
    "recover": "read:recover",
    "doctor": "status:doctor",
    "stats": "status:stats_cmd",
    "menu": "menu:menu",
    "broker": "broker:broker",
    "search": "search:search_cmd",
    "thread": "search:thread_cmd",
    "threads": "search:threads_cmd",
    "index": "search:index_group",
    "replay": "replay:replay",
}


class Group(click.Group):
    """Loads commands lazily; turns the format library's errors into one-line messages."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(f"persist.cli.{module}"), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a bad flag value: one line, exit 2, not click's usage block
            where = exc.ctx.command_path if exc.ctx else "persist-cli"
            raise UsageError(f"{exc.format_message()} (see {where} --help)") from None
        except (CheckpointError, RestoreError) as exc:
            raise UsageError(str(exc)) from None
        except (ControlError, SearchIndexError, NotOurs) as exc:
            raise Failure(str(exc)) from None


@click.group(cls=Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Find, restore and replay what your agents said."""
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            ctx.invoke(Group.get_command(cli, ctx, "menu"), log_dir=None, config_path=None)
        else:
            click.echo(ctx.get_help())


def main() -> None:
    os.umask(0o077)  # what the CLI creates (index, exports, restored logs) is private unless the user says otherwise
    logs.setup("auto", "warning", sys.stderr)  # the library's warnings go to stderr, never into --json output
    cli()
