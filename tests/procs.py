"""Entry points for the tests' child processes: `python -m tests.procs COMMAND DB ...`
(DB: a path, or a store URL)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import apsw

import liteq
from tests.jobs import Logs, Noop, Traced


def enqueue_coalesced(db: str, start_at: str, keys: str) -> None:
    store = liteq.connect(db)
    while time.time() < float(start_at):  # all processes collide at the same moment
        time.sleep(0.0005)
    for key in keys.split(","):
        store.enqueue(Noop(), coalesce_id=key)


def enqueue_logs(db: str, log: str, count: str) -> None:
    store = liteq.connect(db)
    # 10 ms each: long enough that every worker process is up before the queue drains.
    store.enqueue_many([Logs(log, 0.01) for _ in range(int(count))])


def work(db: str) -> None:
    store = liteq.connect(db)
    sys.exit(liteq.Worker(store, exit_if_no_jobs=True, jitter=False).start())


def produce(db: str, trace_path: str, spec_path: str, out_path: str, start_at: str) -> None:
    """Enqueue the jobs of a spec file ([priority, coalesce_id, run_at] each); write their ids."""
    store = liteq.connect(db)
    specs = json.loads(Path(spec_path).read_text())
    while time.time() < float(start_at):  # every producer starts at the same moment
        time.sleep(0.0005)
    ids = [
        store.enqueue(Traced(trace_path, 0.005), priority=p, coalesce_id=cid, run_at=due).id
        for p, cid, due in specs
    ]
    Path(out_path).write_text(json.dumps({"ids": ids, "done_at": time.time()}))


def produce_until_refused(db: str, trace_path: str, out_path: str) -> None:
    """Enqueue a job every millisecond until the store refuses; say how many it took.
    `out_path`.ready appears once the first is in (the file is open from then on)."""
    store = liteq.SQLiteStore(db)
    acked = 0
    try:
        while True:
            store.enqueue(Traced(trace_path, 0.002))
            acked += 1
            if acked == 1:
                Path(f"{out_path}.ready").touch()
            time.sleep(0.001)
    except liteq.StoreError as exc:
        result = {"acked": acked, "kind": type(exc).__name__, "error": str(exc)}
        Path(out_path).write_text(json.dumps(result))


def churn_one(db: str, priority: str, ready: str) -> None:
    """Until killed: enqueue one job at `priority`, claim it, complete it, again and again
    (its priority's group of queued jobs forms and empties, as fast as it can)."""
    store = liteq.SQLiteStore(db)
    while True:
        store.enqueue(Noop(), priority=int(priority))
        claimed = store.claim("churn", lease=30)
        if claimed is not None:
            store.complete(claimed)
        Path(ready).touch()


def hold_write(db: str, holder: str, ready: str) -> None:
    """Hold the file's write lock until killed: as a liteq writer mid-transaction does
    (`liteq`), or as a program that knows nothing of liteq's writer gate (`sqlite`)."""
    if holder == "liteq":
        store = liteq.SQLiteStore(db)
        with store._transaction():
            Path(ready).touch()
            time.sleep(3600)
    conn = apsw.Connection(db)
    conn.execute("BEGIN IMMEDIATE")
    Path(ready).touch()
    time.sleep(3600)


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
