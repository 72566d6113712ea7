"""``persist-cli web``: serve the read-only web page over the log dir, print its URL, run until Ctrl-C.

Owns the command line and the rules around it: the source (the log dir, or with ``--archive URL`` the
archive); loopback only unless ``--bind`` says otherwise, and then a token on every request (``--token``,
or one made and printed); the listening socket (a free port unless ``--port``); uvicorn. Each refusal is one line naming the flag.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
import sys

import click

from persist.cli.common import UsageError, require_log, with_log_dir
from persist.daemon.log import times

TOKEN = re.compile(r"^[A-Za-z0-9._~-]{16,}$")


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening (port 0: one the OS picks)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--bind {host!r} is not an address this machine has ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host} port {port} ({exc.strerror}); choose another --port or --bind") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def open_source(log, archive_url: str | None):
    """The log dir, or with ``--archive URL`` the archive (checked now: one line, exit 2, if it cannot be read)."""
    if archive_url:
        from persist.cli.web.archive_source import ArchiveSource

        try:
            return ArchiveSource.open(archive_url)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    from persist.cli.web.source import LogSource
    from persist.cli.web.tail import LogTail

    require_log(log)
    return LogSource(log, LogTail(log))


@click.command("web")
@click.option("--bind", default="127.0.0.1", show_default=True, metavar="ADDR",
              help="Address to listen on; anything but loopback needs a token on every request.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, envvar="PERSIST_WEB_PORT", show_default="a free one",
              help="Port to listen on (env PERSIST_WEB_PORT).")
@click.option("--token", envvar="PERSIST_WEB_TOKEN", metavar="TOKEN",
              help="Required on every request (in the printed URL once, then a cookie); made up and printed when "
                   "--bind is not loopback and none is given (env PERSIST_WEB_TOKEN).")
@click.option("--archive", "archive_url", metavar="URL",
              help="Serve every node's records from this PostgreSQL archive instead of the log dir (read-only).")
@with_log_dir
def web(cfg, log, bind, port, token, archive_url) -> None:
    """A read-only web page over the log: live records, threads, search, messages, agents, timeline.

    Serves everything itself (works with no network); prints its URL; Ctrl-C stops. With --archive URL
    (before or after the command) it reads every node's records from the PostgreSQL archive instead.
    """
    try:
        import uvicorn

        from persist.cli.web.app import create
    except ImportError as exc:
        raise UsageError(f"persist-cli web needs the web extra ({exc.name} is missing): "
                         "pip install 'persist[web]' (./scripts/setup.sh installs it)") from None
    if token is not None and not TOKEN.match(token):
        raise UsageError("--token must be at least 16 characters of letters, digits, '.', '_', '~' or '-'")
    made = False
    if token is None and not loopback(bind):
        token, made = secrets.token_urlsafe(24), True
    source = open_source(log, archive_url)
    sock = listen(bind, port)
    host, port = sock.getsockname()[:2]
    hosts = None if not loopback(bind) else {"localhost", "127.0.0.1", "::1", bind}
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    click.echo(f"persist web: {url}")
    click.echo(f"  reading {source.label} (read-only); {'a token is needed: it is in the URL above' if made else ''}"
               f"{'; ' if made else ''}Ctrl-C stops", err=True)
    sys.stdout.flush()
    times.use_utc(times.showing_utc())
    server = uvicorn.Server(uvicorn.Config(create(source, token, hosts), log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=1, lifespan="on"))
    server.run(sockets=[sock])
