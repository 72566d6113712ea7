"""``persist-cli``: the click group; each command lives in its own module.

Commands are imported only when run, so ``persist-cli recent`` starts fast.
A bare ``persist-cli`` opens the menu on a terminal and prints help otherwise.
Global options (``--log-dir``, ``--config``, ``--json``, ``--utc``) mean the
same before the command as after it: they become the command's defaults
(``Defaults``), so every command, whoever wrote it, takes them. A typo'd
command gets the closest one suggested (exit 2); with ``--json`` an error is
one JSON object on stderr (``common.UsageError.show``).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

# structlog imports rich's traceback machinery when rich is installed (~30 ms); the CLI's own log lines never
# need it, so it is hidden while structlog loads. rich is imported later, only where a table is drawn.
_had_rich = "rich" in sys.modules
if not _had_rich:
    sys.modules["rich"] = None  # type: ignore[assignment]
try:
    import click

    from persist.cli.common import Failure, UsageError, json_errors
    from persist.daemon import logs
    from persist.daemon.log import times
    from persist.daemon.log.errors import CheckpointError, ControlError, RestoreError, SearchIndexError
    from persist.daemon.log.fsutil import NotOurs
finally:
    if not _had_rich:
        del sys.modules["rich"]

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
    "info": "info:info",
    "archive": "archive:group",
    "web": "web.command:web",
    "keys": "keys:group",
    "redact": "redact:group",
}
ARCHIVE_COMMANDS = {  # with --archive URL these answer from the archive, across nodes
    "search": "archive:search_cmd", "thread": "archive:thread_cmd", "threads": "archive:threads_cmd",
    "recent": "archive:recent_cmd", "export": "archive:export_cmd", "stats": "archive:stats_cmd",
    "info": "archive:stats_cmd",
}
# parameter names the global options set for every command
GLOBAL = ("log_dir", "config_path", "as_json", "utc", "archive_url")


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

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target = COMMANDS[name]
        if ctx.params.get("archive_url") and name in ARCHIVE_COMMANDS:
            target = ARCHIVE_COMMANDS[name]
        module, attr = target.split(":")
        return getattr(importlib.import_module(f"persist.cli.{module}"), attr)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
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
@click.option("--archive", "archive_url", metavar="URL", help="search, thread, threads, recent, export, stats and info answer from this PostgreSQL archive, across nodes.")
@click.version_option(package_name="persist", prog_name="persist-cli", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, log_dir: str | None, config_path: str | None, as_json: bool, utc: bool,
        archive_url: str | None) -> None:
    """Find, restore and replay what your agents said.

    Global options go before the command (persist-cli --log-dir D recent) or after it: the same either way.
    """
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


def main() -> None:
    os.umask(0o077)  # what the CLI creates (index, exports, restored logs) is private unless the user says otherwise
    logs.setup("auto", "warning", sys.stderr)  # the library's warnings go to stderr, never into --json output
    cli()


if __name__ == "__main__":
    main()
