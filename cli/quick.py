"""``persist-cli recent`` without click, for the plain command lines people and scripts type most.

Importing click costs more than everything else ``recent`` does on a huge log, so ``main`` first hands the
command line here. A ``recent`` with options ``read.recent`` takes (and the global ones before it), written
the ways click reads them, is run straight away: the same config, the same library calls, the same lines
(``lines.one_line``, ANSI codes stripped off a terminal as ``click.echo`` does) or the same ``--json``
lines. Anything else — help, another command, ``--follow``, ``--archive``, an option or a form of one this
does not know, a value click would refuse, any error before the first line is printed — returns False with
nothing printed, and click runs the command line from the start: every message and exit code stays click's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

GLOBAL_VALUES = {"--log-dir": "log_dir", "--config": "config_path"}  # before the command: group.cli's
GLOBAL_FLAGS = {"--json": ("as_json", True), "--utc": ("utc", True)}
VALUES = {"-n": "count", "--topic": "topic", "--sender": "sender", "--thread": "thread", "--kind": "kind",
          "--since": "since", "--until": "until", **GLOBAL_VALUES}  # read.recent's, and with_log's
FLAGS = {"--reverse": ("reverse", True), "-r": ("reverse", True), "--system": ("system", True),
         "--no-system": ("system", False), **GLOBAL_FLAGS}
DEFAULTS = {"count": 20, "topic": None, "sender": None, "thread": None, "kind": None, "since": None,
            "until": None, "reverse": False, "system": True, "as_json": False, "utc": False,
            "log_dir": None, "config_path": None}
CONFIG_FILES = ("persist.toml", "~/.config/persist/config.toml", "/etc/persist/config.toml")  # config.SEARCH_PATH
LOG_DIR = "./conversation_logs"  # config.DaemonSection.log_dir (tests hold these to click's and config's)
ANSI = r"\033\[[0-?]*[ -/]*[@-~]"  # what click.echo strips from text not going to a terminal


def _options(args: list[str], values: dict[str, str], flags: dict[str, tuple[str, bool]],
             into: dict[str, Any]) -> int | None:
    """Read options from ``args`` into ``into`` until a word that is not one; its index (None: not ours)."""
    i = 0
    while i < len(args):
        word = args[i]
        name, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        if name in flags and not eq:
            key, on = flags[name]
            into[key] = on
        elif name in values and eq:
            into[values[name]] = value
        elif name in values and i + 1 < len(args):  # click takes the next word, whatever it looks like
            into[values[name]] = args[i + 1]
            i += 1
        elif word[:2] in values and not word.startswith("--"):  # a short option and its value in one word: -n5
            into[values[word[:2]]] = word[2:]
        elif word.startswith("-"):
            return None
        else:
            return i
        i += 1
    return i


def parse(args: list[str]) -> dict[str, Any] | None:
    """The options of a plain ``recent`` command line, click's defaults filled in; None for any other."""
    before: dict[str, Any] = {}
    at = _options(args, GLOBAL_VALUES, GLOBAL_FLAGS, before)
    if at is None or at == len(args) or args[at] != "recent":
        return None
    given = dict(DEFAULTS, **before)  # the global options are the command's defaults (group.Defaults)
    rest = args[at + 1:]
    if _options(rest, VALUES, FLAGS, given) != len(rest):
        return None
    try:
        count = int(given["count"])  # click.IntRange(0, sys.maxsize)
    except ValueError:
        return None
    if not 0 <= count <= sys.maxsize:
        return None
    given["count"] = count
    return given


def _plain_stdout() -> bool:
    """stdout as click.echo would write to it unchanged: there, and UTF-8 (click re-wraps a misconfigured one)."""
    import codecs

    try:
        return sys.stdout is not None and codecs.lookup(sys.stdout.encoding).name == "utf-8"
    except (AttributeError, LookupError, TypeError):
        return False


def ran(args: list[str]) -> bool:
    """Run ``persist-cli ARGS`` if it is a plain ``recent``; False (nothing printed) to leave it to click."""
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ):  # click's shell completion
        return False
    opts = parse(args)
    if opts is None or not _plain_stdout():
        return False
    try:
        out = _recent(opts)
    except KeyboardInterrupt:  # as read.recent: Ctrl-C ends it quietly
        return True
    except Exception:  # noqa: BLE001 — click runs it again and reports it as it always does
        return False
    if out is None:
        return False
    try:
        if opts["as_json"]:
            sys.stdout.buffer.write(out)
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(out)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # as click: exit 1, and no second error when Python flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    return True


def _recent(opts: dict[str, Any]) -> str | bytes | None:
    """What ``read.recent`` prints for ``opts``, or None where it would stop with an error."""
    from persist.daemon.log import select, times
    from persist.daemon.log.layout import LogDir

    if opts["utc"]:
        times.use_utc(True)
    log = LogDir(_log_dir(opts["config_path"], opts["log_dir"]))
    if not log.root.is_dir() or not log.is_log_dir():  # common.require_log
        return None
    filters = {key: opts[key] for key in ("topic", "sender", "thread", "kind", "system")}
    for key in ("since", "until"):
        filters[key] = None if opts[key] is None else times.parse_when(opts[key])
    entries = list(select.recent(log, opts["count"], False, opts["reverse"], **filters))
    if opts["as_json"]:
        return b"".join(e.line for e in entries)
    from persist.cli.lines import one_line

    text = "".join(one_line(e.rec) + "\n" for e in entries)
    if sys.stdout.isatty() or "\033" not in text:
        return text
    import re

    return re.sub(ANSI, "", text)


def _log_dir(config_path: str | None, flag: str | None) -> Path:
    """``config.log_dir(config_path, flag)``, without importing ``config`` when no config file and no ``PERSIST_``
    variable but ``PERSIST_LOG_DIR`` is there: then only the flag, that variable or the default can set it."""
    env = [k for k in os.environ if k.startswith("PERSIST_")]
    from_env = os.environ.get("PERSIST_LOG_DIR")
    value = flag or (LOG_DIR if from_env is None else from_env)
    if config_path or env not in ([], ["PERSIST_LOG_DIR"]) or not (value + (from_env or "")).isascii() \
            or any(os.path.isfile(os.path.expanduser(name)) for name in CONFIG_FILES):
        from persist.daemon import config

        return config.log_dir(config_path, flag)
    return Path(value).expanduser()
