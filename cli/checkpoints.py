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
    progress,
    require_log,
    size,
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
    if lock.is_locked(log):
        try:
            reply = ask(log.control_endpoint, f"checkpoint {label or ''}".strip(), timeout_ms=30000)
        except ControlError as exc:
            raise Failure(f"a daemon holds {log.root} but did not answer: {exc}") from None
        if not reply.get("ok"):
            raise Failure(f"the daemon could not write a checkpoint: {reply.get('error')}")
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
    """What was recorded between checkpoints A and B."""
    result = cps.diff(require_log(log), find(log, a), find(log, b))
    if as_json:
        return json_lines([result])
    click.echo(f"{result['from']} → {result['to']}: {result['records']} records (seq {result['from_seq']}..{result['to_seq']})")
    for name in ("topic", "sender"):
        if result[name + "s"]:
            counts(name, result[name + "s"])


@group.command()
@click.option("--keep", type=int, help="Automatic checkpoints to keep (default: checkpoint.keep).")
@with_log_dir
def prune(cfg, log, keep) -> None:
    """Delete automatic checkpoints beyond the newest KEEP; labelled ones stay."""
    gone = cps.prune(require_log(log), cfg.checkpoint.keep if keep is None else keep)
    click.echo(f"pruned {len(gone)} checkpoint(s)" + (f": {', '.join(gone)}" if gone else ""))


@click.command("restore")
@click.argument("ident", metavar="ID")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Write a complete log dir for ID here; change nothing else.")
@click.option("--print", "print_", is_flag=True, help="Print the conversation up to ID instead.")
@click.option("--format", "fmt", type=click.Choice(render.FORMATS), default="markdown", show_default=True)
@click.option("--stop-daemon", is_flag=True, help="Stop a running daemon first (in-place restore only).")
@with_log_dir
def restore_cmd(cfg, log, ident, out, print_, fmt, stop_daemon) -> None:
    """Make checkpoint ID the active session; what came after moves to archive/ (nothing is deleted)."""
    manifest = find(require_log(log), ident)
    try:
        if print_:
            for chunk in render.lines(select.conversation_upto(log, manifest["last_seq"]), fmt):
                click.echo(chunk)
            return
        if out is not None:
            with progress(restore.copy_tree_size(manifest), f"writing {out}") as bar:
                restore.restore_to(log, manifest, out, bar.update)
            click.echo(f"restored checkpoint {manifest['id']} (seq 1..{manifest['last_seq']}) into {out}")
            return
        result = restore.restore_held(log, manifest, stop_daemon)
    except restore.RestoreError as exc:
        raise UsageError(str(exc)) from None
    except (lock.AlreadyRunning, lock.StillRunning) as exc:
        raise Failure(str(exc)) from None
    click.echo(f"restored checkpoint {manifest['id']}: the log ends at seq {manifest['last_seq']}; "
               f"{result['set_aside_records']} later record(s) set aside in {log.root / result['archived_to']}")
