"""What every request passes before a page sees it: read-only methods, a Host the server answers to (a
page elsewhere cannot reach a loopback server through DNS rebinding), and the token when there is one.

The token comes once in the URL (``?token=``, as ``persist-cli web`` prints it), or as
``Authorization: Bearer``; a right one in the URL is kept in a cookie (HttpOnly, SameSite=Strict) for the
page's own requests. Anything else is refused with 403 and one line. An ASGI middleware: it knows nothing
of the log.
"""

from __future__ import annotations

import hmac
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

COOKIE = "persist_token"
READ_ONLY = ("GET", "HEAD")


class Guard:
    def __init__(self, app, token: str | None, hosts: set[str] | None) -> None:
        """``hosts``: the Host names (without port) accepted; None accepts any (a non-loopback bind, where the
        token guards)."""
        self.app, self.token, self.hosts = app, token, hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["method"] not in READ_ONLY:
            return await _refuse(send, 405, "persist web is read-only: GET only", [(b"allow", b"GET, HEAD")])
        host = headers.get("host", "").rsplit(":", 1)[0].strip("[]")
        if self.hosts is not None and host not in self.hosts:
            return await _refuse(send, 403, f"persist web does not answer for host {host!r}")
        if self.token is None:
            return await self.app(scope, receive, send)
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
        cookie = _cookie(headers.get("cookie", ""))
        bearer = headers.get("authorization", "")
        candidates = [given, cookie.value if cookie else None,
                      bearer[7:] if bearer.lower().startswith("bearer ") else None]
        if not any(c is not None and hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates):
            return await _refuse(send, 403, "persist web: a valid token is needed (open the URL persist-cli web printed)")
        if given is None:
            return await self.app(scope, receive, send)

        async def with_cookie(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (
                    b"set-cookie", f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode())]
            await send(message)

        return await self.app(scope, receive, with_cookie)


async def _refuse(send, status: int, text: str, extra: list[tuple[bytes, bytes]] = ()) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


def _cookie(header: str):
    """Our token's cookie, if a well-formed one was sent (another local app's odd cookie is no reason to fail)."""
    try:
        return SimpleCookie(header).get(COOKIE)
    except CookieError:
        return None
