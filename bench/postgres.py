"""liteq on PostgreSQL beside pgqueuer at defaults, and against a raw psycopg floor.

    python bench/postgres.py                     # about six minutes
    python bench/postgres.py --quick             # smaller counts, one pass
    python bench/postgres.py --only defaults     # only beside pgqueuer (--only floor: the rest)
    python bench/postgres.py --dsn postgresql://user@host/db

At defaults: 20,000 no-op jobs, drained by each library's worker at its defaults (`liteq
work --burst`, whose workers size their claims, `--prefetch auto`; pgqueuer's drain mode), one and two processes, start-up included, rounds in
turns, medians. pgqueuer is installed on first use into the peers' virtualenv that
bench/coroutines.py makes (bench/.peers, outside git; --peers names another), and gets a
database of its own on the server, dropped after (the user needs CREATEDB).

The server: --dsn, else LITEQ_BENCH_POSTGRES, else what the tests use (tests/pg.py: a
server on 127.0.0.1:5432, or a throwaway cluster). Each measure runs in a schema of its own,
dropped after.

The floor is what any PostgreSQL queue must do, written directly with psycopg: a table with
a claim index; one INSERT per enqueue (autocommit); per job, a transaction that claims with
UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING, then a DELETE;
and the same in batches of 100. Its connection has liteq's planner settings, so that its
claims use the claim index as liteq's do. With the bench extra installed, procrastinate runs
the same single enqueues and drain beside it (in a database of its own, made and dropped:
the user needs CREATEDB). liteq does more per job (its fence, leases, attempts,
options, a notification per enqueue): the ratios say what that costs. Passes take turns,
and medians are reported: read the ratios, which compare runs made seconds apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import liteq  # noqa: E402 - after the path is set
from bench.jobs import Noop, Sleep, Stamp  # noqa: E402
from liteq.stores.postgres.link import where  # noqa: E402
from liteq.stores.postgres.queries import queries  # noqa: E402

PAYLOAD = json.dumps({"type": "bench.jobs.Noop", "state": {"n": 1}})
FLOOR_TABLE = (
    "CREATE TABLE {s}.jobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " queue text NOT NULL, priority bigint NOT NULL, status text NOT NULL,"
    " run_at double precision NOT NULL, payload text NOT NULL)"
)
FLOOR_INDEX = "CREATE INDEX ON {s}.jobs (priority DESC, run_at, id) WHERE status = 'queued'"
FLOOR_INSERT = (
    "INSERT INTO {s}.jobs (queue, priority, status, run_at, payload)"
    " VALUES ('default', 0, 'queued', %s, %s)"
)
FLOOR_CLAIM = (
    "UPDATE {s}.jobs SET status = 'running' WHERE id IN (SELECT id FROM {s}.jobs"
    " WHERE status = 'queued' AND run_at <= %s ORDER BY priority DESC, run_at, id"
    " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, payload"
)
FLOOR_DELETE = "DELETE FROM {s}.jobs WHERE id = ANY(%s)"


def server(dsn: str | None) -> str:
    """The server to measure on."""
    found = dsn or os.environ.get("LITEQ_BENCH_POSTGRES")
    if found:
        return found
    from tests import pg  # the tests' own finder (and throwaway cluster)

    found = pg.server()
    if found is None:
        raise SystemExit(pg.HOW)
    return found


@contextmanager
def schema(dsn: str) -> Iterator[str]:
    """A fresh schema's name, dropped after (a measure that fails too)."""
    name = f"bench_{os.getpid()}_{random.randrange(1 << 30)}"
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE".encode())


