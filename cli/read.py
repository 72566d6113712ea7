"""``persist-cli recent``, ``export``, ``verify`` and ``recover``: reading and checking the log."""

from __future__ import annotations

import sys

import click

from persist.cli.common import (
    Failure,
    UsageError,
    json_lines,
    json_option,
    log_progress,
    one_line,
    parse_when,
    require_log,
    style,
    with_log,
)
from persist.daemon.log import reader, render, select
from persist.daemon.log.select import matches

topic_option = click.option("--topic", help="Only topics starting with this prefix.")
sender_option = click.option("--sender", help="Only records whose meta.sender is this.")
thread_option = click.option("--thread", help="Only records of this thread (meta.thread_id).")
kind_option = click.option("--kind", help="Only records of this kind (request, response, tool_call, error…).")
since_option = click.option("--since", help="From this time: local (2026-11-24 19:22, 19:22), zoned ISO, 2h, today.")
until_option = click.option("--until", help="Up to this time (same forms as --since).")
system_option = click.option("--system/--no-system", default=True, help="Include the daemon's own $persist/ records.")


@click.command()
@click.option("-n", "count", type=click.IntRange(0, sys.maxsize), default=20, show_default=True, help="How many records.")
@topic_option
@sender_option
@thread_option
@kind_option
@since_option
@until_option
@click.option("--reverse", "-r", is_flag=True, help="Newest first.")
@click.option("--follow", "-f", "follow_", is_flag=True, help="Keep printing records as they are written (Ctrl-C stops).")
@system_option
@with_log
@json_option
def recent(log, count, topic, sender, thread, kind, since, until, reverse, follow_, system, as_json) -> None:
    """The last N records, read from the tail (instant on a huge log)."""
    if reverse and follow_:
        raise UsageError("--reverse and --follow do not go together: new records come last")
    filters = dict(topic=topic, sender=sender, thread=thread, kind=kind, system=system,
                   since=parse_when(since, "--since"), until=parse_when(until, "--until"))
    emit = (lambda e: json_lines([e.line])) if as_json else (lambda e: click.echo(one_line(e.rec)))
    try:
        for e in select.recent(require_log(log), count, follow_, reverse, **filters):
            emit(e)
    except KeyboardInterrupt:
        pass


@click.command()
@click.option("--format", "fmt", type=click.Choice(render.EXPORT_FORMATS), default="jsonl", show_default=True)
@since_option
@until_option
@topic_option
@sender_option
@thread_option
@kind_option
@system_option
@click.option("--json", "as_json", is_flag=True, help="Same as --format jsonl.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of standard output.")
@click.option("--mode", default="600", show_default=True, metavar="OCTAL",
              help="Permissions of the -o FILE (it holds the conversation: private by default).")
@with_log
def export(log, fmt, since, until, topic, sender, thread, kind, system, as_json, output, mode) -> None:
    """Export records as JSON Lines (the on-disk schema), CSV or markdown."""
    fmt = "jsonl" if as_json else fmt
    require_log(log)
    since, until = parse_when(since, "--since"), parse_when(until, "--until")
    try:
        perms = int(mode, 8)
    except ValueError:
        perms = -1
    if not 0 <= perms <= 0o777:
        raise UsageError(f"--mode {mode!r} is not an octal file mode such as 600 or 644")
    entries = (e for e in reader.records(log)
               if matches(e.rec, topic, sender, since, until, system=system, thread=thread, kind=kind))
    out = _create_private(output, perms) if output else sys.stdout
    try:
        n = render.export(entries, fmt, out)
    finally:
        if output:
            out.close()
    if output:
        click.echo(f"exported {n} records to {output}", err=True)


def _create_private(output: str, perms: int):
    """``output`` created anew (never an existing file) with exactly ``perms``."""
    from persist.daemon.log.fsutil import create_new

    try:
        fd = create_new(output, perms)
    except FileExistsError:
        raise UsageError(f"{output} already exists; choose another -o FILE or remove it first") from None
    except OSError as exc:
        raise UsageError(f"cannot create {output}: {exc.strerror}; choose another -o FILE") from None
    return open(fd, "w", encoding="utf-8", newline="")


@click.command("verify")
@with_log
@json_option
def verify_cmd(log, as_json) -> None:
    """Check every line is a whole record, seq is continuous, and every checkpoint holds (exit 1 if not)."""
    from persist.daemon.log.verify import verify

    require_log(log)
    tally: dict[str, int] = {}
    with log_progress(log, "verifying") as bar:
        problems, records = verify(log, bar.update, tally=tally)
    redacted = tally.get("redacted", 0)
    if as_json:
        json_lines([{"ok": not problems, "records": records, "redacted": redacted, "problems": problems}])
        if problems:
            sys.exit(1)
        return
    for p in problems:
        click.echo(style("✗ ", fg="red") + p)
    if problems:
        raise Failure(f"{len(problems)} problem(s) in {log.root}")
    click.echo(style("✓ ", fg="green") + f"{records} records, seq continuous, every checkpoint holds")
    if redacted:
        click.echo(f"  {redacted} of them redacted: checked against the frames as recorded, not the bytes published")


@click.command()
@with_log
@json_option
def recover(log, as_json) -> None:
    """Repair what a crash left and bring the search index up to date (what the daemon does at start)."""
    from persist.daemon import index
    from persist.daemon.log import lock, restore  # here, not at the top: recent starts without them
    from persist.daemon.log.store import repair_tail

    require_log(log)
    if lock.is_locked(log):
        raise Failure(f"a daemon (pid {lock.holder_pid(log)}) is recording into {log.root}; "
                      "it repaired the log when it started")
    from persist.daemon.redact import apply as redact_apply

    with lock.held(log):
        finished = restore.finish_interrupted(log)
        redacted = redact_apply.finish_interrupted(log)
        repaired = repair_tail(log.active, log.recovery)
        indexed = index.update(log)
    if as_json:
        return json_lines([{
            "finished_restore": finished,
            "finished_redact": redacted,
            "repaired": None if repaired is None else {"file": str(log.active), "torn_bytes": repaired.bytes,
                                                       "quarantined": str(repaired.quarantined)},
            "indexed": indexed,
        }])
    if finished is not None:
        click.echo(f"finished the interrupted restore of checkpoint {finished['checkpoint']} "
                   f"(set aside in {log.root / finished['archived_to']})")
    if redacted is not None:
        click.echo(f"finished the interrupted redact apply: {redacted['records']} record(s) in "
                   f"{', '.join(redacted['segments'])} (recorded as $persist/redact seq {redacted['redact_record_seq']})")
    if repaired is None:
        click.echo(f"nothing to repair in {log.active}")
    else:
        click.echo(f"repaired {log.active}: {repaired.bytes} torn byte(s) moved to {repaired.quarantined}")
    click.echo(f"search index: {indexed} record(s) added")
