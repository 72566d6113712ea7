"""``persist-launch [--menu] [--log-dir D] [--name N] -- CMD ARGS...``: run an agent with persist recording.

Ensures the daemon (registering the agent), optionally lets the user pick a
checkpoint whose conversation is handed to the agent as a file named in
``PERSIST_RESTORED_CONTEXT``, runs the agent, forwards signals to it, releases
on exit and exits with the agent's code.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import click

from persist.agent.launcher import DaemonStartError, ensure_daemon
from persist.daemon.log.restore import write_context

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)


def fail(code: int, message: str) -> None:
    click.echo(f"persist-launch: {message}", err=True)
    sys.exit(code)


def restored_context(log, max_tokens: int) -> Path | None:
    """Let the user pick a checkpoint; write its newest turns that fit ``max_tokens`` for the agent to read."""
    from persist.cli.menu import pick_checkpoint

    manifest = pick_checkpoint(log, "Start from which checkpoint? (q: start fresh)")
    if manifest is None:
        return None
    path, left_out = write_context(log, manifest, max_tokens or None)
    note = f" ({left_out} earlier turn(s) left out to fit {max_tokens} tokens; --max-tokens 0 for all)" if left_out else ""
    click.echo(f"persist-launch: context of {manifest['id']} in {path}{note}", err=True)
    return path


@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True})
@click.option("--menu", "menu_", is_flag=True, help="On a terminal, pick a checkpoint to hand to the agent first.")
@click.option("--log-dir", metavar="DIR", help="The log dir (env PERSIST_LOG_DIR; default ./conversation_logs).")
@click.option("--name", metavar="NAME", help="The agent's name in presence records (default: the command's name).")
@click.option("--connect", multiple=True, metavar="ENDPOINT", help="Broker endpoint, if the daemon must be started.")
@click.option("--config", "config_path", metavar="FILE", help="TOML config file.")
@click.option("--max-tokens", type=click.IntRange(min=0), default=8000, show_default=True,
              help="With --menu: the newest turns that fit this budget go to the agent (0: all).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def main(menu_, log_dir, name, connect, config_path, max_tokens, command) -> None:
    """Start persist-daemon if needed, run COMMAND as a recorded agent, exit with its code."""
    program = shutil.which(command[0])
    if program is None:
        fail(127, f"{command[0]}: command not found")
    try:
        handle = ensure_daemon(log_dir, list(connect) or None, config_path, name or Path(command[0]).name)
    except DaemonStartError as exc:
        fail(1, str(exc))
    env = dict(os.environ, PERSIST_LOG_DIR=str(handle.log_dir))
    try:
        if menu_ and sys.stdin.isatty() and sys.stdout.isatty():
            context = restored_context(handle.log, max_tokens)
            if context is not None:
                env["PERSIST_RESTORED_CONTEXT"] = str(context)
        child = subprocess.Popen([program, *command[1:]], env=env)
        for sig in FORWARDED:
            signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
        code = child.wait()
    finally:
        handle.release()
    sys.exit(128 - code if code < 0 else code)