def rate(n: int, fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return n / (time.perf_counter() - began)


# -- the floor -------------------------------------------------------------------------
def floor_conn(dsn: str, s: str) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(queries(s).SESSION_SETTINGS.encode())  # the claim's plan, as liteq's
    conn.execute(f"CREATE SCHEMA {s}".encode())
    conn.execute(FLOOR_TABLE.format(s=s).encode())
    conn.execute(FLOOR_INDEX.format(s=s).encode())
    return conn


def floor_enqueue(conn: psycopg.Connection[tuple[object, ...]], s: str, n: int) -> None:
    sql = FLOOR_INSERT.format(s=s).encode()
    for _ in range(n):
        conn.execute(sql, (time.time(), PAYLOAD))


def floor_enqueue_batched(conn: psycopg.Connection[tuple[object, ...]], s: str, n: int) -> None:
    sql = FLOOR_INSERT.format(s=s).encode()
    cursor = conn.cursor()
    for _ in range(n // 100):
        with conn.transaction():
            cursor.executemany(sql, [(time.time(), PAYLOAD)] * 100)


def floor_drain(conn: psycopg.Connection[tuple[object, ...]], s: str, n: int, batch: int) -> None:
    claim, delete = FLOOR_CLAIM.format(s=s).encode(), FLOOR_DELETE.format(s=s).encode()
    for _ in range(n // batch):
        with conn.transaction():
            rows = conn.execute(claim, (time.time(), batch)).fetchall()
        for row in rows:
            json.loads(str(row[1]))
        conn.execute(delete, ([row[0] for row in rows],))


# -- liteq ----------------------------------------------------------------------------------
def liteq_enqueue(store: liteq.stores.BaseStore, n: int) -> None:
    for _ in range(n):
        store.enqueue(Noop(1))


def liteq_enqueue_many(store: liteq.stores.BaseStore, n: int) -> None:
    for _ in range(n // 100):
        store.enqueue_many([Noop(1) for _ in range(100)])


def liteq_drain(store: liteq.stores.BaseStore, prefetch: int) -> None:
    liteq.Worker(
        store, exit_if_no_jobs=True, jitter=False, handle_signals=False, prefetch=prefetch
    ).start()


def liteq_work(url: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *[sys.executable, "-m", "liteq", "work", "--db", url, "--import", "bench.jobs"],
            *["--no-jitter", "-q", *args],
        ],
        cwd=ROOT,
        start_new_session=True,
    )


def drain_in_processes(url: str, processes: int, n: int) -> float:
    """Jobs/s of `liteq work --burst --processes N` draining n 1 ms jobs."""
    with liteq.connect(url) as store:
        store.enqueue_many([Sleep(0.001) for _ in range(n)])
    began = time.perf_counter()
    work = liteq_work(url, "--processes", str(processes), "--burst")
    if work.wait() != 0:
        raise RuntimeError(f"liteq work exited {work.returncode}")
    return n / (time.perf_counter() - began)


def pickup(url: str, samples: int) -> list[float]:
    """Seconds from enqueue to start of a job, the worker idle (--wakeup-every 60: only a
    notification wakes it in time)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stamps.txt"
        work = liteq_work(url, "--wakeup-every", "60")
        try:
            store = liteq.connect(url)
            deadline = time.monotonic() + 30
            while not store.workers() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            for _ in range(samples):
                time.sleep(random.uniform(0.02, 0.2))
                store.enqueue(Stamp(str(out), time.time()))
                while not out.exists() or len(out.read_text().splitlines()) < _ + 1:
                    time.sleep(0.001)
            store.close()
        finally:
            os.killpg(work.pid, signal.SIGTERM)
            work.wait(30)
        return [float(line) for line in out.read_text().splitlines()]


# -- procrastinate, side by side ------------------------------------------------------------
def procrastinate_workload(dsn: str, n: int) -> tuple[float, float] | None:
    """procrastinate (the bench extra) on the same server: n jobs deferred one at a time, then
    drained by one worker (concurrency 1, jobs deleted when done, as liteq's are); None if
    it is not installed. It keeps its tables in a database's public schema: it gets a
    database of its own, dropped after."""
    try:
        from procrastinate import App, PsycopgConnector
    except ImportError:
        return None
    logging.getLogger("procrastinate").setLevel(logging.ERROR)  # (its advice on app layout)
    name = f"bench_procrastinate_{os.getpid()}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}".encode())
    try:
        app = App(connector=PsycopgConnector(conninfo=make_conninfo(dsn, dbname=name)))

        @app.task(name="noop")
        def noop(n: int) -> None:
            pass

        with app.open():
            app.schema_manager.apply_schema()
            deferred = rate(n, lambda: [noop.defer(n=1) for _ in range(n)])
            drained = rate(
                n,
                lambda: app.run_worker(
                    wait=False, concurrency=1, delete_jobs="always", install_signal_handlers=False
                ),
            )
        return deferred, drained
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


# -- pgqueuer, side by side, each at its defaults ---------------------------------------------
# (Run as `pgq run bench_pgq:main --mode drain` does, through pgqueuer.run: pgqueuer
# 1.6.0's command line fails at its default log level.)
PGQUEUER_APP = """
import asyncio, os
from contextlib import asynccontextmanager

import psycopg
import pgqueuer
from pgqueuer import PgQueuer, PsycopgDriver
from pgqueuer.types import QueueExecutionMode


@asynccontextmanager
async def main():
    conn = await psycopg.AsyncConnection.connect(os.environ["BENCH_DSN"], autocommit=True)
    pgq = PgQueuer(PsycopgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job) -> None:
        pass

    yield pgq
    await conn.close()


if __name__ == "__main__":
    asyncio.run(pgqueuer.run("bench_pgq:main", mode=QueueExecutionMode.drain))
"""
PGQUEUER_ENQUEUE = """
import asyncio, os, sys

import psycopg
from pgqueuer import PsycopgDriver, Queries


async def main(n: int) -> None:
    conn = await psycopg.AsyncConnection.connect(os.environ["BENCH_DSN"], autocommit=True)
    queries = Queries(PsycopgDriver(conn))
    for done in range(0, n, 1000):
        k = min(1000, n - done)
        await queries.enqueue(["noop"] * k, [None] * k, [0] * k)


asyncio.run(main(int(sys.argv[1])))
"""


def pgqueuer_python(venv: Path) -> Path:
    """The peers' interpreter (bench/coroutines.py's environment), pgqueuer in it."""
    from bench.coroutines import peers_python

    return peers_python(venv, "pgqueuer")


def version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()


def drain_at_defaults(system: str, dsn: str, python: Path, processes: int, n: int) -> float:
    """Jobs/s of `processes` worker processes at their defaults draining n no-op jobs, from
    their start (start-up included) until no job is left: `liteq work --processes N
    --burst` (in a schema of its own), or N pgqueuer workers in drain mode (in a database of
    its own). Both exit once the queue is empty; pgqueuer only seconds later, which is not
    counted."""
    from bench.coroutines import database

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        if system == "liteq":
            s = stack.enter_context(schema(dsn))
            url, db = with_schema(dsn, s), dsn
            with liteq.connect(url) as store:
                for _ in range(n // 1000):
                    store.enqueue_many([Noop(1) for _ in range(1000)])
            left = f"SELECT count(*) FROM {s}.jobs WHERE status IN ('queued', 'running')"  # noqa: S608
            began = time.perf_counter()
            # At its defaults: claims sized by each worker (--prefetch auto).
            workers = [liteq_work(url, "--processes", str(processes), "--burst")]
        else:
            db = stack.enter_context(database(dsn, pg_name()))
            env = {**os.environ, "BENCH_DSN": db}
            left = "SELECT count(*) FROM pgqueuer"
            env["PYTHONPATH"] = tmp
            Path(tmp, "bench_pgq.py").write_text(PGQUEUER_APP)
            Path(tmp, "bench_pgq_enqueue.py").write_text(PGQUEUER_ENQUEUE)
            pgq = str(python.parent / "pgq")
            install = [pgq, "--pg-dsn", env["BENCH_DSN"], "install"]
            subprocess.run(install, check=True, env=env, capture_output=True)
            enqueue = [str(python), "bench_pgq_enqueue.py", str(n)]
            subprocess.run(enqueue, check=True, env=env, cwd=tmp)
            run = [str(python), "bench_pgq.py"]
            began = time.perf_counter()
            workers = [
                subprocess.Popen(run, cwd=tmp, env=env, stdout=subprocess.DEVNULL)
                for _ in range(processes)
            ]
        with psycopg.connect(db, autocommit=True) as conn:
            while conn.execute(left.encode()).fetchone() != (0,):
                time.sleep(0.01)
        took = time.perf_counter() - began
        for worker in workers:
            if worker.wait() != 0:
                raise RuntimeError(f"{system}'s worker exited {worker.returncode}")
        return n / took


def pg_name() -> str:
    return f"bench_pgqueuer_{os.getpid()}_{random.randrange(1 << 20)}"


def with_schema(dsn: str, s: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}schema={s}"


def at_defaults(dsn: str, venv: Path, n: int, rounds: int) -> None:
    """liteq and pgqueuer, each's worker command at its defaults, in turns; medians."""
    python = pgqueuer_python(venv)
    got: dict[tuple[str, int], list[float]] = {}
    for turn in range(rounds):
        runs = [(system, p) for p in (1, 2) for system in ("liteq", "pgqueuer")]
        for system, processes in runs[turn % 2 :] + runs[: turn % 2]:
            rate_ = drain_at_defaults(system, dsn, python, processes, n)
            got.setdefault((system, processes), []).append(rate_)
            print(f"  {system}, {processes} process(es): {rate_:,.0f} jobs/s", flush=True)
    print(
        f"\n{n:,} no-op jobs, each worker command at its defaults, "
        "start-up included, "
        f"median of {rounds}; pgqueuer {version(python, 'pgqueuer')}\n"
        "| worker processes | pgqueuer | liteq | liteq / pgqueuer |\n|---|---|---|---|"
    )
    for processes in (1, 2):
        ours = statistics.median(got["liteq", processes])
        theirs = statistics.median(got["pgqueuer", processes])
        print(f"| {processes} | {theirs:,.0f} jobs/s | {ours:,.0f} jobs/s | {ours / theirs:.2f} |")


# -- the run --------------------------------------------------------------------------------
def one_pass(dsn: str, n: int, batched: int) -> dict[str, float]:
    """One measure of each, the floor and liteq in turn, each on fresh tables."""
    got: dict[str, float] = {}
    with schema(dsn) as s:
        conn = floor_conn(dsn, s)
        got["floor enqueue"] = rate(n, lambda: floor_enqueue(conn, s, n))
        got["floor drain"] = rate(n, lambda: floor_drain(conn, s, n, 1))
        got["floor enqueue 100"] = rate(batched, lambda: floor_enqueue_batched(conn, s, batched))
        got["floor drain 100"] = rate(batched, lambda: floor_drain(conn, s, batched, 100))
        conn.close()
    with schema(dsn) as s:
        store = liteq.PostgresStore(dsn, schema=s)
        got["liteq enqueue"] = rate(n, lambda: liteq_enqueue(store, n))
        got["liteq drain"] = rate(n, lambda: liteq_drain(store, 1))
        got["liteq enqueue_many"] = rate(batched, lambda: liteq_enqueue_many(store, batched))
        got["liteq drain prefetch"] = rate(batched, lambda: liteq_drain(store, 100))
        store.close()
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="the server (default: see the module's docstring)")
    parser.add_argument("--quick", action="store_true", help="small counts, one pass")
    parser.add_argument(
        "--only",
        choices=["floor", "defaults"],
        help="only the measures against the floor, or only those at defaults beside pgqueuer",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds at defaults (default 3)")
    parser.add_argument("--peers", type=Path, default=ROOT / "bench" / ".peers")
    args = parser.parse_args()
    dsn = server(args.dsn)
    if args.only != "floor":
        jobs = 2_000 if args.quick else 20_000
        at_defaults(dsn, args.peers, jobs, 1 if args.quick else args.rounds)
    if args.only == "defaults":
        return
    n, batched, passes = (500, 5_000, 1) if args.quick else (3_000, 30_000, 3)
    print(f"{where(dsn)}, {passes} pass(es)", flush=True)
    results: dict[str, list[float]] = {}
    for _ in range(passes):
        for name, value in one_pass(dsn, n, batched).items():
            results.setdefault(name, []).append(value)
    med = {name: statistics.median(values) for name, values in results.items()}
    rows = [
        ("enqueue, one per transaction", "floor enqueue", "liteq enqueue"),
        ("claim + complete, one job per transaction", "floor drain", "liteq drain"),
        ("enqueue, 100 per transaction", "floor enqueue 100", "liteq enqueue_many"),
        (
            "claim + complete, 100 per transaction (prefetch)",
            "floor drain 100",
            "liteq drain prefetch",
        ),
    ]
    print(
        "| measure | raw psycopg floor | liteq | liteq / floor (each pass's) |\n|---|---|---|---|"
    )
    for what, floor, ours in rows:
        # (Each pass's ratio too: on a shared machine they spread more than the medians show.)
        each = ", ".join(f"{o / f:.2f}" for f, o in zip(results[floor], results[ours], strict=True))
        print(
            f"| {what} | {med[floor]:,.0f} jobs/s | {med[ours]:,.0f} jobs/s "
            f"| {med[ours] / med[floor]:.2f} ({each}) |"
        )

    with schema(dsn) as s:
        url = f"{dsn}{'&' if '?' in dsn else '?'}schema={s}"
        jobs = 1_000 if args.quick else 4_000
        one = drain_in_processes(url, 1, jobs)
        four = drain_in_processes(url, 4, jobs)
        print(
            f"| `liteq work`, 1 ms jobs, 4 processes / 1 | {one:,.0f} jobs/s | {four:,.0f} jobs/s | {four / one:.2f} |"
        )
        other = procrastinate_workload(dsn, n)
        if other is not None:
            print(
                f"| liteq / procrastinate: enqueue one at a time | | "
                f"{med['liteq enqueue'] / other[0]:.2f}x ({other[0]:,.0f} jobs/s) | |\n"
                f"| liteq / procrastinate: one worker runs them | | "
                f"{med['liteq drain'] / other[1]:.2f}x ({other[1]:,.0f} jobs/s) | |"
            )
        stamps = sorted(pickup(url, 30 if args.quick else 150))
        p50, p90 = stamps[len(stamps) // 2], stamps[int(len(stamps) * 0.9)]
        print(
            f"| pick-up latency of an idle worker (LISTEN/NOTIFY) | | p50 {p50 * 1000:.1f} ms, "
            f"p90 {p90 * 1000:.1f} ms, max {stamps[-1] * 1000:.1f} ms | |"
        )


if __name__ == "__main__":
    main()
