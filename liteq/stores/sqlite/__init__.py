"""SQLiteStore: the queue is one SQLite file (see store.py; the rest serves it)."""

from liteq.stores.sqlite.file import open_queue_files
from liteq.stores.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore", "open_queue_files"]
