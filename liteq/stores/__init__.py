"""Stores, and `connect(url)` to open one from a URL."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from liteq.options import EnqueueOptions
from liteq.stores.base import BaseStore
from liteq.stores.contract import (
    AppStore,
    JobQuery,
    OperatorStore,
    QueueCount,
    Store,
    WorkerStore,
)
from liteq.stores.memory import MemoryStore
from liteq.stores.sqlite import SQLiteStore

if TYPE_CHECKING:
    from liteq.stores.postgres import PostgresStore

__all__ = [
    "AppStore",
    "BaseStore",
    "EnqueueOptions",
    "JobQuery",
    "MemoryStore",
    "OperatorStore",
    "QueueCount",
    "SQLiteStore",
    "Store",
    "WorkerStore",
    "connect",
    "postgres_store",
    "shown_url",
    "sqlite_path",
]


def postgres_store() -> type[PostgresStore]:
    """The PostgresStore class; ImportError saying how to install it without psycopg."""
    try:
        from liteq.stores.postgres import PostgresStore
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("psycopg"):
            raise
        raise ImportError(
            "liteq's PostgresStore needs psycopg: pip install 'liteq-jobs[postgres]'",
            name=exc.name,
        ) from exc
    return PostgresStore


def sqlite_path(url: str) -> str:
    """The file an `sqlite:` URL names; ValueError if it names none."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ValueError(f"{url!r} is not an sqlite: URL")
    if parts.netloc:
        raise ValueError(
            f"bad SQLite URL {url!r}: use sqlite:///relative.sqlite or "
            "sqlite:////absolute/path.sqlite (three or four slashes)"
        )
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    if not path:
        raise ValueError(f"the SQLite URL {url!r} names no file")
    return path


def shown_url(url: str) -> str:
    """`url` as a log line or a page may show it: a password, in the authority or as a
    libpq `password=` parameter, left out."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    rest = url.split("://", 1)[1]
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        rest = f"{parts.username or ''}@{host}{rest[len(parts.netloc) :]}"
    if "?" in rest:
        rest, query = rest.split("?", 1)
        kept = [p for p in query.split("&") if p.split("=", 1)[0].lower() != "password"]
        rest += f"?{'&'.join(kept)}" if kept else ""
    return f"{url.split('://', 1)[0]}://{rest}"


def connect(url: str | None = None, *, readonly: bool = False) -> BaseStore:
    """Open a store from a URL; with none, from the environment variable LITEQ_URL (which
    `liteq work --db URL` sets for its workers, so a jobs module can write
    `store = liteq.connect()` and get the worker's own store).

    `sqlite:///relative/path.sqlite`, `sqlite:////absolute/path.sqlite`, `memory://`, or
    `postgresql://user:password@host:5432/database` (`?schema=NAME`: liteq's tables in that
    schema, `liteq` unless given; other parameters are libpq's).
    A query string sets SQLiteStore options: `?durability=full`, `?page_size=4096`
    (both: `?durability=full&page_size=4096`), `?shared=1` (the file is also an
    application's database: SQLiteStore's `shared`). A bare path means an SQLite file.
    `readonly=True` opens an existing queue only to read it (no file is created).

        store = liteq.connect("sqlite:///jobs.sqlite")
    """
    if url is None:
        url = os.environ.get("LITEQ_URL")
        if not url:
            raise ValueError("no store URL: give one, or set LITEQ_URL")
    if "://" not in url:
        url = f"sqlite:///{url}"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        path = sqlite_path(url)
        options = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        durability = options.pop("durability", "normal")
        page_size = options.pop("page_size", None)
        shared = options.pop("shared", "0")
        if options:
            raise ValueError(f"unknown option(s) in {url!r}: {', '.join(sorted(options))}")
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be normal or full, not {durability!r}")
        if page_size is not None and not page_size.isdigit():
            raise ValueError(f"page_size must be a number of bytes, not {page_size!r}")
        if shared not in ("0", "1"):
            raise ValueError(f"shared must be 1 or 0, not {shared!r}")
        return SQLiteStore(
            path,
            durability="full" if durability == "full" else "normal",
            page_size=None if page_size is None else int(page_size),
            readonly=readonly,
            shared=shared == "1",
        )
    if scheme in ("postgres", "postgresql"):
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        schema = query.pop("schema", "liteq")  # liteq's own; the rest are libpq's
        # Not urlunsplit: it drops the empty authority of `postgresql:///db?host=/run/pg`.
        rest = urlencode(query, quote_via=quote)
        dsn = url.split("?", 1)[0] + (f"?{rest}" if rest else "")
        return postgres_store()(dsn, schema=schema, readonly=readonly)
    raise ValueError(
        f"unsupported store URL {url!r}: use sqlite:///path.sqlite, "
        "postgresql://user@host/database or memory://"
    )
