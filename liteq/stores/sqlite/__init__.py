"""SQLiteStore: the queue is one SQLite file (see store.py; the rest serves it)."""

from liteq.stores.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
