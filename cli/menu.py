"""``persist-cli menu`` (and a bare ``persist-cli`` on a terminal): the interactive front door.

Arrow keys (or j/k) and Enter, or a typed number; q, Esc or Ctrl-C go back.
The terminal is in cbreak mode (keys arrive one by one, however fast they are
typed or pasted) only while the menu waits for a key, and is always restored
however the menu ends, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import tty

import click

from persist.cli.checkpoints import restore_cmd
from persist.cli.common import ago, require_log, with_log_dir
from persist.cli.read import recent
from persist.cli.search import search_cmd
from persist.cli.status import status
from persist.daemon.log import checkpoints, render
from persist.daemon.log.select import conversation_upto

UP, DOWN = ("\x1b[A", "k"), ("\x1b[B", "j")
BACK = ("q", "\x1b")


class Keys:
    """Key presses from the terminal, with arrow-key escape sequences kept whole."""

    def __enter__(self) -> Keys:
        if not sys.stdin.isatty():
            raise click.UsageError("the menu needs a terminal; use the commands directly in scripts")
        self.fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(self.fd)
        self.buf = b""
        tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc) -> None:
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    @contextlib.contextmanager
    def cooked(self):
        """The normal terminal mode, for prompts, pagers and other commands."""
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        try:
            yield
        finally:
            tty.setcbreak(self.fd)
            self.buf = b""

    def get(self) -> str:
        while not self.buf:
            self.buf = os.read(self.fd, 64)
            if not self.buf:
                raise EOFError
        n = 3 if self.buf.startswith(b"\x1b[") and len(self.buf) >= 3 else 1
        key, self.buf = self.buf[:n], self.buf[n:]
        return key.decode(errors="replace")


def choose(keys: Keys, title: str, options: list[str]) -> int | None:
    """The index the user picks, or None if they back out."""
    if not options:
        return None
    idx, typed = 0, ""
    drawn = 0
    while True:
        if drawn:
            click.echo(f"\x1b[{drawn}F\x1b[J", nl=False)  # back to the top of the menu, clear below
        lines = [click.style(title, bold=True)]
        for i, option in enumerate(options):
            marker = click.style("›", fg="cyan") if i == idx else " "
            lines.append(f"{marker} {i + 1:>2}. {option}")
        lines.append(click.style("↑/↓ Enter, or type a number · q back" + (f" · typed {typed}" if typed else ""), dim=True))
        click.echo("\n".join(lines))
        drawn = len(lines)
        try:
            key = keys.get()
        except (KeyboardInterrupt, EOFError):
            return None
        if key in UP:
            idx, typed = (idx - 1) % len(options), ""
        elif key in DOWN:
            idx, typed = (idx + 1) % len(options), ""
        elif key in ("\r", "\n"):
            return idx
        elif key in BACK or key == "\x03":
            return None
        elif key.isdigit():
            typed += key
            n = int(typed)
            if 1 <= n <= len(options):
                idx = n - 1
                if n * 10 > len(options):  # no longer number starts with these digits
                    return idx
            else:
                typed = ""


def pick_checkpoint(keys: Keys, log, title: str = "Pick a checkpoint") -> dict | None:
    """Newest first, as people look for the last good moment."""
    items = checkpoints.readable(log)[::-1]
    labels = [f"{m['id']}  {m.get('label') or m['reason']:<10} {ago(m['created_at']):>12}  seq {m['last_seq']}"
              for m in items]
    if not items:
        click.echo("no checkpoints yet")
        return None
    i = choose(keys, title, labels)
    return None if i is None else items[i]


def pause(keys: Keys) -> None:
    click.echo(click.style("press any key", dim=True))
    try:
        keys.get()
    except (KeyboardInterrupt, EOFError):
        pass


@click.command()
@with_log_dir
@click.pass_context
def menu(ctx, cfg, log) -> None:
    """Pick a checkpoint to restore or print, browse recent records, see status, search."""
    require_log(log)
    with Keys() as keys:
        try:
            _loop(ctx, keys, cfg, log)
        except KeyboardInterrupt:  # Ctrl-C while a screen is still being drawn: leave as cleanly as from a key
            click.echo()


def _loop(ctx, keys: Keys, cfg, log) -> None:
    common = {"log_dir": str(log.root), "config_path": cfg.source}
    actions = ["Restore a checkpoint (what came after is archived)", "Print a checkpoint's conversation",
               "Recent records", "Status", "Search", "Quit"]
    while True:
        choice = choose(keys, f"persist · {log.root}", actions)
        if choice is None or choice == len(actions) - 1:
            return
        if choice == 0 and (m := pick_checkpoint(keys, log, "Restore which checkpoint?")):
            with keys.cooked():
                if click.confirm(f"Restore {m['id']}? Records after seq {m['last_seq']} move to archive/"):
                    _run(ctx, restore_cmd, ident=m["id"], out=None, print_=False, fmt="markdown",
                         stop_daemon=True, **common)
        elif choice == 1 and (m := pick_checkpoint(keys, log, "Print which checkpoint?")):
            fmt = choose(keys, "Format", list(render.FORMATS))
            if fmt is not None:
                with keys.cooked():
                    click.echo_via_pager(c + "\n" for c in render.lines(conversation_upto(log, m["last_seq"]),
                                                                        render.FORMATS[fmt]))
        elif choice == 2:
            _run(ctx, recent, count=20, topic=None, sender=None, follow_=False, system=True, as_json=False, **common)
        elif choice == 3:
            _run(ctx, status, as_json=False, **common)
        elif choice == 4:
            with keys.cooked():
                query = click.prompt("Search for (words, \"a phrase\", prefix*)", default="", show_default=False)
            if query.strip():
                _run(ctx, search_cmd, query=query, sender=None, topic=None, thread_id=None, kind=None, since=None,
                     until=None, limit=20, as_json=False, **common)
        pause(keys)


def _run(ctx, command, **params) -> None:
    """Run another command; its errors are shown, and the menu goes on."""
    try:
        ctx.invoke(command, **params)
    except click.ClickException as exc:
        exc.show()
