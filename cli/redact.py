"""``persist-cli redact``: what the rules would catch (``--check``), the rules (``--list``), and ``redact apply``:
secrets replaced in what was already recorded (SPEC section 14; ``persist.daemon.redact``)."""

from __future__ import annotations

import sys

import click

from persist.cli.common import Failure, UsageError, json_lines, json_option, parse_when, require_log, with_log_dir
from persist.daemon.log import lock


def _redactor(cfg, log, rules_file: str | None, enable: tuple[str, ...]):
    """The rules of ``[redact]`` (whether or not it is enabled), plus ``--rules-file`` and ``--enable``; the log
    dir's fingerprint key if it has one (so fingerprints match ``meta.redacted``)."""
    from persist.daemon.redact import KeyFileError, Redactor, fingerprint_key, load_rules
    from persist.daemon.redact.rules import OPT_IN, RuleError, from_gitleaks

    for ident in enable:
        if ident not in OPT_IN:
            raise UsageError(f"--enable {ident!r}: no opt-in rule by that name (known: {', '.join(OPT_IN)})")
    cfg.redact.enable_rules = list(dict.fromkeys([*cfg.redact.enable_rules, *enable]))
    try:
        rules, allow = load_rules(cfg.redact)
        if rules_file:
            from pathlib import Path

            more, more_allow = from_gitleaks(Path(rules_file).expanduser(), "--rules-file")
            rules += more
            allow = allow or more_allow
    except RuleError as exc:
        raise UsageError(f"{exc.key}: {exc.problem}") from None
    try:
        key = fingerprint_key(log.root, create=False) if log.root.is_dir() else None
    except KeyFileError as exc:
        raise Failure(str(exc)) from None
    return Redactor(rules, allow, key)


rules_options = [
    click.option("--rules-file", metavar="FILE", help="A gitleaks rule file, besides [redact] rules_file."),
    click.option("--enable", multiple=True, metavar="RULE", help="Switch an opt-in rule on (high-entropy, "
                                                                 "secret-assignment); repeatable."),
]


def with_rules(func):
    for option in reversed(rules_options):
        func = option(func)
    return func


@click.group(invoke_without_command=True)
@click.option("--check", "check", metavar="FILE", help="Show what the rules would catch in FILE (- for stdin); "
                                                       "exit 1 if anything.")
