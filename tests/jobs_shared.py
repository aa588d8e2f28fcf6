"""Jobs of tests/test_sqlite_shared.py: each writes the application's own table through
Python's sqlite3, in the worker that claimed it through sqlite3 too (SQLiteStore's shared)."""

from __future__ import annotations

import contextlib
import os
import sqlite3

import liteq


class Send(liteq.Job):
    def __init__(self, item: str) -> None:
        self.item = item

    def run(self, job: liteq.ManagedJob) -> None:
        app_db = sqlite3.connect(os.environ["APP_DB"], timeout=10)
        with contextlib.closing(app_db) as conn, conn:
            conn.execute("CREATE TABLE IF NOT EXISTS sent (item TEXT)")
            conn.execute("INSERT INTO sent VALUES (?)", (self.item,))
