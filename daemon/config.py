"""Configuration (SPEC section 10): TOML file, then ``PERSIST_*`` variables, then flags.

Owns the list of every key, its type, default and check. The file is the first
found of ``--config``, ``$PERSIST_CONFIG``, ``./persist.toml``,
``~/.config/persist/config.toml``, ``/etc/persist/config.toml``. Environment
variables are ``PERSIST_<KEY>`` for the ``[daemon]`` section and
``PERSIST_<SECTION>_<KEY>`` for the others (lists comma-separated).
An unknown key or a bad value raises ``ConfigError`` naming the key.
"""

from __future__ import annotations

import os
import re
import threading
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEARCH_PATH = (
    Path("persist.toml"),
    Path("~/.config/persist/config.toml"),
    Path("/etc/persist/config.toml"),
)
ENDPOINT = re.compile(r"^(tcp://(\*|\[[0-9a-fA-F:.]+\]|[\w.-]+):(\d{1,5}|\*)|ipc://.+|inproc://.+)$")
CHOICES = {
    "daemon.fsync": ("always", "batch", "off"),
    "daemon.log_format": ("auto", "console", "json"),
    "daemon.log_level": ("debug", "info", "warning", "error"),
}
TAG_KEYS = {"name", "keywords", "regex"}
INT_MAX = 2**31 - 1  # ZeroMQ options and millisecond timers are C ints
FLOAT_MAX = 366 * 86400  # seconds: a year is the longest interval that means anything
MAXIMA = {"storage.rotate_bytes": 2**62, "storage.backlog_bytes": 2**62, "daemon.stop_drain_s": 3.5,
          "archive.timeout_s": 3600}


class ConfigError(ValueError):
    """A config key is unknown or has a bad value."""

    def __init__(self, key: str, problem: str, source: str | None = None) -> None:
        where = f" (in {source})" if source else ""
        super().__init__(f"config key '{key}'{where}: {problem}")
        self.key = key


