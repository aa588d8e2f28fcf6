"""A task of an ASGI app (tests/asgi_app.py), on the store LITEQ_URL names: `liteq work
--import tests.asgi_tasks` runs it."""

from __future__ import annotations

import os

import liteq

store = liteq.connect()


@store.task(max_attempts=3)
def write_line(path: str, n: int) -> None:
    """Append `n` and this worker's pid to `path`: the effect the test counts."""
    with open(path, "a") as f:
        f.write(f"{n} {os.getpid()}\n")
