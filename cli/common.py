"""What every persist-cli command shares: options, the log dir, errors, and output helpers.

Commands stay a dozen lines each: they parse options, call the format
library in ``persist.daemon`` and hand rows to ``listing`` (``--json`` or a
table), ``table``, ``counts``, ``fields`` or ``json_lines``; long work shows
``progress`` (on a terminal's stderr only). Nothing here reads or decides what
is in a log: that is the library's.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click
import orjson

from persist.cli.errors import Failure, UsageError, json_errors  # noqa: F401 (API)
from persist.cli.lines import color, one_line, terminal_width, when  # noqa: F401 (API)
from persist.daemon.log import times
from persist.daemon.log.layout import LogDir


def _utc(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        times.use_utc(True)


utc_option = click.option("--utc", is_flag=True, expose_value=False, callback=_utc,
                          help="Show and read times in UTC instead of local time.")


def log_dir_options(func: Callable) -> Callable:
    """``--log-dir``, ``--config`` and ``--utc``. Each may also come before the command name
    (``persist-cli --log-dir D recent``: ``group.Defaults``)."""
    func = utc_option(func)
    func = click.option("--config", "config_path", metavar="FILE",
                        help="TOML config file (see persist-daemon --help).")(func)
    return click.option("--log-dir", metavar="DIR",
                        help="The log dir (env PERSIST_LOG_DIR; default ./conversation_logs).")(func)


def with_log_dir(func: Callable) -> Callable:
    """Add ``--log-dir``, ``--config`` and ``--utc``; pass the resolved ``cfg`` and ``log`` to the command."""

    @log_dir_options
    @functools.wraps(func)
    def wrapper(*args, log_dir: str | None, config_path: str | None, **kwargs):
        from persist.daemon import config

        try:
            cfg = config.load(config_path, config.flags(log_dir))
        except config.ConfigError as exc:
            raise UsageError(str(exc)) from None
        return func(*args, cfg=cfg, log=LogDir(cfg.log_dir), **kwargs)

    return wrapper


def with_log(func: Callable) -> Callable:
    """``with_log_dir`` for a command that needs only the log (no ``cfg``): the config is checked just as
    strictly, but not made when no file or variable is there (``config.log_dir``)."""

    @log_dir_options
    @functools.wraps(func)
    def wrapper(*args, log_dir: str | None, config_path: str | None, **kwargs):
        from persist.daemon import config

        try:
            root = config.log_dir(config_path, log_dir)
        except config.ConfigError as exc:
            raise UsageError(str(exc)) from None
        return func(*args, log=LogDir(root), **kwargs)

    return wrapper


json_option = click.option("--json", "as_json", is_flag=True, help="JSON Lines in the on-disk schema, for scripts.")


def require_log(log: LogDir) -> LogDir:
    """``log``, or exit 2 if it is not a persist log dir."""
    if not log.root.is_dir():
        raise UsageError(f"log dir {log.root} does not exist; pass --log-dir or set PERSIST_LOG_DIR")
    if not log.is_log_dir():
        raise UsageError(f"{log.root} is not a persist log (no current_session.jsonl or segments/); pass --log-dir")
    return log


def daemon_status(log: LogDir) -> dict[str, Any] | None:
    """The running daemon's status through its control socket, or None."""
    from persist.daemon.control import answer  # pyzmq only where a daemon is asked

    return answer(log.control_endpoint, "status", timeout_ms=1500)


# --- output ------------------------------------------------------------------


def json_lines(objects: Iterable[Any]) -> None:
    out = sys.stdout.buffer
    for obj in objects:
        out.write(obj if isinstance(obj, bytes) else orjson.dumps(obj) + b"\n")
    out.flush()


def style(text: str, **kw: Any) -> str:
    return click.style(text, **kw) if color() else text


def table(headers: list[str], rows: list[list[Any]], right: Iterable[int] = ()) -> None:
    """Print aligned columns through rich: header bold on a terminal (``NO_COLOR`` honoured), wrapped to the
    terminal's width (the first column, an id, kept whole); never wrapped when piped. rich is imported here
    only: ``recent`` never pays for it."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    right = set(right)
    tty = sys.stdout.isatty()
    grid = Table(box=box.SIMPLE_HEAD if tty else None, show_edge=False, pad_edge=False, header_style="bold",
                 show_header=True, expand=False)
    cells = [[str(c) for c in row] for row in rows]
    for i, h in enumerate(headers):  # the first column (an id to copy) is never cut; the others wrap to fit
        whole = max([len(h)] + [len(r[0]) for r in cells]) if i == 0 else None
        grid.add_column(h, justify="right" if i in right else "left", no_wrap=not tty or i == 0, min_width=whole)
    for row in cells:
        grid.add_row(*row)
    console = Console(file=sys.stdout, no_color=not color(), highlight=False, markup=False, emoji=False,
                      width=None if tty else 1 << 16, color_system="auto" if color() else None)
    with console.capture() as captured:
        console.print(grid)
    click.echo("\n".join(line.rstrip() for line in captured.get().rstrip("\n").split("\n")))


def counts(name: str, counted: dict[str, int], top: int | None = None) -> None:
    """A ``name | records`` table, most first (the ``top`` first rows only, if given)."""
    rows = sorted(counted.items(), key=lambda kv: -kv[1])
    table([name, "records"], rows[:top], right=(1,))


def listing(as_json: bool, items: list[Any], headers: list[str], row: Callable[[Any], list[Any]],
            right: Iterable[int] = (), empty: str | None = None) -> None:
    """``items`` as JSON Lines with ``--json``, else as a table of ``row(item)`` (or ``empty`` when there are none)."""
    if as_json:
        return json_lines(items)
    if not items and empty is not None:
        return click.echo(empty)
    table(headers, [row(item) for item in items], right)


def fields(rows: Iterable[tuple[str, Any]], width: int, bold: bool = False) -> None:
    """``key  value`` lines, keys padded to ``width`` (bold on a terminal with ``bold``)."""
    for key, value in rows:
        click.echo((style(key, bold=True) + " " * (width - len(key)) if bold else f"{key:<{width}}") + str(value))


@contextlib.contextmanager
def progress(length: int, label: str) -> Iterator[Any]:
    """A click progress bar on stderr when it is a terminal; silent otherwise (never in piped output)."""
    quiet = None if sys.stderr.isatty() else open(os.devnull, "w")
    try:
        with click.progressbar(length=length, label=label, file=quiet or sys.stderr) as bar:
            yield bar
    finally:
        if quiet is not None:
            quiet.close()


def log_progress(log: LogDir, label: str):
    """``progress`` over every byte of the log (``verify``, ``index rebuild``)."""
    from persist.daemon.log import stats

    return progress(stats.log_bytes(log), label)


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def ago(iso: str | None) -> str:
    """``3 min ago`` for a record or checkpoint time."""
    if not iso:
        return "never"
    seconds = time.time() - times.epoch(iso)
    for limit, unit, div in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600), (float("inf"), "d", 86400)):
        if seconds < limit:
            return f"{seconds / div:.0f} {unit} ago"
    return iso


# --- time filters ------------------------------------------------------------


def parse_when(text: str | None, flag: str) -> str | None:
    """A ``--since``/``--until`` value as an ISO UTC string comparable with ``received_at``."""
    if text is None:
        return None
    try:
        return times.parse_when(text)
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r} {exc}") from None

