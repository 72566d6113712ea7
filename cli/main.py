"""``persist-cli``: its commands and the entry point; each command lives in its own module.

Commands are imported only when run, and a plain ``recent`` runs without
click at all (``quick``), so ``persist-cli recent`` starts fast. The click
group is ``group.cli`` (also here as ``cli``, imported when first asked for).
A bare ``persist-cli`` opens the menu on a terminal and prints help otherwise.
Global options (``--log-dir``, ``--config``, ``--json``, ``--utc``) mean the
same before the command as after it: they become the command's defaults
(``group.Defaults``), so every command, whoever wrote it, takes them. A typo'd
command gets the closest one suggested (exit 2); with ``--json`` an error is
one JSON object on stderr (``common.UsageError.show``).
"""

from __future__ import annotations

import os
import sys

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


def main() -> None:
    os.umask(0o077)  # what the CLI creates (index, exports, restored logs) is private unless the user says otherwise
    from persist.daemon.log import lazylog

    lazylog.when_first_used(setup_logs)  # a command that logs nothing never loads structlog: it starts quicker
    if "recent" in sys.argv:  # a plain one runs without click, a good part of its start
        from persist.cli import quick

        if quick.ran(sys.argv[1:]):
            return
    from persist.cli.group import cli

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


def __getattr__(name: str):
    """``cli``, ``Group`` and ``Defaults`` from ``group``: importing this module imports no click."""
    if name in ("cli", "Group", "Defaults"):
        from persist.cli import group

        return getattr(group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