@click.option("--list", "list_rules", is_flag=True, help="List the rules: id, on or off, what it finds.")
@with_rules
@with_log_dir
@json_option
@click.pass_context
def group(ctx, cfg, log, check, list_rules, rules_file, enable, as_json) -> None:
    """Secrets in messages: try the rules on a file, list them, or redact what was already recorded (apply)."""
    if ctx.invoked_subcommand is not None:
        return
    if list_rules:
        return _list(cfg, as_json)
    if check is None:
        click.echo(ctx.get_help())
        return
    redactor = _redactor(cfg, log, rules_file, enable)
    try:
        data = sys.stdin.buffer.read() if check == "-" else open(check, "rb").read()
    except OSError as exc:
        raise UsageError(f"--check {check}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # bytes as they are: every rule is ASCII
    found = []
    for start, end, rule in redactor.find(text):
        line = text.count("\n", 0, start) + 1
        column = start - (text.rfind("\n", 0, start) + 1) + 1
        secret = text[start:end]
        found.append({"rule": rule, "line": line, "column": column, "length": len(secret),
                      "preview": _preview(rule, secret), "fp": redactor.fingerprint(secret)})
    if as_json:
        json_lines(found)
    else:
        for f in found:
            fp = f", fp {f['fp']}" if f["fp"] else ""
            click.echo(f"{check}:{f['line']}:{f['column']}  {f['rule']}  {f['preview']} ({f['length']} chars{fp})")
        click.echo(f"{len(found)} secret(s) the rules would replace; {len(redactor.rules)} rules checked", err=True)
    if found:
        ctx.exit(1)


def _preview(rule_id: str, secret: str) -> str:
    """The public prefix a built-in token rule's secret starts with (``ghp_…``, ``sk-ant-…``); else ``…``: no
    character of a password, a signature or a user rule's match is shown."""
    from persist.daemon.redact.rules import SPECS

    lower = secret.lower()
    for spec in SPECS:
        if spec.id == rule_id and spec.gate and not spec.opt_in:
            for k in sorted(spec.keywords, key=len, reverse=True):
                if k[-1] in "-_." and lower.startswith(k):
                    return secret[: len(k)] + "…"
    return "…"


def _list(cfg, as_json: bool) -> None:
    from persist.daemon.redact.rules import SPECS

    rows = []
    for spec in SPECS:
        on = spec.id not in cfg.redact.disable_rules and (not spec.opt_in or spec.id in cfg.redact.enable_rules)
        rows.append({"id": spec.id, "on": on, "opt_in": spec.opt_in, "keywords": list(spec.keywords),
                     "what": spec.what})
    for table in cfg.redact.rules:
        rows.append({"id": table.get("id"), "on": True, "opt_in": False, "keywords": table.get("keywords", []),
                     "what": "[[redact.rules]] in the config"})
    if as_json:
        return json_lines(rows)
    from persist.cli.common import table

    state = "on" if cfg.redact.enabled else "OFF (rules shown as [redact] enabled = true would apply them)"
    click.echo(f"redaction while recording: {state}")
    table(["rule", "on", "finds"], [[r["id"], "yes" if r["on"] else "no", r["what"]] for r in rows])


@group.command("apply")
@click.option("--since", required=True, help="Records received from this time: 2h, 3d, 2026-11-24 19:22, today.")
@click.option("--until", help="Up to this time (same forms).")
@click.option("--dry-run", is_flag=True, help="Say what would be redacted; change nothing.")
@click.option("--stop-daemon", is_flag=True, help="Stop the daemon recording this log dir, and start it again after.")
@with_rules
@with_log_dir
@json_option
def apply_cmd(cfg, log, since, until, dry_run, stop_daemon, rules_file, enable, as_json) -> None:
    """Replace the secrets in records already written, as a new generation of the closed segments.

    Crash-safe (redact.intent), recorded ($persist/redact), the checkpoint chain re-rooted (verify passes), the old
    bytes overwritten before they are unlinked, the search index rebuilt. Needs the log dir's lock: refused while a
    daemon records, unless --stop-daemon."""
    from persist.daemon.redact import apply

    require_log(log)
    redactor = _redactor(cfg, log, rules_file, enable)
    since_iso, until_iso = parse_when(since, "--since"), parse_when(until, "--until")
    try:
        if dry_run:
            result = apply.plan(log, redactor, since_iso, until_iso, dry_run=True)
        else:
            result = apply.redact_held(log, redactor, since_iso, until_iso, stop_daemon)
    except lock.AlreadyRunning as exc:
        raise Failure(str(exc)) from None
    except apply.RedactApplyError as exc:
        raise Failure(str(exc)) from None
    if as_json:
        return json_lines([result or {"records": 0}])
    if not result or not result.get("records"):
        click.echo(f"nothing to redact in records received {since}{' .. ' + until if until else ''}")
    else:
        verb = "would redact" if dry_run else "redacted"
        secrets = ", ".join(f"{n} {rule}" for rule, n in sorted(result["secrets"].items()))
        click.echo(f"{verb} {result['records']} record(s) in {', '.join(result['segments'])}: {secrets}")
        if not dry_run:
            click.echo(f"recorded as $persist/redact seq {result['redact_record_seq']}; "
                       f"{len(result['checkpoints_rerooted'])} checkpoint(s) re-rooted; old bytes overwritten; "
                       "search index rebuilt")
    if result and "not_restarted" in result:
        raise Failure(f"RECORDING IS STOPPED: {result['not_restarted']}")
    if result and "restarted_pid" in result:
        click.echo(f"the daemon records again as pid {result['restarted_pid']}", err=True)
