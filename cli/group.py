"""The click group behind ``persist-cli``: global options, commands loaded lazily, errors as one line.

``persist.cli.main`` holds the command table and the entry point, and imports this (and click) only for a
command line ``quick`` does not run by itself.
"""

from __future__ import annotations

import importlib
import sys

import click

from persist.cli.errors import Failure, UsageError, json_errors
from persist.cli.main import ARCHIVE_COMMANDS, COMMANDS, GLOBAL


class Defaults(dict):
    """A click ``default_map`` that gives every command (and sub-command) at any depth the global options."""

    def get(self, key, default=None):
        if key in self:
            return self[key]
        return None if key in GLOBAL else self  # a command's name: its defaults are these same ones


class Group(click.Group):
    """Loads commands lazily; turns the format library's errors into one-line messages."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands and their lines from ``COMMANDS``, as click lays them out, importing none of them."""
        width = formatter.width - 6 - max(map(len, COMMANDS))
        with formatter.section("Commands"):
            formatter.write_dl([(name, click.Command(name, help=line).get_short_help_str(width))
                                for name, (_, line) in sorted(COMMANDS.items())])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target = COMMANDS[name][0]
        if ctx.params.get("archive_url") and name in ARCHIVE_COMMANDS:
            target = ARCHIVE_COMMANDS[name]
        module, attr = target.split(":")
        return getattr(importlib.import_module(f"persist.cli.{module}"), attr)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
            import difflib

            close = difflib.get_close_matches(name, COMMANDS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "see persist-cli --help"
            raise UsageError(f"no command {name!r}; {hint}")
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        words = args[: args.index("--")] if "--" in args else args
        pairs = set(zip(words, words[1:]))
        # known before any option is parsed, so that every error comes as JSON
        ctx.meta["persist.json"] = "--json" in words or "--format=json" in words or ("--format", "json") in pairs
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:  # a bad global option
            raise json_errors(ctx, UsageError(f"{exc.format_message()} (see persist-cli --help)")) from None

    def invoke(self, ctx: click.Context):
        from persist.daemon.log.errors import CheckpointError, ControlError, RestoreError, SearchIndexError
        from persist.daemon.log.fsutil import NotOurs

        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise json_errors(ctx, exc) from None
        except click.UsageError as exc:  # a bad flag value: one line, exit 2, not click's usage block
            where = exc.ctx.command_path if exc.ctx else "persist-cli"
            raise json_errors(ctx, UsageError(f"{exc.format_message()} (see {where} --help)")) from None
        except (CheckpointError, RestoreError) as exc:
            raise json_errors(ctx, UsageError(str(exc))) from None
        except (ControlError, SearchIndexError, NotOurs) as exc:
            raise json_errors(ctx, Failure(str(exc))) from None
        except click.ClickException as exc:
            raise json_errors(ctx, Failure(exc.format_message())) from None


@click.group(cls=Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-dir", metavar="DIR", help="The log dir for any command (env PERSIST_LOG_DIR).")
@click.option("--config", "config_path", metavar="FILE", help="TOML config file for any command.")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts, for any command (errors too, on stderr).")
@click.option("--utc", is_flag=True, help="Show and read times in UTC instead of local time.")
@click.option("--archive", "archive_url", metavar="URL", help="search, thread, threads, recent, export, stats, info and web answer from this PostgreSQL archive, across nodes.")
@click.version_option(package_name="persist", prog_name="persist-cli", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, log_dir: str | None, config_path: str | None, as_json: bool, utc: bool,
        archive_url: str | None) -> None:
    """Find, restore and replay what your agents said.

    Global options go before the command (persist-cli --log-dir D recent) or after it: the same either way.
    """
    from persist.daemon.log import times

    times.use_utc(utc)  # per run: a command's own --utc turns it on too
    ctx.call_on_close(lambda: times.use_utc(False))  # and only for this run (tests run many in one process)
    given = {"log_dir": log_dir, "config_path": config_path, "as_json": as_json or None, "utc": utc or None,
             "archive_url": archive_url}
    ctx.default_map = Defaults({k: v for k, v in given.items() if v is not None})
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            ctx.invoke(Group.get_command(cli, ctx, "menu"), log_dir=log_dir, config_path=config_path)
        else:
            click.echo(ctx.get_help())
