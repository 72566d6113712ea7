"""The PostgreSQL archive: every node's log, shipped exactly once, in one database.

This module owns the schema (``migrate``: created and upgraded by the shipper,
its version in ``persist_meta``), the row of one record (``row``), how a batch
lands (``ship``) and where a node's shipper stands (``position``). The shipper
process is ``shipper``; what readers ask (search, thread, check) is ``query``.

Exactly once, in three steps:

* **key**: a row is keyed by ``(node, epoch, seq)``. ``epoch`` names the fork
  a record belongs to: ``''`` from the first record, and after each in-place
  restore the id of its ``$persist/restore`` record (``<seq>@<received_at>``),
  from that record on. Records before the fork keep their epoch (they are the
  same in both branches); those after it never collide with what the restore
  set aside, which stays in the archive under the old epoch.
* **ship**: a batch is COPYed straight into ``persist_records`` while it is
  read from the log (PostgreSQL works on it as it arrives); only if a row is
  already there (a shipper reading the log again after a restore) is the batch
  COPYed into a staging table instead and moved with ``INSERT ... ON CONFLICT
  DO NOTHING``. The node's position (epoch, segment, byte offset, seq, and the
  length and md5 of the last line shipped) moves in the same transaction, and
  only if nobody else moved it meanwhile.
* **resume**: a shipper starts from the committed position after checking the
  line there is still the one it shipped; if it is not (a restore cut the log
  back), it reads the log again from its start: the key makes that harmless.

Never writes to the log dir, never blocks the recorder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from persist.daemon.index import searchable_text
from persist.daemon.log.record import is_system

if TYPE_CHECKING:  # psycopg is imported where a connection is made: the daemon itself never loads it
    import psycopg

VERSION = 2
MAX_BODY = 100_000  # characters of one record that are searchable (a tsvector holds at most 1 MB)
MIGRATIONS = {
    1: """
CREATE TABLE persist_records (
    node text NOT NULL, epoch text NOT NULL DEFAULT '', seq bigint NOT NULL,
    segment text NOT NULL, "offset" bigint NOT NULL,
    received_at timestamptz, topic text NOT NULL, sender text, recipient text, thread_id text, kind text,
    body text NOT NULL DEFAULT '', line text NOT NULL, rec jsonb,
    shipped_at timestamptz NOT NULL DEFAULT now(),
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED,
    PRIMARY KEY (node, epoch, seq));
