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

import importlib
import os
import sys

import click

from persist.cli.errors import Failure, UsageError, json_errors

COMMANDS = {  # name: where it lives, and its line in ``--help`` (listing needs no command module imported)
    "archive": ("archive:group", "The PostgreSQL archive several recorders ship to."),
    "broker": ("broker:broker", "Run a plain XPUB/XSUB proxy: publishers → FRONTEND, subscribers → BACKEND."),
    "checkpoints": ("checkpoints:group", "List, inspect, create, compare and prune checkpoints."),
    "doctor": ("status:doctor", "Check config, log dir, permissions, disk space, daemon and broker; one line each."),
    "export": ("read:export", "Export records as JSON Lines (the on-disk schema), CSV or markdown."),
    "index": ("search:index_group", "The search index (metadata_index/): derived, rebuildable from the JSONL."),
    "info": ("info:info", "Time span, records, per-topic and per-sender counts, size, segments, checkpoints, gaps."),
    "keys": ("keys:group", "CURVE keys for the bus: authentication and encryption between publishers, broker and "
                           "daemon."),
    "menu": ("menu:menu", "Pick a checkpoint to restore or print, browse recent records, see status, search."),
    "recent": ("read:recent", "The last N records, read from the tail (instant on a huge log)."),
    "recover": ("read:recover", "Repair what a crash left and bring the search index up to date (what the daemon "
                                "does at start)."),
    "redact": ("redact:group", "Secrets in messages: try the rules on a file, list them, or redact what was already "
                               "recorded (apply)."),
    "replay": ("replay:replay", "Publish recorded messages again, byte for byte, in recorded order (never $persist/ "
                                "records)."),
    "restore": ("checkpoints:restore_cmd", "Make checkpoint ID the active session; what came after moves to archive/ "
                                           "(nothing is deleted)."),
    "search": ("search:search_cmd", "Full-text search, best match first; exit 1 when nothing matches (as grep)."),
    "stats": ("status:stats_cmd", "Records per topic and per sender, rate over the last minute, the checkpoint "
                                  "timeline."),
    "status": ("status:status", "Is the daemon recording, and reaching its broker? pid, uptime, records, rate, last "
                                "checkpoint, disk, gaps."),
    "thread": ("search:thread_cmd", "One conversation, across every tool and agent, in recorded order."),
    "threads": ("search:threads_cmd", "Threads, most recently active first: first and last time, turns, "
                                      "participants."),
    "verify": ("read:verify_cmd", "Check every line is a whole record, seq is continuous, and every checkpoint holds "
                                  "(exit 1 if not)."),
    "web": ("web.command:web", "A read-only web page over the log: live records, threads, search, messages, agents, "
                               "timeline."),
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

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands and their lines from ``COMMANDS``, as click lays them out, importing none of them."""
        width = formatter.width - 6 - max(map(len, COMMANDS))
        with formatter.section("Commands"):
            formatter.write_dl([(name, click.utils.make_default_short_help(line, width))
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


def main() -> None:
    os.umask(0o077)  # what the CLI creates (index, exports, restored logs) is private unless the user says otherwise
    from persist.daemon.log import lazylog

    lazylog.when_first_used(setup_logs)  # a command that logs nothing never loads structlog: it starts quicker
    cli()


def setup_logs() -> None:
    """The library's warnings go to stderr, never into ``--json`` output. structlog imports rich's traceback machinery when rich is installed (~30 ms);
    the CLI's own log lines never need it, so it is hidden while structlog loads (rich is imported later, only
    where a table is drawn)."""
    had_rich = "rich" in sys.modules
    if not had_rich:
        sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        from persist.daemon import logs
    finally:
        if not had_rich:
            del sys.modules["rich"]
    logs.setup("auto", "warning", sys.stderr)


if __name__ == "__main__":
    main()
