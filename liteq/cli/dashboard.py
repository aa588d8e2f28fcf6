"""`liteq dashboard`: the web dashboard of a queue (the `dashboard` extra)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
from typing import Final
from urllib.parse import urlsplit

from liteq.cli.common import (
    OK,
    Commands,
    Failure,
    add_db,
    import_modules,
    open_existing,
    open_store,
    store_url,
)
from liteq.stores import BaseStore, shown_url, sqlite_path

DEFAULT_PORT: Final = 8350
INSTALL: Final = "pip install 'liteq-jobs[dashboard]'"


def add_parser(sub: Commands) -> None:
    """Register `dashboard`."""
    dashboard = sub.add_parser(
        "dashboard",
        help="a web page that shows the queue and acts on it",
        description="Serve the queue's dashboard: queues, workers, jobs, and actions on them "
        f"(needs {INSTALL}). It listens on 127.0.0.1 unless told otherwise; any other "
        "address needs a token, checked on every request.",
    )
    add_db(dashboard)
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)"
    )
    dashboard.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"the port (default {DEFAULT_PORT}; 0: any free one)",
    )
    dashboard.add_argument(
        "--read-only", action="store_true", help="show the queue, offer no action and refuse any"
    )
    dashboard.add_argument(
        "--token",
        default=os.environ.get("LITEQ_DASHBOARD_TOKEN"),
        metavar="TOKEN",
        help="require this token of every request (default: $LITEQ_DASHBOARD_TOKEN); "
        "`generate`: make one and print it",
    )
    dashboard.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import job classes from MODULE: their descriptions show, and async jobs of "
        "theirs can be resolved (repeatable)",
    )
    dashboard.set_defaults(func=_dashboard)


def _port(text: str) -> int:
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (0 to 65535), not {text!r}")
    return int(text)


def label(url: str) -> str:
    """How the page names the store: a file's path, or a server's URL without password."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.scheme.lower() == "sqlite":
        return sqlite_path(url)
    return shown_url(url)


def _dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from liteq.web import create_app
        from liteq.web.security import is_loopback, new_token
    except ImportError as exc:
        raise Failure(f"the dashboard needs its extra ({exc}): {INSTALL}") from None
    token: str | None = args.token
    if token is not None and not token.strip():
        raise Failure("the token is empty: give --token TOKEN, or --token generate")
    generated = token == "generate"  # noqa: S105 - a keyword, not a password
    if generated:
        token = new_token()
    if token is None and not is_loopback(args.host):
        raise Failure(
            f"listening on {args.host} lets other machines in: give a token (--token TOKEN, "
            "or LITEQ_DASHBOARD_TOKEN), or --token generate"
        )
    url = store_url(args)
    if args.imports:
        import_modules(args.imports, url)
    store = _open(args)
    listener = _listen(args.host, args.port)
    host, port = listener.getsockname()[:2]
    everywhere = _wildcard(host)
    # Nobody can open http://0.0.0.0/: on a wildcard bind, the address to print is this
    # machine's own loopback one, and the host's name is what other machines use.
    address = _address("::1" if host == "::" else "127.0.0.1" if everywhere else host, port)
    print(f"liteq dashboard of {label(url)}{' (read-only)' if args.read_only else ''}")
    if everywhere:
        print(
            f"listening on all addresses ({host}): from another machine, "
            f"{_address(socket.gethostname(), port)}" + (" with the token" if token else "")
        )
    if generated:
        print(f"open {address}?token={token}  (the token is printed only this once)")
    else:
        print(f"open {address}" + ("  (with its token: ?token=…)" if token else ""))
    print("Ctrl-C to stop", flush=True)
    app = create_app(
        store,
        token=token,
        read_only=args.read_only,
        label=label(url),
        reopen=lambda: _open(args),  # a file put in the queue file's place, as at start
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    # uvicorn stops on TERM, then raises it again under the handler it found there: one
    # that ignores it lets the command end as a stopped service should, with status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.Server(config).run(sockets=[listener])
    print("stopped", flush=True)
    return OK


def _open(args: argparse.Namespace) -> BaseStore:
    """The queue, which a dashboard never makes (a typo would make an empty one): missing,
    it is an error; older, a read-write dashboard brings it up to date."""
    if args.read_only:
        return open_store(args, readonly=True)
    return open_existing(args)


def _wildcard(host: str) -> bool:
    """Whether a bound address means every address of the machine."""
    return host in ("0.0.0.0", "::", "")  # noqa: S104 - comparing, not binding


def _address(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Failure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


__all__ = ["add_parser", "label"]
