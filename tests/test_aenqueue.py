"""The async API for applications: `await store.aenqueue`, `store.aget`, `task.aenqueue`,
`task.aenqueue_with`, on every store, from real event loops (asyncio.run)."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import liteq
from liteq import Status
from tests import pg
from tests.contract.test_bad_values import BAD_OPTIONS
from tests.helpers import ROOT, wait_until
from tests.jobs import Noop, Record

#: What the tasks below have run (in this process).
ADDED: list[int] = []


def add(a: int, b: int = 0) -> None:
    ADDED.append(a + b)


def test_aenqueue_and_aget_round_trip(store: liteq.stores.BaseStore) -> None:
    async def main() -> tuple[liteq.ManagedJob, liteq.ManagedJob]:
        mjob = await store.aenqueue(Noop(7), queue="q", priority=3, max_attempts=2, delay=60)
        return mjob, await store.aget(mjob.id)

    mjob, got = asyncio.run(main())
    assert mjob.status is Status.QUEUED and mjob.id > 0
    assert (got.id, got.queue, got.priority, got.max_attempts) == (mjob.id, "q", 3, 2)
    assert got.run_at == mjob.run_at and got.created_at == mjob.created_at
    assert got.job is not None and got.job.n == 7  # type: ignore[attr-defined]
    assert store.get(mjob.id).record == got.record  # what the blocking API reads


def test_aget_refuses_and_misses_as_get_does(store: liteq.stores.BaseStore) -> None:
    with pytest.raises(liteq.JobNotFound, match="no job with id 12345"):
        asyncio.run(store.aget(12345))
    with pytest.raises(TypeError, match="a job id is an int"):
        asyncio.run(store.aget("1"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="job ids run from 1"):
        asyncio.run(store.aget(0))


@pytest.mark.parametrize(("options", "error", "words"), BAD_OPTIONS[::3])
def test_aenqueue_refuses_a_bad_option_writing_nothing(
    store: liteq.stores.BaseStore, options: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        asyncio.run(store.aenqueue(Noop(), **options))
    assert store.count() == 0


def test_aenqueue_refuses_an_unencodable_state_writing_nothing(
    store: liteq.stores.BaseStore,
) -> None:
    with pytest.raises(TypeError):
        asyncio.run(store.aenqueue(Noop(object())))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        asyncio.run(store.aenqueue(Noop(), coalesce_id="c", not_an_option=1))  # type: ignore[call-arg]
    assert store.count() == 0


def test_aenqueue_coalesces(store: liteq.stores.BaseStore) -> None:
    async def main() -> list[liteq.ManagedJob]:
        first = await store.aenqueue(Noop(1), coalesce_id="nightly")
        again = await store.aenqueue(Noop(2), coalesce_id="nightly")
        at_once = await asyncio.gather(
            *(store.aenqueue(Noop(3 + i), coalesce_id="nightly") for i in range(20))
        )
        return [first, again, *at_once]

    jobs = asyncio.run(main())
    assert {mjob.id for mjob in jobs} == {jobs[0].id}
    # (the holder, as it was enqueued)
    assert jobs[1].job is not None and jobs[1].job.n == 1  # type: ignore[attr-defined]
    assert store.count() == 1
    assert store.get_by_coalesce_id("nightly").id == jobs[0].id  # type: ignore[union-attr]


def test_many_concurrent_aenqueues_each_land_once(store: liteq.stores.BaseStore) -> None:
    async def main() -> list[liteq.ManagedJob]:
        return await asyncio.gather(*(store.aenqueue(Noop(i)) for i in range(200)))

    jobs = asyncio.run(main())
    assert len({mjob.id for mjob in jobs}) == 200
    assert [mjob.job.n for mjob in jobs] == list(range(200))  # type: ignore[union-attr]
    stored = sorted(m.job.n for m in store.jobs())  # type: ignore[union-attr]
    assert stored == list(range(200))


def test_loops_in_several_threads_share_a_store(store: liteq.stores.BaseStore) -> None:
    """Each thread runs a loop of its own (PostgreSQL: a connection per loop), beside
    blocking enqueues from this thread: every job lands once."""
    ids: list[int] = []
    errors: list[BaseException] = []

    def in_a_loop(base: int) -> None:
        async def main() -> list[liteq.ManagedJob]:
            return await asyncio.gather(*(store.aenqueue(Noop(base + i)) for i in range(50)))

        try:
            ids.extend(mjob.id for mjob in asyncio.run(main()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=in_a_loop, args=(1000 * t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    ids.extend(store.enqueue(Noop(-i)).id for i in range(50))
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(ids) == len(set(ids)) == 250 == store.count()


def test_hooks_run_for_aenqueue(make_store: Any) -> None:
    seen: list[tuple[int, Status, str | None]] = []
    store = make_store(on_status_change=lambda mjob, old, msg: seen.append((mjob.id, old, msg)))
    mjob = asyncio.run(store.aenqueue(Noop()))
    assert seen == [(mjob.id, Status.UNQUEUED, "enqueued")]


def test_task_aenqueue_and_aenqueue_with(store: liteq.stores.BaseStore) -> None:
    task = store.task(queue="sums", priority=1)(add)

    async def main() -> tuple[liteq.ManagedJob, liteq.ManagedJob]:
        return await task.aenqueue(1, b=2), await task.aenqueue_with((3,), {"b": 4}, priority=9)

    plain, with_options = asyncio.run(main())
    assert (plain.queue, plain.priority) == ("sums", 1)
    assert (with_options.queue, with_options.priority) == ("sums", 9)
    assert store.get(plain.id).job.kwargs == {"b": 2}  # type: ignore[union-attr]
    ADDED.clear()
    assert liteq.Worker(store, exit_if_no_jobs=True, jitter=False).start() == 0
    assert sorted(ADDED) == [3, 7]
    with pytest.raises(TypeError):
        asyncio.run(task.aenqueue(object()))
    assert store.count() == 0


def test_aenqueued_jobs_run_in_a_worker(store: liteq.stores.BaseStore) -> None:
    Record.ran.clear()
    asyncio.run(store.aenqueue(Record("a")))
    assert liteq.Worker(store, exit_if_no_jobs=True, jitter=False).start() == 0
    assert Record.ran == ["a"]


# -- SQLite: the loop goes on while a write waits for the file's lock --------------------


@pytest.fixture
def held(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[liteq.SQLiteStore, subprocess.Popen[bytes]]]:
    """A store whose file another process holds the write lock of until killed."""
    db = tmp_path / "jobs.sqlite"
    store = liteq.SQLiteStore(db)
    store.enqueue(Noop(0))  # (opened, and its first write done, before the lock is held)
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.procs", "hold_write", str(db), request.param, str(ready)],
        cwd=ROOT,
    )
    try:
        wait_until(ready.exists, 30, "the write lock to be held")
        yield store, proc
    finally:
        proc.kill()
        proc.wait(10)
        store.close()


@pytest.mark.parametrize("held", ["sqlite", "liteq"], indirect=True)
def test_the_loop_goes_on_while_aenqueue_waits_for_the_write_lock(
    held: tuple[liteq.SQLiteStore, subprocess.Popen[bytes]],
) -> None:
    """Another process holds the write lock for 0.5 s (a program that knows nothing of
    liteq's writer gate, or a liteq writer holding it): aenqueue waits, and meanwhile a
    ticker on the same loop ticks on."""
    store, holder = held
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> tuple[liteq.ManagedJob, float]:
        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.05)
        asyncio.get_running_loop().call_later(0.5, holder.kill)
        start = time.monotonic()
        mjob = await store.aenqueue(Noop(1))
        waited = time.monotonic() - start
        ticker.cancel()
        return mjob, waited

    mjob, waited = asyncio.run(main())
    assert waited >= 0.45, "the enqueue did not wait for the lock"
    during = [t for t in ticks if t >= ticks[0] + 0.05]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert len(during) >= 25 and max(gaps) < 0.2, "the loop was blocked"
    assert store.get(mjob.id).status is Status.QUEUED


# -- PostgreSQL: wake-ups, the application's transaction, closing -------------------------


@pytest.fixture
def pg_store() -> Iterator[liteq.PostgresStore]:
    schema = pg.new_schema()
    store = liteq.PostgresStore(pg.dsn_or_skip(), schema=schema)
    try:
        yield store
    finally:
        store.close()
        pg.drop_schema(schema)


def test_aenqueue_wakes_idle_workers_of_other_processes(pg_store: liteq.PostgresStore) -> None:
    """NOTIFY reaches another store's listener (as it would another host's worker): it
    wakes long before its timeout."""
    other = liteq.PostgresStore(pg_store.dsn, schema=pg_store.schema)
    try:
        other.wait_for_jobs(None, 0)  # (it starts listening)
        assert other.claim("test-owner") is None  # (what it waits for a change since)
        woke: list[tuple[bool, float]] = []
        waiter = threading.Thread(
            target=lambda: woke.append((other.wait_for_jobs(None, 20), time.monotonic()))
        )
        waiter.start()
        time.sleep(0.1)
        start = time.monotonic()
        asyncio.run(pg_store.aenqueue(Noop()))
        waiter.join(30)
        assert woke and woke[0][0] and woke[0][1] - start < 2.0
    finally:
        other.close()


def test_aenqueue_joins_the_applications_transaction(pg_store: liteq.PostgresStore) -> None:
    async def main() -> int:
        async with await psycopg.AsyncConnection.connect(pg_store.dsn) as conn:
            async with conn.transaction(force_rollback=True):
                await pg_store.aenqueue(Noop(1), connection=conn)
                await pg_store.aenqueue(Noop(2), connection=conn, coalesce_id="c")
            assert pg_store.count() == 0  # rolled back with the application's work
            async with conn.transaction():
                kept = await pg_store.aenqueue(Noop(3), connection=conn, coalesce_id="c")
                assert pg_store.count() == 0  # not before it commits
            again = await pg_store.aenqueue(Noop(4), connection=conn, coalesce_id="c")
            assert again.id == kept.id
            return kept.id

    kept = asyncio.run(main())
    assert pg_store.count() == 1 and pg_store.get(kept).status is Status.QUEUED


def test_aenqueue_refuses_a_blocking_connection(pg_store: liteq.PostgresStore) -> None:
    with psycopg.connect(pg_store.dsn) as conn, pytest.raises(TypeError, match="AsyncConnection"):
        asyncio.run(pg_store.aenqueue(Noop(), connection=conn))  # type: ignore[arg-type]
    assert pg_store.count() == 0


def _sessions(name: str) -> int:
    with psycopg.connect(pg.dsn_or_skip(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_close_closes_the_async_connection_of_every_loop() -> None:
    """A loop in another thread, still running, and one in this thread that has ended: each
    has its connection, and close() ends both (the running one in its own thread)."""
    name = pg.new_name()
    schema = pg.new_schema()
    dsn = pg.with_params(pg.dsn_or_skip(), application_name=name)
    store = liteq.PostgresStore(dsn, schema=schema)
    release = threading.Event()
    used = threading.Event()

    async def stays_running() -> None:
        await store.aenqueue(Noop(1))
        used.set()
        while not release.is_set():
            await asyncio.sleep(0.01)

    thread = threading.Thread(target=asyncio.run, args=(stays_running(),))
    thread.start()
    try:
        assert used.wait(30)
        asyncio.run(store.aenqueue(Noop(2)))
        assert _sessions(name) == 3  # the blocking link's, and one per loop
        store.close()
        wait_until(lambda: _sessions(name) == 0, 10, "every session to end")
        assert thread.is_alive()  # (closed while its loop ran)
        # A later use opens a new one.
        assert asyncio.run(store.aget(1)).id == 1
    finally:
        release.set()
        thread.join(10)
        store.close()
        pg.drop_schema(schema)


def test_close_inside_the_loop_waits_for_the_task_using_the_connection() -> None:
    name = pg.new_name()
    schema = pg.new_schema()
    dsn = pg.with_params(pg.dsn_or_skip(), application_name=name)
    store = liteq.PostgresStore(dsn, schema=schema)

    async def main() -> list[liteq.ManagedJob]:
        running = asyncio.gather(*(store.aenqueue(Noop(i)) for i in range(50)))
        await asyncio.sleep(0)  # (the first is under way)
        store.close()  # from the loop's own thread, tasks in flight
        return await running

    try:
        jobs = asyncio.run(main())
        assert len({mjob.id for mjob in jobs}) == 50 == store.count()
        store.close()
        wait_until(lambda: _sessions(name) == 0, 10, "every session to end")
    finally:
        store.close()
        pg.drop_schema(schema)
