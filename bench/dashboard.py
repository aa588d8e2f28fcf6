"""How fast the dashboard's pages answer on a large queue (a million jobs by default).

    python bench/dashboard.py                    # a million jobs in a file: about a minute
    python bench/dashboard.py --jobs 100000
    python bench/dashboard.py --db postgresql://postgres@127.0.0.1/test?schema=bench_dash

It fills a new queue with jobs in four queues (90% completed, 1% failed with an error, the
rest queued), starts `liteq dashboard` on it, and times each page over real HTTP: the
first, median and worst of several requests, in milliseconds (the counts of the overview
and /metrics are shared and recounted at most every few seconds: a first request counts). The floor is the same server's
static stylesheet: what a request costs before liteq reads anything.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import liteq
from bench.jobs import Noop
from liteq.stores import BaseStore

ROOT = Path(__file__).resolve().parents[1]
QUEUES = ("mail", "images", "reports", "video")


def fill(store: BaseStore, jobs: int) -> None:
    batch = 10_000
    for start in range(0, jobs, batch):
        store.enqueue_many(
            [Noop() for _ in range(min(batch, jobs - start))],
            queue=QUEUES[(start // batch) % len(QUEUES)],
            delete_on_complete=False,
        )
    # Finished jobs, written as a worker leaves them (the workers' own path would take as
    # long as running a million jobs).
    finish = (
        "UPDATE {t} SET status = 'completed', attempts = 1, started_at = created_at, "
        "finished_at = created_at + 1 WHERE id % 10 <> 0",
        "UPDATE {t} SET status = 'failed', attempts = 1, finished_at = created_at + 1, "
        "error = 'RuntimeError: upstream said ' || (id % 977) WHERE id % 100 = 0",
    )
    if isinstance(store, liteq.SQLiteStore):
        db = store._db()
        for sql in finish:
            db.execute("BEGIN IMMEDIATE")
            db.execute(sql.format(t="liteq_jobs"))
            db.execute("COMMIT")
        db.execute("ANALYZE")
    else:
        import psycopg

        with psycopg.connect(store.dsn, autocommit=True) as conn:  # type: ignore[attr-defined]
            for sql in finish:
                conn.execute(sql.format(t=f'"{store.schema}".jobs').encode())  # type: ignore[attr-defined]
            conn.execute(f'ANALYZE "{store.schema}".jobs'.encode())  # type: ignore[attr-defined]


def timed(port: int, path: str, times: int) -> tuple[float, float, float]:
    took = []
    for _ in range(times):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        took.append((time.perf_counter() - start) * 1000)
        conn.close()
        assert response.status == 200, (path, response.status)
    return took[0], statistics.median(took), max(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--db", help="a queue URL (default: a new file in a temporary directory)")
    parser.add_argument("--times", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or str(Path(tmp) / "big.sqlite")
        store = liteq.connect(url)
        started = time.perf_counter()
        fill(store, args.jobs)
        print(f"filled {args.jobs:,} jobs in {time.perf_counter() - started:.0f} s")
        from liteq.stores import JobQuery

        last = store.search(JobQuery(before=2**63 - 1, limit=1))
        some_id = last[0].id if last else 1
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "liteq",
                "dashboard",
                "--db",
                url,
                "--port",
                "0",
                "--import",
                "bench.jobs",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            line = ""
            while not line.startswith("open "):
                line = server.stdout.readline()
            port = int(line.split()[1].rstrip("/").rsplit(":", 1)[1])
            pages = [
                ("static stylesheet (floor)", "/static/liteq.css"),
                ("overview", "/"),
                ("overview refresh", "/live/overview"),
                ("metrics", "/metrics"),
                ("jobs, newest first", "/jobs"),
                ("jobs, oldest first", "/jobs?order=oldest"),
                ("jobs, a page deep in the middle", f"/jobs?before={some_id // 2}"),
                ("jobs of one queue", "/jobs?queue=reports"),
                ("failed jobs", "/jobs?status=failed"),
                ("queued jobs of one queue", "/jobs?queue=video&status=queued"),
                ("error text, common", "/jobs?error=upstream"),
                ("error text, rare (scans)", "/jobs?error=said+976"),
                ("error text, absent (scans all)", "/jobs?error=nowhere"),
                ("one job", f"/jobs/{some_id}"),
            ]
            print(f"{'page':<34}{'first ms':>10}{'median ms':>10}{'worst ms':>10}")
            for name, path in pages:
                first, median, worst = timed(port, path, args.times)
                print(f"{name:<34}{first:>10.1f}{median:>10.1f}{worst:>10.1f}")
        finally:
            server.terminate()
            server.wait(30)
            store.close()


if __name__ == "__main__":
    main()
