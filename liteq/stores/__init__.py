"""Stores, and `connect(url)` to open one from a URL."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from liteq.options import EnqueueOptions
from liteq.stores._base import BaseStore
from liteq.stores._contract import Store
from liteq.stores.memory import MemoryStore
from liteq.stores.sqlite import SQLiteStore

__all__ = ["BaseStore", "EnqueueOptions", "MemoryStore", "SQLiteStore", "Store", "connect"]


def connect(url: str) -> BaseStore:
    """Open a store from a URL.

    `sqlite:///relative/path.sqlite`, `sqlite:////absolute/path.sqlite`, `memory://`.
    A query string `?durability=full` sets the SQLite durability.

        store = liteq.connect("sqlite:///jobs.sqlite")
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        if parts.netloc:
            raise ValueError(
                f"bad SQLite URL {url!r}: use sqlite:///relative.sqlite or "
                "sqlite:////absolute/path.sqlite (three or four slashes)"
            )
        path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
        if not path:
            raise ValueError(f"the SQLite URL {url!r} names no file")
        options = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        durability = options.pop("durability", "normal")
        if options:
            raise ValueError(f"unknown option(s) in {url!r}: {', '.join(sorted(options))}")
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be normal or full, not {durability!r}")
        return SQLiteStore(path, durability="full" if durability == "full" else "normal")
    if scheme in ("postgres", "postgresql"):
        raise ValueError("PostgresStore is not available yet in this version of liteq")
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///path.sqlite or memory://")