class _Made:
    """Made a dataclass when first built, not at import: ``dataclass`` compiles each class's methods (≈ 12 ms for
    the ten sections), which a command that needs only the log dir (``log_dir``) never pays. The classes are
    dataclasses from their first instance on (``made``), exactly as if decorated where they are written."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any):
        made()
        return super().__new__(cls)


class DaemonSection(_Made):
    connect: list[str] = field(default_factory=lambda: ["tcp://127.0.0.1:5555"])
    bind: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=lambda: [""])
    log_dir: str = "./conversation_logs"
    fsync: str = "batch"
    commit_interval_ms: int = 50
    commit_records: int = 1000
    receive_hwm: int = 1_000_000
    log_format: str = "auto"
    log_level: str = "info"
    stop_drain_s: float = 2.5  # a stop records the backlog this long, then counts the rest into a gap


class StorageSection(_Made):
    rotate_bytes: int = 256 * 1024 * 1024
    rotate_age_s: int = 24 * 3600
    backlog_bytes: int = 64 * 1024 * 1024
    retention: str = ""  # keep everything; "30d" or "20GiB" deletes whole closed segments beyond it


class CheckpointSection(_Made):
    interval: float = 300.0
    keep: int = 288


class IndexSection(_Made):
    enabled: bool = True


class ArchiveSection(_Made):
    url: str = ""  # postgresql://...: ship every record to this archive (SPEC section 12); "" ships nothing
    node: str = ""  # this recorder's name in the archive; "" is the host name
    retention_waits: bool = True  # storage.retention never deletes a segment the archive has not confirmed
    timeout_s: float = 30.0  # a database call with no answer this long (a hung server, a silent network cut) is cut

    @property
    def node_name(self) -> str:
        import socket
        return self.node or socket.gethostname()


class RedactSection(_Made):
    enabled: bool = False  # secrets replaced before a line is written (SPEC section 14)
    rules_file: str = ""  # a gitleaks rule file (TOML), read as it is
    disable_rules: list[str] = field(default_factory=list)  # built-in rule ids switched off
    enable_rules: list[str] = field(default_factory=list)  # opt-in built-ins: high-entropy, secret-assignment
    rules: list[dict] = field(default_factory=list)  # [[redact.rules]]: id, regex, keywords, secret_group, entropy


class CurveSection(_Made):
    enabled: bool = False  # ZeroMQ CURVE authentication and encryption on the bus (SPEC section 14)
    keys_dir: str = "~/.config/persist/curve"  # persist-cli keys init --dir: key pairs and clients/ (the allow-list)
    allow_any: bool = False  # any client with a valid handshake, not only the keys in keys_dir/clients/

    @property
    def keys_path(self) -> Path:
        return Path(self.keys_dir).expanduser()


class LauncherSection(_Made):
    grace_s: float = 10.0


class EnrichSection(_Made):
    sender_fields: list[str] = field(default_factory=lambda: ["sender", "from", "agent", "source"])
    recipient_fields: list[str] = field(default_factory=lambda: ["recipient", "to", "target"])
    thread_fields: list[str] = field(
        default_factory=lambda: ["thread_id", "continuation_id", "conversation_id", "session_id"]
    )
    parent_fields: list[str] = field(default_factory=lambda: ["parent_id", "in_reply_to", "reply_to"])
    kind_fields: list[str] = field(default_factory=lambda: ["kind", "type", "chain_type"])
    tier_fields: list[str] = field(default_factory=lambda: ["tier", "ace_tier"])
    sender_seq_field: str = "sender_seq"
    tags: list[dict] = field(default_factory=list)
    disable: list[str] = field(default_factory=list)
    profiles: list[dict] = field(default_factory=list)  # [[enrich.profiles]]: envelopes (SPEC section 15)


class Config(_Made):
    daemon: DaemonSection = field(default_factory=DaemonSection)
    storage: StorageSection = field(default_factory=StorageSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    enrich: EnrichSection = field(default_factory=EnrichSection)
    launcher: LauncherSection = field(default_factory=LauncherSection)
    index: IndexSection = field(default_factory=IndexSection)
    archive: ArchiveSection = field(default_factory=ArchiveSection)
    redact: RedactSection = field(default_factory=RedactSection)
    curve: CurveSection = field(default_factory=CurveSection)
    source: str | None = None

    @property
    def log_dir(self) -> Path:
        return Path(self.daemon.log_dir).expanduser()


SECTIONS = {name: globals()[hint] for name, hint in Config.__annotations__.items() if name != "source"}
_made = False
_making = threading.Lock()


def made() -> None:
    """Make the sections and ``Config`` dataclasses (once; whichever thread first builds one)."""
    global _made
    with _making:
        if not _made:
            for cls in (*SECTIONS.values(), Config):
                dataclass(cls)
            _made = True


def _check(key: str, hint: Any, value: Any, source: str | None) -> Any:
    """``value`` converted to the key's type, or ConfigError."""
    origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(value, str) and source and source.startswith("$"):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list, got {value!r}", source)
        (item,) = typing.get_args(hint)
        return [_check(key, item, v, source) for v in value]
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table, got {value!r}", source)
        return value
    if hint in (int, float) and isinstance(value, str) and source and source.startswith("$"):
        try:
            value = hint(value)
        except ValueError:
            raise ConfigError(key, f"must be a number, got {value!r}", source) from None
    if hint is bool:
        if isinstance(value, str) and source and source.startswith("$"):
            value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(value.lower(), value)
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}", source)
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, hint) or isinstance(value, bool):
        raise ConfigError(key, f"must be {hint.__name__}, got {value!r}", source)
    if hint is str and not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:  # bytes from the environment or a flag that are not UTF-8
            raise ConfigError(key, f"must be UTF-8 text, got {value!r}", source) from None
    if hint in (int, float):
        top = MAXIMA.get(key, INT_MAX if hint is int else FLOAT_MAX)
        if not 0 < value <= top:  # nan fails every comparison
            raise ConfigError(key, f"must be greater than 0 and at most {top}, got {value!r}", source)
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(key, f"must be one of {', '.join(CHOICES[key])}, got {value!r}", source)
    if key == "storage.retention":
        from persist.daemon.log import retention

        try:
            retention.parse(value)
        except ValueError as exc:
            raise ConfigError(key, f"{exc}; leave it empty to keep everything", source) from None
    if key in ("daemon.connect", "daemon.bind"):
        m = ENDPOINT.match(value)
        port = m.group(3) if m else None
        if not m or (port not in (None, "*") and not 0 < int(port) < 65536):
            raise ConfigError(key, f"{value!r} is not a ZeroMQ endpoint such as tcp://127.0.0.1:5555", source)
    if key == "archive.url" and value and not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError(key, "must be a postgresql://… URL, or empty to ship nothing", source)  # never echoed
    return value


def _check_tags(tags: list[dict], source: str | None) -> None:
    for i, tag in enumerate(tags):
        key = f"enrich.tags[{i}]"
        unknown = set(tag) - TAG_KEYS
        if unknown:
            raise ConfigError(f"{key}.{sorted(unknown)[0]}", "unknown key (use name, keywords, regex)", source)
        if not isinstance(tag.get("name"), str) or not tag["name"]:
            raise ConfigError(f"{key}.name", "every tag rule needs a name", source)
        kw = tag.get("keywords", [])
        if not isinstance(kw, list) or not all(isinstance(k, str) for k in kw):
            raise ConfigError(f"{key}.keywords", "must be a list of strings", source)
        try:
            re.compile(tag.get("regex", ""))
        except (re.error, TypeError) as exc:
            raise ConfigError(f"{key}.regex", f"does not compile: {exc}", source) from None


def _check_profiles(profiles: list[dict], source: str | None) -> None:
    from persist.daemon.log import envelope

    for i, table in enumerate(profiles):
        try:
            envelope.from_config(table)
        except ValueError as exc:
            key, _, problem = str(exc).partition(": ")
            raise ConfigError(f"enrich.profiles[{i}].{key}", problem, source) from None


