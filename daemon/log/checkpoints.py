"""Checkpoints (SPEC section 5): small immutable manifests, chained by hash.

A checkpoint names a cut of the log — ``last_seq`` and, for every segment up
to it, its stable name, the number of bytes and the SHA-256 of those bytes —
never a copy of the data. Segments are named by their first seq
(``seg-<first>.jsonl``) even while still active, so a manifest stays valid
after the segment rotates. ``chain = sha256(prev_chain + content)`` links each
manifest to the one before it, so an edit of any past byte or manifest is
detected by ``verify``.

Hashing is incremental: a ``Hasher`` keeps a running SHA-256 per segment and
only reads bytes appended since the last checkpoint; closed segments reuse the
hash of the previous manifest. A checkpoint on a 10 GB log costs what one on
10 KB costs.
"""

from __future__ import annotations

import difflib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from persist.daemon.log import lock, reader, retention
from persist.daemon.log.errors import CheckpointError
from persist.daemon.log.fsutil import ensure_dir, fsync_dir, open_reading, write_atomically
from persist.daemon.log.layout import LogDir
from persist.daemon.log.lazylog import get_logger
from persist.daemon.log.record import iso_utc

READ = 4 << 20
log_ = get_logger("persist.checkpoints")


@dataclass
class Cut:
    """A consistent view of the log: ``last_seq`` and ``(name, path, bytes)`` per segment."""

    last_seq: int
    segments: list[tuple[str, Path, int]]


def cut_from_files(log: LogDir) -> Cut:
    """The cut a checkpoint taken now would name (for use without a running daemon)."""
    segments = [(seg.name, seg.path, whole) for seg, whole, _ in reader.extents(log)]
    last = reader.last_record(log)
    return Cut(last.seq if last is not None else 0, segments)


class Hasher:
    """Running SHA-256 and line count of each segment's prefix."""

    def __init__(self) -> None:
        self.running: dict[str, tuple[Any, int, int]] = {}  # name -> (sha256, bytes, records)
        self.known: dict[tuple[str, int], tuple[str, int]] = {}  # (name, bytes) -> (sha256, records)

    def remember(self, manifest: dict[str, Any]) -> None:
        """Reuse a manifest's hashes for segments that have not grown since."""
        for seg in manifest["segments"]:
            self.known[(seg["name"], seg["bytes"])] = (seg["sha256"], seg.get("records", 0))

    def digest(self, name: str, path: Path, nbytes: int) -> tuple[str, int]:
        """SHA-256 and line count of the first ``nbytes`` of the segment ``name`` at ``path``."""
        if (name, nbytes) in self.known:
            return self.known[(name, nbytes)]
        h, done, records = self.running.get(name) or (hashlib.sha256(), 0, 0)
        if done > nbytes:
            h, done, records = hashlib.sha256(), 0, 0
        with open_reading(path) as f:
            f.seek(done)
            while done < nbytes:
                chunk = f.read(min(READ, nbytes - done))
                if not chunk:
                    raise CheckpointError(f"{path} is shorter than {nbytes} bytes")
                h.update(chunk)
                records += chunk.count(b"\n")
                done += len(chunk)
        self.running[name] = (h, done, records)
        result = (h.hexdigest(), records)
        self.known[(name, nbytes)] = result
        return result


def content_hash(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "chain"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def chain_of(prev_chain: str, manifest: dict[str, Any]) -> str:
    return hashlib.sha256(prev_chain.encode() + content_hash(manifest)).hexdigest()


def load(path: Path) -> dict[str, Any]:
    try:
        manifest = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint manifest {path} cannot be read: {exc}") from None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("id"), str)
            and isinstance(manifest.get("last_seq"), int) and isinstance(manifest.get("segments"), list)
            and all(isinstance(s, dict) and {"name", "bytes", "sha256"} <= s.keys() for s in manifest["segments"])):
        raise CheckpointError(f"checkpoint manifest {path} is not a persist checkpoint")
    return manifest


