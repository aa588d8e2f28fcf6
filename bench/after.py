"""How long `store.enqueue(job, after=parents)` takes, by number of parents (a fan-in).

    python bench/after.py                 # SQLite and PostgreSQL, about 20 s
    python bench/after.py --dsn postgresql://user@host/db

The enqueue reads every parent, for update, and records a dependency row for each, in one
transaction: on PostgreSQL the parents' rows stay locked until it commits, and a worker
completing one of them waits that long. Each count of parents: 20 enqueues after the first
N of 1,000 queued jobs, median. The server: as bench/postgres.py finds it; each store in a
schema (or a temporary directory) of its own, dropped after.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import liteq  # noqa: E402 - after the path is set
from bench import postgres  # noqa: E402
from bench.jobs import Noop  # noqa: E402

PARENTS = (1, 10, 100, 1_000)


def medians(store: liteq.stores.BaseStore) -> list[float]:
    """Milliseconds of an enqueue after each count of PARENTS, medians of 20."""
    parents = store.enqueue_many([Noop(1) for _ in range(max(PARENTS))])
    got = []
    for n in PARENTS:
        times = []
        for _ in range(20):
            began = time.perf_counter()
            store.enqueue(Noop(2), after=parents[:n])
            times.append(time.perf_counter() - began)
        got.append(statistics.median(times) * 1e3)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="the server (default: see bench/postgres.py)")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, liteq.SQLiteStore(Path(tmp) / "q.sqlite") as store:
        rows["SQLite"] = medians(store)
    dsn = postgres.server(args.dsn)
    with postgres.schema(dsn) as s:
        store = liteq.PostgresStore(dsn, schema=s)
        rows[postgres.where(dsn)] = medians(store)
        store.close()
    print("| enqueue after N parents, median ms | " + " | ".join(f"{n:,}" for n in PARENTS) + " |")
    print("|---|" + "---|" * len(PARENTS))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")


if __name__ == "__main__":
    main()
