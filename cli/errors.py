"""persist-cli's errors: a usage error (exit 2) and a failure (exit 1), each one line, or one JSON object on
stderr with ``--json``. Imports nothing but click and orjson, so ``persist-cli --help`` stays quick."""

from __future__ import annotations

import sys

import click
import orjson


class UsageError(click.ClickException):
    """Bad input: one line saying what to do, exit 2.

    With ``--json`` (``json_errors``) the line is a JSON object on stderr instead,
    ``{"error": MESSAGE, "exit_code": N}``: stdout keeps only results, so a script
    piping it into ``jq`` never parses an error as a record.
    """

    exit_code = 2
    as_json = False

    def show(self, file=None) -> None:
        if self.as_json:
            sys.stderr.write(orjson.dumps({"error": self.message, "exit_code": self.exit_code}).decode() + "\n")
            sys.stderr.flush()
        else:
            click.echo(f"persist-cli: {self.message}", err=True)


class Failure(UsageError):
    """The command ran and found something wrong: exit 1."""

    exit_code = 1


def json_errors(ctx: click.Context, exc: UsageError) -> UsageError:
    """``exc``, shown as a JSON object if ``--json`` was given anywhere on the command line."""
    exc.as_json = bool(ctx.meta.get("persist.json"))
    return exc
