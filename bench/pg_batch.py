"""Where a PostgreSQL batch of 100 goes: a Worker at prefetch=100, the store's calls alone,
and the raw psycopg floor, with their CPU; then the claim statement's own time on the
server against the floor's (with --apart, also under each change of VARIANTS, one at a
time: what the claim's time is made of).

    python bench/pg_batch.py                 # about two minutes
    python bench/pg_batch.py --rounds 5 --dsn postgresql://user@host/db
    python bench/pg_batch.py --rounds 0 --apart   # only the claim, taken apart; ~2 min
    python bench/pg_batch.py --rounds 0 --statements   # a batch's round trips; ~1 min
    python bench/pg_batch.py --rounds 0 --store-apart 6  # the store's batch, apart; ~6 min

Each round drains 30,000 no-op jobs three ways, in turns, each in a schema of its own
(dropped after): `Worker(prefetch=100)`; `store.complete_and_claim` in a loop with no job
run (what the store costs a batch, the Worker's Python left out); and bench/postgres.py's
floor (claim 100 in a transaction, then delete them). Per job: wall time, this
process's user and system CPU, and the server's CPU (its processes', when it runs on this
host: else nan). With client and server taking turns, the wall is about the two CPUs'
sum, which a machine whose speed moves between runs shakes less than the wall.

Then `EXPLAIN ANALYZE` of 150 claims of 100 on a queue of 20,000 (committed, so that each
finds fresh rows), liteq's claim statement and the floor's: the medians of the server's
execution time, and of liteq's counting trigger within it.

With --store-apart, after the drains: the store's calls alone again with a trigger
disabled or an index dropped at a time (STORE_VARIANTS), by the server's CPU, which the
EXPLAIN of the claim cannot show for the batch's delete.

With --statements, a batch's round trips instead, timed from this process (the wait for
the server and psycopg's handling of the reply): the store's calls alone and the floor's,
each statement's milliseconds per batch, and the batch's wall time less their sum (the
Python around them). This says what a batch at a given ratio to the floor leaves for each.

The server: as bench/postgres.py finds it (--dsn, LITEQ_BENCH_POSTGRES, or tests/pg.py).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import postgres  # noqa: E402 - after the path is set
from liteq.stores.postgres.queries import queries  # noqa: E402

JOBS = 30_000


class ServerClock:
    """The CPU time of the server's processes, when it runs on this host (else NaN): those
    alive (backends, the WAL writer, the checkpointer) and those that exited (autovacuum
    workers), which their postmaster has reaped. Less shaken than wall time by a machine
    whose speed moves between runs: what a batch costs the server, whatever it waits on."""

    def __init__(self, dsn: str) -> None:
        with psycopg.connect(dsn) as conn:
            pid = conn.info.backend_pid
            try:
                self._postmaster: psutil.Process | None = psutil.Process(pid).parent()
            except psutil.Error:  # (not on this host)
                self._postmaster = None

    def seconds(self) -> float:
        postmaster = self._postmaster
        if postmaster is None:
            return math.nan
        with postmaster.oneshot():
            own = postmaster.cpu_times()
            total = own.user + own.system + own.children_user + own.children_system
        for child in postmaster.children():
            try:
                times = child.cpu_times()
            except psutil.Error:  # (exited meanwhile: its time is the postmaster's now)
                continue
            total += times.user + times.system
        return total


SERVER: ServerClock | None = None


def timed(fn: Callable[[], object]) -> tuple[float, float, float, float]:
    """fn's wall, user and system time, and the server's CPU, in µs per job."""
    assert SERVER is not None
    before, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    server = SERVER.seconds()
    fn()
    server = SERVER.seconds() - server
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    return tuple(  # type: ignore[return-value]
        x / JOBS * 1e6
        for x in (
            wall,
            after.ru_utime - before.ru_utime,
            after.ru_stime - before.ru_stime,
            server,
        )
    )


def worker(dsn: str) -> tuple[float, float, float, float]:
    with postgres.schema(dsn) as s:
        store = postgres.liteq.PostgresStore(dsn, schema=s)
        postgres.liteq_enqueue_many(store, JOBS)
        got = timed(lambda: postgres.liteq_drain(store, 100))
        store.close()
    return got


def store_alone(
    dsn: str, triggers: tuple[str, ...] = (), indexes: tuple[str, ...] = ()
) -> tuple[float, float, float, float]:
    """The store's calls alone; with those triggers disabled and indexes dropped."""

    def loop() -> None:
        done: list[postgres.liteq.ManagedJob] = []
        while True:
            _, done = store.complete_and_claim(done, "bench", None, 30.0, 100)
            if not done:
                return

    with postgres.schema(dsn) as s:
        store = postgres.liteq.PostgresStore(dsn, schema=s)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for trigger in triggers:
                conn.execute(f'ALTER TABLE "{s}".jobs DISABLE TRIGGER {trigger}'.encode())
            for index in indexes:
                conn.execute(f'DROP INDEX "{s}".{index}'.encode())
        postgres.liteq_enqueue_many(store, JOBS)
        got = timed(loop)
        store.close()
    return got


