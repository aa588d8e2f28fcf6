"""Entry points for the tests' child processes: `python -m tests.procs COMMAND DB ...`."""

from __future__ import annotations

import sys
import time

import liteq
from tests.jobs import Logs, Noop


def enqueue_coalesced(db: str, start_at: str, keys: str) -> None:
    store = liteq.SQLiteStore(db)
    while time.time() < float(start_at):  # all processes collide at the same moment
        time.sleep(0.0005)
    for key in keys.split(","):
        store.enqueue(Noop(), coalesce_id=key)


def enqueue_logs(db: str, log: str, count: str) -> None:
    store = liteq.SQLiteStore(db)
    store.enqueue_many([Logs(log) for _ in range(int(count))])


def work(db: str) -> None:
    store = liteq.SQLiteStore(db)
    sys.exit(liteq.Worker(store, exit_if_no_jobs=True, jitter=False).start())


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
