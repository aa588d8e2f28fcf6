"""What the kept counts of jobs cost and save: reading them on a big queue, and keeping them
on the hot paths.

    python bench/counts.py reads --jobs 1000000             # SQLite and PostgreSQL
    python bench/counts.py reads --jobs 10000000 --backend sqlite
    python bench/counts.py instructions                     # valgrind; ~10 min
    python bench/counts.py throughput                       # SQLite and PostgreSQL; ~3 min

`reads` builds a queue of N jobs with SQL (not enqueue: minutes, not hours), in ten queues
and three priorities: 75 % completed (kept), 19 % queued and due, 0.1 % queued for later,
5 % failed, the rest running; then times `store.summary()`, `admin.overview()` (what `liteq
status` and the dashboard's overview show), the text of /metrics, `store.count()`, and the
scan that `liteq db check` and the code before the counters do.

`instructions` counts CPU instructions per job (valgrind, as bench/instructions.py does) on
the same code twice: the schema as it is, and the same file with the counting triggers and
the index of erred jobs dropped (what the hot paths cost before them). Whole processes
vary by more than the difference for the cheap paths: `--in-sqlite` counts only inside
SQLite's sqlite3_step, where the counting is done, with a fixed hash seed.

`throughput` drains and enqueues jobs with and without the triggers in turns (one worker
process; on PostgreSQL also two), and prints the ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import apsw  # noqa: E402

import liteq  # noqa: E402
from liteq import admin  # noqa: E402
from liteq.stores.sqlite import queries, transaction  # noqa: E402
from liteq.web.metrics import exposition  # noqa: E402

DSN = "postgresql://postgres@127.0.0.1:5432/test"
SQLITE_TRIGGERS = ("liteq_jobs_deleted",)
PG_TRIGGERS = ("jobs_count_insert", "jobs_count_update", "jobs_count_delete")

# -- building a big queue with SQL ----------------------------------------------------------

# Ten queues, three priorities; 75 % completed (kept), 19 % queued, 5 % failed, 1 % running;
# one job in a thousand (of the queued ones) is due in an hour, the rest since a minute ago.
SQLITE_FILL = """
WITH RECURSIVE n(k) AS (SELECT ?1 UNION ALL SELECT k + 1 FROM n WHERE k < ?2)
INSERT INTO liteq_jobs (id, job_type, payload, queue, priority, status, attempts,
    max_attempts, run_at, created_at, delete_on_complete, finished_at)
SELECT k, 'bench.jobs.Noop', '{"type": "bench.jobs.Noop", "state": {"n": 1}}',
    'q' || (k % 10), k % 3,
    CASE WHEN k % 100 < 75 THEN 'completed' WHEN k % 100 < 94 THEN 'queued'
        WHEN k % 100 < 99 THEN 'failed' ELSE 'running' END, 0, 1,
    CASE WHEN k % 1000 = 80 THEN ?3 + 3600 ELSE ?3 - 60 END, ?3 - 60, 0, ?3
FROM n
"""

PG_FILL = """
INSERT INTO {s}.jobs (job_type, payload, queue, priority, status, attempts, max_attempts,
    run_at, created_at, delete_on_complete, finished_at)