def listing(log: LogDir, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Every checkpoint, oldest first.

    A manifest that cannot be read raises, or is noted in ``problems`` if given.
    """
    found = []
    for path in sorted(log.checkpoints.glob("*.json")) if log.checkpoints.is_dir() else []:
        try:
            found.append(load(path))
        except CheckpointError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
    return sorted(found, key=lambda m: (str(m.get("created_at", "")), m["id"]))


def readable(log: LogDir) -> list[dict[str, Any]]:
    """Every checkpoint that can be read, oldest first; each one that cannot is logged and skipped."""
    problems: list[str] = []
    items = listing(log, problems)
    for problem in problems:
        log_.warning("checkpoint_skipped", problem=problem, hint="persist-cli verify lists it; move the file away")
    return items


def latest(log: LogDir) -> dict[str, Any] | None:
    """The newest readable checkpoint (an unreadable manifest never stops the daemon)."""
    items = readable(log)
    return items[-1] if items else None


def find(log: LogDir, ident: str) -> dict[str, Any]:
    """The checkpoint ``ident`` (or a unique prefix, or ``latest``), else a helpful error.

    Unreadable manifests are passed over (``verify`` names them).
    """
    items = listing(log, [])
    if ident == "latest" and items:
        return items[-1]
    exact = [m for m in items if m["id"] == ident or m.get("label") == ident]
    if len(exact) == 1:
        return exact[0]
    prefixed = [m for m in items if m["id"].startswith(ident)]
    if len(prefixed) == 1:
        return prefixed[0]
    ids = [m["id"] for m in items]
    if len(prefixed) > 1:
        raise CheckpointError(f"checkpoint '{ident}' is ambiguous: {', '.join(m['id'] for m in prefixed[:5])}")
    close = difflib.get_close_matches(ident, ids + [m["label"] for m in items if m.get("label")], n=1)
    hint = f"; did you mean {close[0]}?" if close else "; see persist-cli checkpoints list"
    raise CheckpointError(f"no checkpoint '{ident}' in {log.checkpoints}{hint}")


def new_id(log: LogDir, created: float, last_seq: int) -> str:
    base = time.strftime("%Y%m%d-%H%M%S", time.gmtime(created)) + f"-{last_seq}"
    ident, n = base, 1
    while (log.checkpoints / f"{ident}.json").exists():
        n += 1
        ident = f"{base}.{n}"
    return ident


def check_label(log: LogDir, label: str | None) -> None:
    """``CheckpointError`` if ``label`` would not name one checkpoint: another has it (or it is an id,
    or ``latest``). As ``git tag`` refuses an existing tag, a label is never given twice."""
    if not label:
        return
    for m in readable(log):
        if label in (m.get("label"), m["id"]):
            raise CheckpointError(f"checkpoint label '{label}' already names {m['id']}; choose another label")
    if label == "latest":
        raise CheckpointError("'latest' always means the newest checkpoint; choose another label")


def write(log: LogDir, cut: Cut, hasher: Hasher, reason: str, label: str | None = None,
          ident: str | None = None) -> dict[str, Any]:
    """Write the manifest for ``cut`` atomically (under ``ident`` if chosen already); return it.

    ``CheckpointError`` (nothing written) if ``label`` names a checkpoint already (``check_label``)."""
    ensure_dir(log.checkpoints)
    check_label(log, label)
    prev = latest(log)
    if prev is not None:
        hasher.remember(prev)
    segments = []
    for name, path, nbytes in cut.segments:
        sha, records = hasher.digest(name, path, nbytes)
        segments.append({"name": name, "bytes": nbytes, "sha256": sha, "records": records})
    created = time.time()
    manifest: dict[str, Any] = {
        "id": ident or new_id(log, created, cut.last_seq),
        "label": label,
        "reason": reason,
        "created_at": iso_utc(int(created * 1e9)),
        "last_seq": cut.last_seq,
        "message_count": sum(s["records"] for s in segments),
        "segments": segments,
        "prev": prev["id"] if prev else None,
        "prev_chain": prev["chain"] if prev else "",
    }
    manifest["chain"] = chain_of(manifest["prev_chain"], manifest)
    write_atomically(log.checkpoints / f"{manifest['id']}.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest


def write_now(log: LogDir, label: str | None = None) -> dict[str, Any]:
    """A manual checkpoint of the files as they are, written holding the log dir's lock (no daemon records:
    ``lock.AlreadyRunning`` if one does, and none may start meanwhile)."""
    with lock.held(log):
        return write(log, cut_from_files(log), Hasher(), "manual", label)


def prune(log: LogDir, keep: int, dry_run: bool = False) -> list[str]:
    """Delete the oldest automatic checkpoints beyond ``keep`` (only name them with ``dry_run``);
    labelled ones stay forever."""
    if keep < 0:
        raise CheckpointError(f"cannot keep {keep} checkpoints; keep 0 or more")
    automatic = [m for m in readable(log) if not m.get("label")]
    doomed = automatic[: max(0, len(automatic) - keep)]
    if dry_run:
        return [m["id"] for m in doomed]
    for m in doomed:
        (log.checkpoints / f"{m['id']}.json").unlink(missing_ok=True)
    if doomed:
        fsync_dir(log.checkpoints)
    return [m["id"] for m in doomed]


def verify(log: LogDir) -> list[str]:
    """Every problem with the checkpoints: a broken chain, a segment that changed or vanished."""
    problems = []
    items = listing(log, problems)
    by_id = {m["id"]: m for m in items}
    wanted: dict[str, set[int]] = {}
    for m in items:
        if m.get("chain") != chain_of(m.get("prev_chain", ""), m):
            problems.append(f"checkpoint {m['id']}: manifest was edited (its chain hash does not match)")
        prev = by_id.get(m.get("prev"))
        if prev is not None and prev.get("chain") != m.get("prev_chain"):
            problems.append(f"checkpoint {m['id']}: previous checkpoint {prev['id']} was edited (chain broken)")
        for seg in m["segments"]:
            wanted.setdefault(seg["name"], set()).add(seg["bytes"])
    actual: dict[tuple[str, int], str] = {}
    for name, lengths in wanted.items():
        f = reader.open_segment(log, name)
        if f is None:
            if retention.deleted(log, name) is None:  # a tombstone means storage.retention deleted it
                problems.append(f"segment {name} named by a checkpoint is missing")
            continue
        with f:
            actual.update(_prefix_hashes(name, f, sorted(lengths)))
    for m in items:
        for seg in m["segments"]:
            got = actual.get((seg["name"], seg["bytes"]))
            if got is not None and got != seg["sha256"]:
                problems.append(f"checkpoint {m['id']}: segment {seg['name']} changed in its first {seg['bytes']} bytes")
    return problems


def _prefix_hashes(name: str, f: BinaryIO, lengths: list[int]) -> dict[tuple[str, int], str]:
    """SHA-256 of each prefix length of one open file, in a single pass."""
    out = {}
    h = hashlib.sha256()
    done = 0
    for n in lengths:
        while done < n:
            chunk = f.read(min(READ, n - done))
            if not chunk:
                break
            h.update(chunk)
            done += len(chunk)
        out[(name, n)] = h.hexdigest() if done == n else "truncated"
    return out


def between(log: LogDir, a: dict[str, Any], b: dict[str, Any]) -> Iterator[reader.Entry]:
    """The records after the older of two checkpoints, up to and including the newer one's last."""
    lo, hi = sorted((a["last_seq"], b["last_seq"]))
    for entry in reader.records(log, after_seq=lo):
        if entry.seq > hi:
            return
        yield entry


def diff(log: LogDir, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What happened between two checkpoints: records added and by topic."""
    lo, hi = sorted((a["last_seq"], b["last_seq"]))
    topics: dict[str, int] = {}
    senders: dict[str, int] = {}
    for entry in between(log, a, b):
        topics[entry.rec["topic"]] = topics.get(entry.rec["topic"], 0) + 1
        sender = entry.rec.get("meta", {}).get("sender")
        if sender is not None:
            senders[str(sender)] = senders.get(str(sender), 0) + 1
    return {"from": a["id"], "to": b["id"], "from_seq": lo, "to_seq": hi, "records": hi - lo,
            "topics": topics, "senders": senders}
