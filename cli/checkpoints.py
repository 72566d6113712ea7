"""``persist-cli checkpoints list|show|create|diff|prune`` and ``persist-cli restore``."""

from __future__ import annotations

from pathlib import Path

import click

from persist.cli.common import (
    Failure,
    UsageError,
    ago,
    counts,
    fields,
    json_lines,
    json_option,
    listing,
    one_line,
    progress,
    require_log,
    size,
    style,
    table,
    with_log_dir,
)
from persist.daemon.control import ControlError, ask
from persist.daemon.log import checkpoints as cps
from persist.daemon.log import lock, render, restore, select


def find(log, ident: str) -> dict:
    try:
        return cps.find(log, ident)
    except cps.CheckpointError as exc:
        raise UsageError(str(exc)) from None


@click.group("checkpoints")
def group() -> None:
    """List, inspect, create, compare and prune checkpoints."""


@group.command("list")
@with_log_dir
@json_option
def list_(cfg, log, as_json) -> None:
    """Every checkpoint, oldest first."""
    listing(as_json, cps.listing(require_log(log)), ["id", "label", "reason", "created", "last seq", "records", "log size"],
            lambda m: [m["id"], m.get("label") or "", m["reason"], ago(m["created_at"]), m["last_seq"],
                       m["message_count"], size(sum(s["bytes"] for s in m["segments"]))],
            right=(4, 5, 6), empty=f"no checkpoints yet in {log.checkpoints}")


@group.command()
@click.argument("ident", metavar="ID")
@with_log_dir
@json_option
def show(cfg, log, ident, as_json) -> None:
    """One checkpoint's manifest (ID, a unique prefix, a label, or latest)."""
    m = find(require_log(log), ident)
    if as_json:
        return json_lines([m])
    fields([(key + ":", m.get(key)) for key in ("id", "label", "reason", "created_at", "last_seq", "message_count",
                                                 "prev", "chain")], 15)
    table(["segment", "bytes", "records", "sha256"],
          [[s["name"], s["bytes"], s.get("records", ""), s["sha256"]] for s in m["segments"]], right=(1, 2))


@group.command()
@click.option("--label", "-l", help="A name to find it by; labelled checkpoints are never pruned.")
@with_log_dir
@json_option
def create(cfg, log, label, as_json) -> None:
    """Write a checkpoint now (through the running daemon, or directly when none runs)."""
    require_log(log)
    cps.check_label(log, label)  # a label names one checkpoint: refused as `git tag` refuses a tag that exists
    if lock.is_locked(log):
        try:
            reply = ask(log.control_endpoint, f"checkpoint {label or ''}".strip(), timeout_ms=30000)
        except ControlError as exc:
            raise Failure(f"a daemon holds {log.root} but did not answer: {exc}") from None
        if not reply.get("ok"):
            error = str(reply.get("error"))
            if error.startswith("CheckpointError("):  # the label was taken meanwhile
                raise UsageError(error.removeprefix("CheckpointError(").rstrip(")").strip("'\""))
            raise Failure(f"the daemon could not write a checkpoint: {error}")
        manifest = cps.find(log, reply["checkpoint"]["id"])
    else:
        manifest = cps.write_now(log, label)
    if as_json:
        return json_lines([manifest])
    click.echo(f"checkpoint {manifest['id']} at seq {manifest['last_seq']}" + (f" ({label})" if label else ""))


@group.command()
@click.argument("a")
@click.argument("b")
@with_log_dir
@json_option
def diff(cfg, log, a, b, as_json) -> None:
    """The records between checkpoints A and B (with --json: as written), then counts by topic and sender."""
    first, second = find(require_log(log), a), find(log, b)
    if first["last_seq"] > second["last_seq"]:
        click.echo(f"persist-cli: warning: {first['id']} (seq {first['last_seq']}) is newer than {second['id']} "
                   f"(seq {second['last_seq']}); showing what came between them, oldest first", err=True)
    if as_json:
        return json_lines(e.line for e in cps.between(log, first, second))
    result = cps.diff(log, first, second)
    click.echo(f"{result['from']} → {result['to']}: {result['records']} records (seq {result['from_seq']}..{result['to_seq']})")
    for e in cps.between(log, first, second):
        click.echo(one_line(e.rec))
    for name in ("topic", "sender"):
        if result[name + "s"]:
            click.echo()
            counts(name, result[name + "s"])