def _check_redact(cfg: RedactSection, source: str | None) -> None:
    """Rule ids and ``[[redact.rules]]`` (cheap); the rule file is read where redaction is used
    (``persist.daemon.redact.load_rules``: the daemon's start and ``--check-config``, ``persist-cli redact``)."""
    if not (cfg.disable_rules or cfg.enable_rules or cfg.rules):
        return
    from persist.daemon.redact import user_rules
    from persist.daemon.redact.rules import BUILTIN_IDS, OPT_IN, RuleError

    for key, ids, known in (("redact.disable_rules", cfg.disable_rules, BUILTIN_IDS),
                            ("redact.enable_rules", cfg.enable_rules, OPT_IN)):
        for ident in ids:
            if ident not in known:
                raise ConfigError(key, f"no built-in rule {ident!r} (known: {', '.join(known)})", source)
    try:
        user_rules(cfg.rules)
    except RuleError as exc:
        raise ConfigError(exc.key, exc.problem, source) from None


def apply(cfg: Config, values: dict[str, dict[str, Any]], source: str | None) -> set[str]:
    """Set ``{section: {key: value}}`` on ``cfg``, checking every key; return the keys set."""
    done = set()
    for section, table in values.items():
        if section not in SECTIONS:
            raise ConfigError(section, f"unknown section (known: {', '.join(SECTIONS)})", source)
        if not isinstance(table, dict):
            raise ConfigError(section, "must be a table", source)
        target = getattr(cfg, section)
        hints = typing.get_type_hints(type(target))
        for key, value in table.items():
            if key not in hints:
                raise ConfigError(f"{section}.{key}", f"unknown key (known: {', '.join(hints)})", source)
            setattr(target, key, _check(f"{section}.{key}", hints[key], value, source))
            done.add(f"{section}.{key}")
    _check_tags(cfg.enrich.tags, source)
    _check_profiles(cfg.enrich.profiles, source)
    _check_redact(cfg.redact, source)
    return done


def find_file(explicit: str | None) -> Path | None:
    """The config file to read: ``--config``, ``$PERSIST_CONFIG``, then the search path."""
    if explicit or os.environ.get("PERSIST_CONFIG"):
        return Path(explicit or os.environ["PERSIST_CONFIG"]).expanduser()
    for candidate in SEARCH_PATH:
        if candidate.expanduser().is_file():
            return candidate.expanduser()
    return None


def _from_env() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for section, cls in SECTIONS.items():
        for key in cls.__annotations__:  # its fields, in order, without making the dataclass
            names = [f"PERSIST_{section}_{key}".upper()]
            if section == "daemon":
                names.insert(0, f"PERSIST_{key}".upper())
            for name in names:
                if name in os.environ:
                    found.setdefault(section, {})[key] = os.environ[name]
                    break
    return found


def flags(log_dir: str | os.PathLike | None = None, connect: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The ``overrides`` for ``load`` from a ``--log-dir`` and ``--connect`` given on a command line (or to
    ``ensure_daemon``); what was not given is left to the file and the environment."""
    daemon: dict[str, Any] = {}
    if log_dir is not None and str(log_dir) != "":
        daemon["log_dir"] = str(log_dir)
    if connect:
        daemon["connect"] = list(connect)
    return {"daemon": daemon}


def log_dir(explicit: str | None = None, flag: str | os.PathLike | None = None) -> Path:
    """``load(explicit, flags(flag)).log_dir``, with the same ``ConfigError``s, for a command that needs only the
    log dir: with no config file and no ``PERSIST_*`` key variable only the flag can set it, and no config is made."""
    given = flags(flag)["daemon"].get("log_dir")
    if find_file(explicit) is None and not _from_env() and (given is None or given.isascii()):
        return Path(given or DaemonSection.log_dir).expanduser()  # what ``_check`` lets through unchanged
    return load(explicit, flags(flag)).log_dir


def load(explicit: str | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Build the config from file, environment and flag ``overrides``."""
    cfg = Config()
    given: set[str] = set()
    path = find_file(explicit)
    if path is not None:
        import tomllib  # only with a config file: commands start faster without one

        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError("--config", f"{path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError("--config", f"{path} is not UTF-8 (byte {exc.start}): TOML files are UTF-8 text") from None
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
        given |= apply(cfg, data, str(path))
        cfg.source = str(path)
    for name, table in _from_env().items():
        for key, value in table.items():
            env = f"$PERSIST_{key.upper()}" if name == "daemon" else f"$PERSIST_{name}_{key}".upper()
            given |= apply(cfg, {name: {key: value}}, env)
    if overrides:
        given |= apply(cfg, {s: t for s, t in overrides.items() if t}, "command line")
    if cfg.daemon.bind and "daemon.connect" not in given:
        cfg.daemon.connect = []  # binding replaces the default broker, not adds to it
    return cfg
