"""One message: the record as written, each frame as the publisher sent it (text, JSON pretty-printed,
or a hex dump for binary, with ``envelope.describe_binary``), and its checksum checked now.

The frames come from ``record.decode_frames`` and the check is ``verify.sha256_problem`` with
``record.frames_sha256``: what ``persist-cli verify`` checks, for this one record.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from persist.cli.web import show
from persist.daemon.log import envelope, verify
from persist.daemon.log.record import decode_frames, frames_sha256, is_system

HEX_BYTES = 4096  # bytes of a binary frame dumped in hex (the size says how many there are)


def hex_dump(data: bytes) -> str:
    """``offset  hex bytes  ascii`` lines, 16 bytes each, as ``xxd`` shows them."""
    out = []
    for off in range(0, min(len(data), HEX_BYTES), 16):
        chunk = data[off : off + 16]
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out.append(f"{off:08x}  {chunk.hex(' '):<47}  {ascii_}")
    if len(data) > HEX_BYTES:
        out.append(f"… {len(data) - HEX_BYTES} more bytes")
    return "\n".join(out)


def frame_view(index: int, data: bytes, single: bool, body: int | None) -> dict[str, Any]:
    role = "payload" if single or index == 1 else "topic" if index == 0 else f"frame {index}"
    if body is not None and index == body and not single:
        role += " (body)"
    view: dict[str, Any] = {"index": index, "role": role, "bytes": len(data)}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return {**view, "as": "hex", "summary": envelope.describe_binary(data), "shown": hex_dump(data)}
    if text[:1] in ("{", "[") or text.strip()[:1] in ("{", "["):
        try:
            pretty = orjson.dumps(orjson.loads(data), option=orjson.OPT_INDENT_2).decode()
            return {**view, "as": "json", "shown": pretty}
        except (orjson.JSONDecodeError, orjson.JSONEncodeError, TypeError):
            pass
    return {**view, "as": "text", "shown": text}


def routes(viewer) -> list[Route]:
    source = viewer.source

    def page(request: Request) -> Response:
        seq = request.path_params["seq"]
        e = source.record(seq, request.query_params) if seq < 1 << 63 else None  # SQLite's integers end there
        if e is None:
            node = request.query_params.get("node")
            return viewer.page(request, "error.html", status=404,
                               error=f"no record {node + ' ' if node else ''}#{seq} in {source.label}")
        meta = show.meta(e.rec)
        try:
            frames = decode_frames(e.line, e.rec)
            decode_error = None
        except (KeyError, TypeError, ValueError) as exc:
            frames, decode_error = [], repr(exc)
        single = e.rec.get("frames") == 1
        body = meta.get("body") if type(meta.get("body")) is int else None
        views = [frame_view(i, f, single, body) for i, f in enumerate(frames)]
        if is_system(e.rec) or "sha256" not in meta:
            check = {"state": "none", "text": "the daemon's own record: no checksum" if is_system(e.rec)
                     else "this record has no meta.sha256"}
        else:
            problem = verify.sha256_problem(e.rec, e.line)
            computed = frames_sha256(frames) if frames else None
            check = {"state": "bad" if problem else "ok", "recorded": meta["sha256"], "computed": computed,
                     "text": problem or "the frames match meta.sha256"}
        record = orjson.dumps(e.rec, option=orjson.OPT_INDENT_2).decode()
        prev, next_ = source.neighbours(e)
        return viewer.page(request, "message.html", tab="", r=show.row(e), rec=e.rec, record=record, frames=views,
                           check=check, decode_error=decode_error, segment=e.path.name, prev=prev, next=next_)

    return [Route("/message/{seq:int}", page)]