SELECT 'bench.jobs.Noop', '{"type": "bench.jobs.Noop", "state": {"n": 1}}',
    'q' || (k %% 10), k %% 3,
    CASE WHEN k %% 100 < 75 THEN 'completed' WHEN k %% 100 < 94 THEN 'queued'
        WHEN k %% 100 < 99 THEN 'failed' ELSE 'running' END, 0, 1,
    CASE WHEN k %% 1000 = 80 THEN %(now)s + 3600 ELSE %(now)s - 60 END, %(now)s - 60, false,
    %(now)s
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS k
"""

SCAN = "SELECT queue, status, count(*) FROM {s}jobs GROUP BY queue, status"


def fill_sqlite(path: Path, jobs: int) -> liteq.SQLiteStore:
    liteq.SQLiteStore(path).close()
    conn = apsw.Connection(str(path))
    now = time.time()
    for lo in range(1, jobs + 1, 1_000_000):
        with conn:
            conn.execute(SQLITE_FILL, (lo, min(jobs, lo + 999_999), now))
    # Rows inserted with SQL are the uncounted tail until folded: count them, as a queue
    # filled by enqueues would be.
    with conn:
        for step in (queries.CLEAR_COUNTS, queries.MARK_COUNTED, queries.RECOUNT):
            conn.execute(step)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()
    return liteq.SQLiteStore(path)


def fill_postgres(schema: str, jobs: int) -> Any:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
    liteq.PostgresStore(DSN, schema=schema).close()
    now = time.time()
    with psycopg.connect(DSN, autocommit=True) as conn:
        for lo in range(1, jobs + 1, 1_000_000):
            hi = min(jobs, lo + 999_999)
            fill = PG_FILL.replace("{s}", schema)
            conn.execute(fill.encode(), {"now": now, "lo": lo, "hi": hi})
        conn.execute(f"VACUUM ANALYZE {schema}.jobs".encode())
    return liteq.PostgresStore(DSN, schema=schema)


def best_ms(fn: Callable[[], object], rounds: int = 5) -> float:
    """The fastest of `rounds` calls, in milliseconds (the first warms the caches)."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def reads(backend: str, jobs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="liteq-counts-"))
    schema = "bench_counts"
    start = time.perf_counter()
    if backend == "sqlite":
        store: Any = fill_sqlite(tmp / "q.sqlite", jobs)
        scan = SCAN.replace("{s}", "liteq_")

        def scan_all() -> object:
            return store._db().execute(scan).fetchall()
    else:
        store = fill_postgres(schema, jobs)
        scan = SCAN.replace("{s}", f"{schema}.")

        def scan_all() -> object:
            return store._rows(scan)

    built = time.perf_counter() - start
    assert store.count() == jobs, (store.count(), jobs)
    print(f"{backend}, {jobs:,} jobs (built in {built:.0f} s):", flush=True)
    for name, fn in (
        ("store.summary()", store.summary),
        ("admin.overview() (liteq status, the overview)", lambda: admin.overview(store)),
        ("/metrics text", lambda: exposition(admin.overview(store), store.totals())),
        ("store.count(queue='q3', status=QUEUED)", lambda: store.count("q3", liteq.Status.QUEUED)),
        ("a scan by queue and status (before the counters)", scan_all),
    ):
        print(f"  {name:<52} {best_ms(fn, 3 if 'scan' in name else 5):>9.1f} ms", flush=True)
    store.close()
    if backend == "sqlite":
        shutil.rmtree(tmp)
    else:
        import psycopg

        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())


# -- the hot paths: with the triggers, and without ---------------------------------------------

MEASURES = {
    "worker": "a Worker runs noop jobs, prefetch 1",
    "prefetch": "a Worker runs noop jobs, prefetch 100",
    "enqueue": "store.enqueue, one job per call",
    "enqueue_many": "store.enqueue_many, 100 jobs per call",
}
SMALL, LARGE = 500, 2_500


def strip_sqlite(path: Path) -> None:
    """Drop what keeps the counts: the file is then as the hot paths were before them.
    (Not liteq's statements that count the changes of status other than a claim's and a
    delete's, count_change: a noop job ends by a delete.)"""
    conn = apsw.Connection(str(path))
    for trigger in SQLITE_TRIGGERS:
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP INDEX liteq_jobs_erred")
    # (The index of active jobs gained the queue for the counts of running jobs.)
    conn.execute("DROP INDEX liteq_jobs_active")
    conn.execute(
        "CREATE INDEX liteq_jobs_active ON liteq_jobs (status)"
        " WHERE status IN ('running', 'wait_async')"
    )
    # (No folds either: the tail is never passed by a multiple of FOLD_EVERY.)
    conn.execute("UPDATE liteq_meta SET counted_to = 1 << 60")
    conn.close()


