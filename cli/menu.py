"""``persist-cli menu`` (and a bare ``persist-cli`` on a terminal): the interactive front door.

Arrow keys (or j/k) and Enter, or a typed number; q, Esc or Ctrl-C go back.
Drawn with prompt_toolkit (imported only here, so the other commands start
fast): each list redraws in place as the selection moves and is erased once
a choice is made, the main menu comes back with the same item selected,
resizing and ``NO_COLOR`` are handled, and the terminal is restored however
the menu ends. A pager hands back straight to the menu; other commands' output
stays on screen until a key is pressed.
"""

from __future__ import annotations

import os
import sys

import click

from persist.cli.common import ago, require_log, with_log_dir
from persist.daemon.log import checkpoints, lock, render
from persist.daemon.log.select import conversation_upto

STYLE = {"title": "bold", "selected": "reverse", "marker": "ansicyan bold", "hint": "ansibrightblack"}


def _app(text, keys, **kw):
    """A small prompt_toolkit application drawn below the cursor (not full screen), erased when done."""
    os.environ.setdefault("PROMPT_TOOLKIT_NO_CPR", "1")  # the menu never needs to know the space below it
    from prompt_toolkit.application import Application
    from prompt_toolkit.layout import FormattedTextControl, Layout, Window
    from prompt_toolkit.styles import Style

    return Application(layout=Layout(Window(FormattedTextControl(text, show_cursor=False), wrap_lines=False)),
                       key_bindings=keys, style=Style.from_dict(STYLE), full_screen=False, erase_when_done=True,
                       **kw)


def choose(title: str, options: list[str], selected: int = 0) -> int | None:
    """The index the user picks (starting on ``selected``), or None if they back out."""
    if not options:
        return None
    from prompt_toolkit.key_binding import KeyBindings

    state = {"idx": min(selected, len(options) - 1), "typed": ""}
    keys = KeyBindings()

    def move(step: int):
        def handler(event) -> None:
            state["idx"], state["typed"] = (state["idx"] + step) % len(options), ""
        return handler

    for key in ("up", "k", "c-p"):
        keys.add(key)(move(-1))
    for key in ("down", "j", "c-n"):
        keys.add(key)(move(+1))
    keys.add("enter")(lambda event: event.app.exit(result=state["idx"]))
    for key in ("q", "escape", "c-c", "c-d"):
        keys.add(key)(lambda event: event.app.exit(result=None))

    @keys.add("<any>")
    def digit(event) -> None:
        key = event.data
        if not key.isdigit():
            return
        typed = state["typed"] + key
        n = int(typed)
        if 1 <= n <= len(options):
            state["idx"], state["typed"] = n - 1, typed
            if n * 10 > len(options):  # no longer number starts with these digits
                event.app.exit(result=n - 1)
        else:
            state["typed"] = ""

    def text():
        lines = [("class:title", title + "\n")]
        for i, option in enumerate(options):
            here = i == state["idx"]
            lines += [("class:marker", "› " if here else "  "),
                      ("class:selected" if here else "", f"{i + 1:>2}. {option}"), ("", "\n")]
        typed = f" · typed {state['typed']}" if state["typed"] else ""
        return lines + [("class:hint", "↑/↓ Enter, or type a number · q back" + typed)]

    return _app(text, keys).run()


def pause() -> None:
    """Wait for any key (the output above stays on screen)."""
    from prompt_toolkit.key_binding import KeyBindings

    keys = KeyBindings()
    keys.add("<any>")(lambda event: event.app.exit())
    keys.add("c-c")(lambda event: event.app.exit())
    _app([("class:hint", "press any key")], keys).run()


def pick_checkpoint(log, title: str = "Pick a checkpoint") -> dict | None:
    """Newest first, as people look for the last good moment."""
    items = checkpoints.readable(log)[::-1]
    labels = [f"{m['id']}  {m.get('label') or m['reason']:<10} {ago(m['created_at']):>12}  seq {m['last_seq']}"
              for m in items]
    if not items:
        click.echo("no checkpoints yet")
        return None
    i = choose(title, labels)
    return None if i is None else items[i]


@click.command()
@with_log_dir
@click.pass_context
def menu(ctx, cfg, log, **_) -> None:
    """Pick a checkpoint to restore or print, browse recent records, see status, search."""
    require_log(log)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise click.UsageError("the menu needs a terminal; use the commands directly in scripts")
    try:
        _loop(ctx, cfg, log)
    except KeyboardInterrupt:  # Ctrl-C while a screen is still being drawn: leave as cleanly as from a key
        click.echo()


ACTIONS = ["Restore a checkpoint (what came after is archived)", "Print a checkpoint's conversation",
           "Recent records", "Status", "Search", "Quit"]


def _loop(ctx, cfg, log) -> None:
    common = {"log_dir": str(log.root), "config_path": cfg.source}
    choice = 0
    while True:
        choice = choose(f"persist · {log.root}", ACTIONS, choice)
        if choice is None or choice == len(ACTIONS) - 1:
            return
        if choice == 0:
            _restore(ctx, log, common)
        elif choice == 1:
            _print(log)
            continue  # the pager was the screen: straight back to the menu
        elif choice == 2:
            _run(ctx, "read:recent", count=20, **common)
        elif choice == 3:
            _run(ctx, "status:status", **common)
        elif choice == 4:
            from prompt_toolkit import prompt

            try:
                query = prompt('Search for (words, "a phrase", prefix*): ')
            except (KeyboardInterrupt, EOFError):
                continue
            if not query.strip():
                continue
            _run(ctx, "search:search_cmd", query=query, limit=20, **common)
        pause()


def _restore(ctx, log, common: dict) -> None:
    m = pick_checkpoint(log, "Restore which checkpoint?")
    if m is None:
        return
    daemon = (f" The daemon recording now (pid {lock.holder_pid(log)}) is stopped for it and started again."
              if lock.is_locked(log) else "")
    if click.confirm(f"Restore {m['id']}? Records after seq {m['last_seq']} move to archive/.{daemon}"):
        _run(ctx, "checkpoints:restore_cmd", ident=m["id"], stop_daemon=True, **common)


def _print(log) -> None:
    m = pick_checkpoint(log, "Print which checkpoint?")
    fmt = None if m is None else choose("Format", list(render.FORMATS))
    if fmt is not None:
        click.echo_via_pager(c + "\n" for c in render.lines(conversation_upto(log, m["last_seq"]),
                                                            render.FORMATS[fmt]))


def _run(ctx, where: str, **params) -> None:
    """Run another command (``module:name`` in ``persist.cli``), unset options at their defaults;
    its errors and exit codes are shown, and the menu goes on."""
    import importlib

    module, name = where.split(":")
    command = getattr(importlib.import_module(f"persist.cli.{module}"), name)
    try:
        ctx.invoke(command, **params)
    except click.ClickException as exc:
        exc.show()
    except click.exceptions.Exit:  # `status` exits 3 when nothing records: it has said so
        pass