def floor(dsn: str) -> tuple[float, float, float, float]:
    with postgres.schema(dsn) as s:
        conn = postgres.floor_conn(dsn, s)
        postgres.floor_enqueue_batched(conn, s, JOBS)
        got = timed(lambda: postgres.floor_drain(conn, s, JOBS, 100))
        conn.close()
    return got


#: Changes to liteq's claim, one at a time, to see what its time on the server is made of:
#: (triggers disabled, indexes dropped, the statement rewritten, the table's fillfactor).
ROW_TRIGGERS = ("jobs_queued_again", "jobs_done", "jobs_released")
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[[str], str], int | None]] = {
    "as it is": ((), (), str, None),
    "without the counting trigger": (("jobs_count_update",), (), str, None),
    "without the row triggers": (ROW_TRIGGERS, (), str, None),
    "without the index of active jobs": ((), ("jobs_active",), str, None),
    "returning only the id": (
        (),
        (),
        lambda sql: sql[: sql.index("RETURNING")] + "RETURNING j.id",
        None,
    ),
    "without the paused-queue check": (
        (),
        (),
        lambda sql: re.sub(r"AND NOT EXISTS \(SELECT 1 FROM \S+ AS q WHERE[^)]*\)", "", sql),
        None,
    ),
    "fillfactor 80": ((), (), str, 80),
    "triggers, that index and RETURNING all off": (
        ("jobs_count_update", *ROW_TRIGGERS),
        ("jobs_active",),
        lambda sql: sql[: sql.index("RETURNING")] + "RETURNING j.id",
        None,
    ),
}


#: The same taken from the store's whole batch (its one statement), measured by the server's
#: CPU: the parts that a claim's EXPLAIN leaves out (the delete, its counting trigger).
STORE_VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "as it is": ((), ()),
    "without the counting triggers": (("jobs_count_update", "jobs_count_delete"), ()),
    "without the row triggers": (ROW_TRIGGERS, ()),
    "without the index of active jobs": ((), ("jobs_active",)),
    "without the other partial indexes": ((), ("jobs_expiry", "jobs_erred", "jobs_coalesce")),
}


def store_apart(dsn: str, rounds: int) -> None:
    """The store's calls alone under each of STORE_VARIANTS, in turns; medians."""
    got: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in STORE_VARIANTS}
    names = list(STORE_VARIANTS)
    for turn in range(rounds):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            got[name].append(store_alone(dsn, *STORE_VARIANTS[name]))
    print(
        f"\n| the store's calls alone, {rounds} rounds (µs per job) | wall | client CPU | server CPU |"
    )
    print("|---|---|---|---|")
    for name, values in got.items():
        wall, user, system, server = (statistics.median(v[i] for v in values) for i in range(4))
        print(f"| {name} | {wall:.1f} | {user + system:.1f} | {server:.1f} |")


def claims(dsn: str, apart: bool) -> None:
    """The server's time for one claim of 100, liteq's statement and the floor's; with
    `apart`, liteq's again under each of VARIANTS."""
    with postgres.schema(dsn) as s:
        conn = postgres.floor_conn(dsn, s)
        postgres.floor_enqueue_batched(conn, s, 20_000)
        theirs = explained(conn, postgres.FLOOR_CLAIM.format(s=s), lambda now: (now, 100))
        conn.close()
    print(f"| one claim of 100, server execution (median of 130): the floor | {theirs[0]:.2f} ms |")
    for name, (triggers, indexes, rewrite, fillfactor) in VARIANTS.items():
        with postgres.schema(dsn) as s:
            store = postgres.liteq.PostgresStore(dsn, schema=s)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(queries(s).SESSION_SETTINGS.encode())
                if fillfactor is not None:
                    conn.execute(f'ALTER TABLE "{s}".jobs SET (fillfactor = {fillfactor})'.encode())
                postgres.liteq_enqueue_many(store, 20_000)
                for trigger in triggers:
                    conn.execute(f'ALTER TABLE "{s}".jobs DISABLE TRIGGER {trigger}'.encode())
                for index in indexes:
                    conn.execute(f'DROP INDEX "{s}".{index}'.encode())
                ours = explained(conn, rewrite(queries(s).CLAIM_ANY), _claim_args)
            store.close()
        print(
            f"| liteq's, {name} | {ours[0]:.2f} ms (counting trigger {ours[1]:.2f} ms) "
            f"| {ours[0] / theirs[0]:.2f}x the floor's |"
        )
        if not apart:
            return


def _claim_args(now: float) -> dict[str, object]:
    return {
        "now": now,
        "limit": 100,
        "owner": "bench",
        "lease_until": now + 30,
        "lease_mono": time.monotonic() + 30,
        "mono": time.monotonic(),
    }