def run(measure: str, jobs: int, bare: bool) -> None:
    """The measured program (under valgrind): set up, then `jobs` jobs of `measure`."""
    from bench.jobs import Noop

    path = Path(tempfile.mkdtemp()) / "liteq.sqlite"
    liteq.SQLiteStore(path).close()
    if bare:
        strip_sqlite(path)
        transaction.COUNT_AS_BATCH = 1 << 60  # (and no batch counted by its size)
    store = liteq.SQLiteStore(path)
    store.enqueue_many([Noop(1) for _ in range(LARGE + 500)])
    if measure in ("worker", "prefetch"):
        liteq.Worker(
            store,
            exit_after_n_jobs=jobs,
            jitter=False,
            check_code=False,
            prefetch=100 if measure == "prefetch" else 1,
        ).start()
    elif measure == "enqueue":
        for _ in range(jobs):
            store.enqueue(Noop(1))
    else:
        for _ in range(jobs // 100):
            store.enqueue_many([Noop(1) for _ in range(100)])


def count(valgrind: str, measure: str, jobs: int, bare: bool, in_sqlite: bool) -> int:
    args = [sys.executable, __file__, "--run", measure, str(jobs), "bare" if bare else "kept"]
    where = ["--toggle-collect=sqlite3_step"] if in_sqlite else []
    proc = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *where, *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def instructions(measures: list[str], in_sqlite: bool) -> None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    print("instructions per job, without the counting triggers -> with them:", flush=True)
    for measure in measures:
        per_job = {}
        for bare in (True, False):
            small, large = (count(valgrind, measure, n, bare, in_sqlite) for n in (SMALL, LARGE))
            per_job[bare] = (large - small) / (LARGE - SMALL)
        ratio = per_job[False] / per_job[True]
        print(
            f"  {measure:<13} {per_job[True]:>9,.0f} -> {per_job[False]:>9,.0f}  "
            f"({ratio - 1:+.1%})   {MEASURES[measure]}",
            flush=True,
        )


# -- throughput, with and without, in turns --------------------------------------------------

WORK = """
import sys, liteq
sys.path.insert(0, {root!r})
import bench.jobs
store = liteq.connect(sys.argv[1])
liteq.Worker(store, exit_if_no_jobs=True, jitter=False, check_code=False).start()
"""


def drain_seconds(url: str, jobs: int, processes: int) -> tuple[float, float]:
    """(seconds to enqueue `jobs` one by one, seconds for `processes` workers to drain
    them, start-up included)."""
    from bench.jobs import Noop

    store = liteq.connect(url)
    start = time.perf_counter()
    for _ in range(jobs):
        store.enqueue(Noop(1))
    enqueued = time.perf_counter() - start
    store.close()
    code = WORK.format(root=str(ROOT))
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code, url]) for _ in range(processes)]
    for proc in procs:
        proc.wait()
    return enqueued, time.perf_counter() - start


def new_url(backend: str, bare: bool, turn: int) -> str:
    if backend == "sqlite":
        path = Path(tempfile.mkdtemp()) / "q.sqlite"
        liteq.SQLiteStore(path).close()
        if bare:
            strip_sqlite(path)
        return f"sqlite:///{path}"
    import psycopg

    schema = f"bench_counts_{'bare' if bare else 'kept'}_{turn}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
    liteq.PostgresStore(DSN, schema=schema).close()
    if bare:
        with psycopg.connect(DSN, autocommit=True) as conn:
            for trigger in PG_TRIGGERS:
                conn.execute(f"DROP TRIGGER {trigger} ON {schema}.jobs".encode())
    return f"{DSN}?schema={schema}"


def drop(url: str) -> None:
    if url.startswith("sqlite"):
        shutil.rmtree(Path(url.removeprefix("sqlite:///")).parent)
        return
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {url.rsplit('=', 1)[1]} CASCADE".encode())


def throughput(backends: list[str], jobs: int, turns: int) -> None:
    print(f"jobs/s, {jobs:,} jobs, median of {turns} turns, without -> with the triggers:")
    for backend in backends:
        for processes in (1, 2) if backend == "postgres" else (1,):
            got: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for turn in range(turns):
                for bare in (turn % 2 == 0, turn % 2 == 1):  # in turns, each first in half
                    url = new_url(backend, bare, turn)
                    got[bare].append(drain_seconds(url, jobs, processes))
                    drop(url)
            for i, what in enumerate(("enqueue, one per call", f"drain, {processes} worker(s)")):
                bare = statistics.median(jobs / g[i] for g in got[True])
                kept = statistics.median(jobs / g[i] for g in got[False])
                print(
                    f"  {backend:<8} {what:<24} {bare:>9,.0f} -> {kept:>9,.0f}  "
                    f"(ratio {kept / bare:.2f})",
                    flush=True,
                )


def main() -> None:
    if sys.argv[1:2] == ["--run"]:
        run(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "bare")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["reads", "instructions", "throughput"])
    parser.add_argument("measures", nargs="*", help="instructions: some of " + ", ".join(MEASURES))
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], action="append")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--in-sqlite", action="store_true", help="instructions in SQLite only")
    args = parser.parse_args()
    backends = args.backend or ["sqlite", "postgres"]
    if args.what == "reads":
        for backend in backends:
            reads(backend, args.jobs or 1_000_000)
    elif args.what == "instructions":
        instructions(args.measures or list(MEASURES), args.in_sqlite)
    else:
        throughput(backends, args.jobs or 5_000, args.turns)


if __name__ == "__main__":
    main()