@group.command()
@click.option("--keep", type=click.IntRange(min=0), help="Automatic checkpoints to keep (default: checkpoint.keep).")
@click.option("--dry-run", "-n", is_flag=True, help="Only say which checkpoints would be deleted.")
@with_log_dir
def prune(cfg, log, keep, dry_run) -> None:
    """Delete automatic checkpoints beyond the newest KEEP; labelled ones stay."""
    gone = cps.prune(require_log(log), cfg.checkpoint.keep if keep is None else keep, dry_run)
    verb = "would prune" if dry_run else "pruned"
    click.echo(f"{verb} {len(gone)} checkpoint(s)" + (f": {', '.join(gone)}" if gone else ""))


PROMPT_TOKENS = 8000  # what `restore --print --format prompt` hands an agent unless told otherwise


@click.command("restore")
@click.argument("ident", metavar="ID")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Write a complete log dir for ID here; change nothing else.")
@click.option("--print", "print_", is_flag=True, help="Print the conversation up to ID instead.")
@click.option("--format", "fmt", type=click.Choice(render.FORMATS), default="markdown", show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=0),
              help=f"With --print: keep the newest turns that fit (default {PROMPT_TOKENS} for --format prompt; 0: all).")
@click.option("--stop-daemon", is_flag=True, help="Stop a running daemon first, start it again after (in-place restore only).")
@with_log_dir
def restore_cmd(cfg, log, ident, out, print_, fmt, max_tokens, stop_daemon) -> None:
    """Make checkpoint ID the active session; what came after moves to archive/ (nothing is deleted)."""
    manifest = find(require_log(log), ident)
    try:
        if print_:
            return _print(log, manifest, fmt, PROMPT_TOKENS if max_tokens is None and fmt == "prompt" else max_tokens)
        if out is not None:
            with progress(restore.copy_tree_size(manifest), f"writing {out}") as bar:
                restore.restore_to(log, manifest, out, bar.update)
            click.echo(f"restored checkpoint {manifest['id']} (seq 1..{manifest['last_seq']}) into {out}")
            return
        result = restore.restore_held(log, manifest, stop_daemon)
    except restore.RestoreError as exc:  # its notes say whether a daemon it stopped records again
        raise UsageError("; ".join([str(exc), *getattr(exc, "__notes__", [])])) from None
    except (lock.AlreadyRunning, lock.StillRunning) as exc:
        raise Failure(str(exc)) from None
    if "stopped_pid" in result:
        click.echo(f"recording stopped: the daemon (pid {result['stopped_pid']}) was stopped for the restore")
    click.echo(f"restored checkpoint {manifest['id']}: the log ends at seq {manifest['last_seq']}; "
               f"{result['set_aside_records']} later record(s) set aside in {log.root / result['archived_to']}")
    if "restarted_pid" in result:
        click.echo(f"recording again: the daemon was started again as it was started (pid {result['restarted_pid']})")
    elif "not_restarted" in result:
        raise Failure(style(f"RECORDING IS STOPPED: the daemon was not started again: {result['not_restarted']}",
                            fg="red", bold=True))


def _print(log, manifest: dict, fmt: str, max_tokens: int | None) -> None:
    entries, left_out = select.newest_fitting(select.conversation_upto(log, manifest["last_seq"]), max_tokens)
    if left_out:
        click.echo(f"persist-cli: {left_out} earlier turn(s) left out to fit {max_tokens} tokens "
                   "(--max-tokens N for more, 0 for all)", err=True)
    for chunk in render.lines(entries, fmt):
        click.echo(chunk)