def explained(
    conn: psycopg.Connection[tuple[object, ...]], sql: str, args: Callable[[float], object]
) -> tuple[float, float]:
    """Medians of the execution time and of the counting trigger's time (ms), the first 20
    of 150 claims left out (the plan's and the caches' warm-up)."""
    runs: list[tuple[float, float]] = []
    for _ in range(150):
        conn.execute(b"BEGIN")
        plan = "\n".join(
            str(row[0])
            for row in conn.execute(f"EXPLAIN (ANALYZE) {sql}".encode(), args(time.time()))  # type: ignore[arg-type]
        )
        conn.execute(b"COMMIT")
        total = re.search(r"Execution Time: ([\d.]+)", plan)
        trigger = re.search(r"Trigger jobs_count_update: time=([\d.]+)", plan)
        runs.append(
            (float(total.group(1)) if total else 0.0, float(trigger.group(1)) if trigger else 0.0)
        )
    kept = runs[20:]
    return statistics.median(r[0] for r in kept), statistics.median(r[1] for r in kept)


def statements(dsn: str) -> None:
    """Per batch of 100: the milliseconds of each statement (client-side: sent to reply
    handled), for the store's calls alone and for the floor, and what the rest took."""
    spent: dict[str, float] = collections.defaultdict(float)
    execute = psycopg.Cursor.execute

    def timed_execute(self: psycopg.Cursor[Any], query: Any, *args: Any, **kw: Any) -> Any:
        began = time.perf_counter()
        try:
            return execute(self, query, *args, **kw)
        finally:
            text = query.decode() if isinstance(query, bytes) else str(query)
            spent[" ".join(text.split()[:2])] += time.perf_counter() - began

    def store_batches() -> int:
        done: list[postgres.liteq.ManagedJob] = []
        batches = 0
        while True:
            _, done = store.complete_and_claim(done, "bench", None, 30.0, 100)
            batches += 1
            if not done:
                return batches

    def floor_batches() -> int:
        # bench/postgres.py's floor_drain, each of its round trips under the same timer.
        claim, delete = postgres.FLOOR_CLAIM.format(s=s), postgres.FLOOR_DELETE.format(s=s)
        cursor = conn.cursor()
        for _ in range(JOBS // 100):
            cursor.execute(b"BEGIN")
            rows = cursor.execute(claim.encode(), (time.time(), 100)).fetchall()
            cursor.execute(b"COMMIT")
            for row in rows:
                json.loads(str(row[1]))
            cursor.execute(delete.encode(), ([row[0] for row in rows],))
        return JOBS // 100

    def drained(batches_of: Callable[[], int]) -> tuple[int, float, dict[str, float]]:
        """How many batches, the wall time, and each statement's share of it."""
        spent.clear()
        began = time.perf_counter()
        batches = batches_of()
        return batches, time.perf_counter() - began, dict(spent)

    psycopg.Cursor.execute = timed_execute  # type: ignore[method-assign]
    try:
        for name in ("the store's calls alone", "raw psycopg floor"):
            with postgres.schema(dsn) as s:
                if name == "raw psycopg floor":
                    conn = postgres.floor_conn(dsn, s)
                    postgres.floor_enqueue_batched(conn, s, JOBS)
                    batches, wall, timed = drained(floor_batches)
                    conn.close()
                else:
                    store = postgres.liteq.PostgresStore(dsn, schema=s)
                    postgres.liteq_enqueue_many(store, JOBS)
                    batches, wall, timed = drained(store_batches)
                    store.close()
            print(f"\n| {name}: a batch of 100 | ms |\n|---|---|")
            for statement, seconds in sorted(timed.items(), key=lambda kv: -kv[1]):
                print(f"| {statement.replace(s, 's')} | {seconds / batches * 1e3:.2f} |")
            rest = wall - sum(timed.values())
            print(f"| the rest (Python) | {rest / batches * 1e3:.2f} |")
            print(f"| the batch | {wall / batches * 1e3:.2f} |")
    finally:
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="the server (default: see bench/postgres.py)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--apart", action="store_true", help="time liteq's claim under each of VARIANTS too"
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="instead of the claim's server time: a batch's round trips, each timed",
    )
    parser.add_argument(
        "--store-apart",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="then the store's batch under each of STORE_VARIANTS, in this many rounds",
    )
    args = parser.parse_args()
    dsn = postgres.server(args.dsn)
    global SERVER
    SERVER = ServerClock(dsn)
    measures = {"Worker, prefetch=100": worker, "the store's calls alone": store_alone}
    measures["raw psycopg floor"] = floor
    got: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in measures}
    for _ in range(args.rounds):
        for name, measure in measures.items():
            got[name].append(measure(dsn))
    if args.rounds:
        print(f"{postgres.where(dsn)}, {args.rounds} round(s), medians, µs per job")
        print(
            "| drain of 30,000, 100 a batch | wall | user CPU | system CPU | server CPU "
            "| all CPU | jobs/s |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, values in got.items():
            wall, user, system, server = (statistics.median(v[i] for v in values) for i in range(4))
            print(
                f"| {name} | {wall:.1f} | {user:.1f} | {system:.1f} | {server:.1f} "
                f"| {user + system + server:.1f} | {1e6 / wall:,.0f} |"
            )
    if args.statements:
        statements(dsn)
        return
    if args.store_apart:
        store_apart(dsn, args.store_apart)
        return
    print("\n| measure | time | |\n|---|---|---|")
    claims(dsn, args.apart)


if __name__ == "__main__":
    main()