CREATE INDEX persist_records_tsv ON persist_records USING gin (tsv);
CREATE INDEX persist_records_thread ON persist_records (thread_id, received_at);
CREATE INDEX persist_records_time ON persist_records (received_at);
CREATE INDEX persist_records_segment ON persist_records (node, segment, epoch, seq);
CREATE TABLE persist_position (
    node text PRIMARY KEY, epoch text NOT NULL DEFAULT '', segment text, "offset" bigint NOT NULL DEFAULT 0,
    seq bigint NOT NULL DEFAULT 0, line text, origin text, updated_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION persist_jsonb(t text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN RETURN t::jsonb; EXCEPTION WHEN others THEN RETURN NULL; END $$;
""",
    # 2: a row a third smaller and twice as fast to land: the record as jsonb is persist_jsonb(line) when asked
    # for, and archive check's range scan is the primary key's
    2: """
ALTER TABLE persist_records DROP COLUMN rec;
DROP INDEX persist_records_segment;
CREATE OR REPLACE FUNCTION persist_jsonb(t text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN RETURN t::jsonb;
EXCEPTION WHEN others THEN  -- jsonb holds no NUL character: one becomes U+FFFD, as in the searchable text
    BEGIN RETURN replace(t, '\\u0000', '\\ufffd')::jsonb; EXCEPTION WHEN others THEN RETURN NULL; END;
END $$;
""",
}
STAGING = """CREATE TEMP TABLE IF NOT EXISTS persist_staging (
    node text, epoch text, seq bigint, segment text, "offset" bigint, received_at timestamptz, topic text,
    sender text, recipient text, thread_id text, kind text, body text, line text) ON COMMIT DELETE ROWS"""
COLUMNS = 'node, epoch, seq, segment, "offset", received_at, topic, sender, recipient, thread_id, kind, body, line'
FIELDS = ("sender", "recipient", "thread_id", "kind")
MIGRATE_LOCK = 0x70657273  # an advisory lock: two shippers starting at once migrate one after the other


class ArchiveError(Exception):
    """A problem with the archive that retrying will not fix (a schema newer than this persist)."""


class PositionMoved(Exception):
    """Another shipper for the same node moved the position: this batch was rolled back."""


@dataclass
class Position:
    """Where a node's shipper stands: the last line shipped ends at ``offset`` in ``segment``."""

    epoch: str = ""
    segment: str | None = None
    offset: int = 0
    seq: int = 0
    line: str | None = None  # "<length>:<md5>" of the last line shipped
    origin: str | None = None  # "<length>:<md5>" of the log's first line: which log this node is


def safe_url(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    import psycopg
    from psycopg import conninfo

    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "(an unparsable archive URL)"
    parts.pop("password", None)
    host, db = parts.get("host", ""), parts.get("dbname", "")
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{db}"


def connect(url: str, timeout: int = 5) -> psycopg.Connection:
    import psycopg

    # autocommit: every write is in an explicit ``conn.transaction()`` block, nothing in an implicit one
    return psycopg.connect(url, connect_timeout=timeout, application_name="persist", autocommit=True)


def keep_alive(conn: psycopg.Connection, timeout: float) -> None:
    """Let the server end this session if its shipper goes silent: TCP keepalives from the server's side (a
    client gone without a word, its locks held, would otherwise block its successor for the kernel's two
    hours) and no transaction left open longer than ``timeout``."""
    conn.execute("SELECT set_config('tcp_keepalives_idle', '10', false), "
                 "set_config('tcp_keepalives_interval', '5', false), set_config('tcp_keepalives_count', '3', false), "
                 "set_config('idle_in_transaction_session_timeout', %s, false)", (str(int(timeout * 1000)),))


def migrate(conn: psycopg.Connection) -> int:
    """Create or upgrade the schema to ``VERSION``; the version found before."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS persist_meta (key text PRIMARY KEY, value text NOT NULL)")
        found = conn.execute("SELECT value FROM persist_meta WHERE key = 'version'").fetchone()
        have = int(found[0]) if found else 0
        if have > VERSION:
            raise ArchiveError(f"the archive's schema is version {have}, newer than this persist's ({VERSION}); "
                               "upgrade persist")
        for v in range(have + 1, VERSION + 1):
            conn.execute(MIGRATIONS[v])
        conn.execute("INSERT INTO persist_meta VALUES ('version', %s) ON CONFLICT (key) DO UPDATE SET value = %s",
                     (str(VERSION), str(VERSION)))
    return have


def position(conn: psycopg.Connection, node: str) -> Position:
    """The node's committed position (created at the start of the log if it has none)."""
    with conn.transaction():
        conn.execute("INSERT INTO persist_position (node) VALUES (%s) ON CONFLICT DO NOTHING", (node,))
        epoch, segment, offset, seq, line, origin = conn.execute(
            'SELECT epoch, segment, "offset", seq, line, origin FROM persist_position WHERE node = %s',
            (node,)).fetchone()
    return Position(epoch, segment, offset, seq, line, origin)


def claim(conn: psycopg.Connection, node: str, origin: str | None) -> None:
    """Make this connection the only shipper of ``node`` (a session advisory lock) and check that ``node``
    is this log (``origin``: its first line's id; None when that segment is gone and it cannot be told).
    Two recorders given one node name would otherwise drop each other's records as duplicates."""
    key = f"persist-node:{node}"
    if not conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()[0]:
        raise ArchiveError(f"another shipper is shipping as node {node!r} right now; give each recorder its own "
                           "[archive] node")
    if origin is None:
        return
    with conn.transaction():
        conn.execute("UPDATE persist_position SET origin = %s WHERE node = %s AND origin IS NULL", (origin, node))
        theirs = conn.execute("SELECT origin FROM persist_position WHERE node = %s", (node,)).fetchone()[0]
    if theirs != origin:
        raise ArchiveError(f"node {node!r} in the archive is another log (its first record differs from this "
                           "log's); give this recorder its own [archive] node")


def line_id(line: bytes) -> str:
    return f"{len(line)}:{hashlib.md5(line).hexdigest()}"


def epoch_of(rec: dict[str, Any], current: str) -> str:
    """The epoch of ``rec``: a ``$persist/restore`` record starts a new one, named after itself."""
    if rec.get("topic") == "$persist/restore" and is_system(rec):
        return f"{rec['seq']}@{rec.get('received_at', '')}"
    return current


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value).replace("\x00", "\ufffd").encode("utf-8", "replace").decode()


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


ROW_RECEIVED_AT = 5  # where ``row`` puts the record's received_at


def row(node: str, epoch: str, rec: dict[str, Any], segment: str, offset: int, line: bytes) -> tuple:
    """The staging row of one record (``offset``: where its line starts)."""
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    try:
        text, fields = searchable_text(rec, line)
        body = _text(f"{text}\n{fields}" if fields else text)[:MAX_BODY]
    except Exception:  # noqa: BLE001 - one hostile record must never stop shipping
        body = ""
    return (node, epoch, rec["seq"], segment, offset, _time(rec.get("received_at")), _text(rec.get("topic", "")) or "",
            *(_text(meta.get(k)) for k in FIELDS), body, line.rstrip(b"\n").decode("utf-8", "replace"))


def ship(conn: psycopg.Connection, node: str, rows: Iterable[tuple], before: Position,
         after: Callable[[], Position]) -> None:
    """Land ``rows`` (written to PostgreSQL as they come) and move the node's position from ``before`` to
    ``after()`` (asked once ``rows`` is exhausted), in one transaction."""
    import psycopg.errors

    rows = iter(rows)  # one pass: after a conflict the rest comes from where the COPY stopped, not again
    with conn.transaction():
        landed: list[tuple] = []
        try:
            with conn.transaction(), conn.cursor().copy(f"COPY persist_records ({COLUMNS}) FROM STDIN") as copy:
                for r in rows:
                    landed.append(r)
                    copy.write_row(r)
        except psycopg.errors.UniqueViolation:  # some are there already (the log read again): land the others
            landed.extend(rows)
            conn.execute(STAGING)
            with conn.cursor().copy(f"COPY persist_staging ({COLUMNS}) FROM STDIN") as copy:
                for r in landed:
                    copy.write_row(r)
            conn.execute(f"INSERT INTO persist_records ({COLUMNS}) SELECT {COLUMNS} FROM persist_staging "
                         "ORDER BY seq ON CONFLICT DO NOTHING")
        to = after()
        moved = conn.execute(  # the origin is left as it is: ``claim`` owns it
            'UPDATE persist_position SET epoch = %s, segment = %s, "offset" = %s, seq = %s, line = %s, '
            'updated_at = now() WHERE node = %s AND epoch = %s AND segment IS NOT DISTINCT FROM %s '
            'AND "offset" = %s AND seq = %s',
            (to.epoch, to.segment, to.offset, to.seq, to.line, node,
             before.epoch, before.segment, before.offset, before.seq)).rowcount
        if moved != 1:
            raise PositionMoved(f"another shipper moved node {node!r}'s position")


def decode(line: bytes) -> dict[str, Any] | None:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("seq"), int) else None


def rewind(conn: psycopg.Connection, node: str, before: Position) -> Position:
    """Move the node's position back to the start of the log (after a restore cut it back)."""
    start = Position()
    ship(conn, node, [], before, lambda: start)
    return start
