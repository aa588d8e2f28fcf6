"""PostgresStore on a real server: hosts, fork, the application's transaction, wake-ups,
refused schemas, and faults of the server and of the connection.

The store contract, the state machine and the multi-process suite run on PostgreSQL too
(tests/conftest.py's STORES); these are the things only a server has.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import liteq
from liteq import Status
from liteq.stores.contract import WorkerInfo
from liteq.stores.postgres.link import RolledBack, translate
from tests import pg
from tests.conftest import OWNER, Clock
from tests.helpers import ROOT, wait_until
from tests.jobs import Fails, Noop, Stoppable, Traced
from tests.traces import assert_runs_never_overlap, runs_by_job


@pytest.fixture
def url() -> Iterator[str]:
    """A liteq URL on the test server, in a schema of this test's own."""
    schema = pg.new_schema()
    yield pg.url(schema)
    pg.drop_schema(schema)


def start_work(url: str, log: Path, *args: str, host: str | None = None) -> subprocess.Popen[bytes]:
    """`liteq work` on `url` in a session of its own; LITEQ_HOST=host if given."""
    env = {**os.environ, **({"LITEQ_HOST": host} if host else {})}
    with log.open("a") as out:
        return subprocess.Popen(
            [
                *[sys.executable, "-m", "liteq", "work", "--db", url, "--import", "tests.jobs"],
                *["--no-jitter", "--wakeup-every", "0.5", *args],
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# -- processes and hosts -----------------------------------------------------------------
def test_a_parent_that_forked_loses_none_of_its_childrens_enqueues(url: str) -> None:
    # The parent had its connection open when it forked: the children must not use it
    # (their messages would interleave with the parent's on one socket), nor end it.
    store = liteq.connect(url)
    store.enqueue(Noop(-1))
    pids = []
    for first in (0, 10_000):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for n in range(first, first + 300):
                    store.enqueue(Noop(n))
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    for n in range(-300, -1):
        store.enqueue(Noop(n))
    store.close()
    assert [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids] == [0, 0]
    ns = sorted(m.job.n for m in liteq.connect(url).jobs())  # type: ignore[union-attr]
    assert ns == [*range(-300, 0), *range(300), *range(10_000, 10_300)]


@pytest.mark.timeout(120)
def test_a_job_of_a_dead_worker_on_another_host_waits_for_its_lease(
    url: str, tmp_path: Path
) -> None:
    # Two hosts (two groups of workers on this machine with different LITEQ_HOST): when one
    # dies outright, the other must not judge its jobs by pids, which mean nothing across
    # hosts, but rescue them once their leases run out. A dead worker of its own host it
    # rescues at once.
    store = liteq.connect(url)
    trace = tmp_path / "q.trace"
    store.enqueue_many([Traced(str(trace), 0.3) for _ in range(40)])
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start_work(url, log_a, "--processes", "2", "--lease", "4", host="host-a")
    b = start_work(url, log_b, "--processes", "2", "--lease", "30", host="host-b")
    try:

        def running(host: str) -> list[liteq.ManagedJob]:
            return [
                m
                for m in store.jobs(status=Status.RUNNING)
                if (m.record.owner or "").startswith(f"{host}/")
            ]

        wait_until(lambda: len(running("host-a")) == 2 and running("host-b"), 30, "both hosts")
        # The whole host dies: its supervisor, and its workers (each in a group of its own).
        a_workers = [c.pid for c in psutil.Process(a.pid).children()]
        for pid in [a.pid, *a_workers]:
            os.kill(pid, signal.SIGKILL)
        killed = dict.fromkeys(a_workers, time.time())
        orphans = {m.id: m.record.owner for m in running("host-a")}
        a.wait(10)

        # Host b's supervisor checks for hung jobs every 5 s and at once when one of its
        # own workers dies: kill one, so that it checks now.
        (b_job, *_) = running("host-b")
        b_pid = int(b_job.record.owner.split("/")[1])  # type: ignore[union-attr]
        os.kill(b_pid, signal.SIGKILL)
        killed[b_pid] = time.time()
        wait_until(
            lambda: store.get(b_job.id).record.owner != b_job.record.owner, 10, "b's own rescue"
        )
        assert time.time() - killed[b_pid] < 8  # at once, not after its 30 s lease
        still = {m.id: m.record.owner for m in running("host-a")}
        assert still == orphans, "a job of another host was rescued before its lease ran out"

        wait_until(lambda: store.count() == 0, 60, "every job, host a's after their leases")
    finally:
        stop(b)
    said = log_b.read_text()
    assert "the lease of host-a/" in said and "its worker host-a/" not in said
    runs = runs_by_job(trace)
    assert len(runs) == 40
    assert_runs_never_overlap(runs, killed)


# -- the application's transaction -------------------------------------------------------
def test_an_enqueue_in_the_applications_transaction_exists_if_and_only_if_it_commits(
    url: str,
) -> None:
    store = liteq.connect(url)
    assert isinstance(store, liteq.PostgresStore)
    app = psycopg.connect(pg.dsn_or_skip(), autocommit=True)
    app.execute("CREATE TEMPORARY TABLE orders (id integer)")

    with app.transaction():
        app.execute("INSERT INTO orders VALUES (1)")
        kept = store.enqueue(Noop(1), connection=app)
        assert store.count() == 0, "seen by others before the application committed"
        with pytest.raises(liteq.JobNotFound):
            store.get(kept.id)
        # Read in the application's transaction, the job it enqueued is there.
        assert store.get(kept.id, connection=app).status is Status.QUEUED
    assert store.get(kept.id).status is Status.QUEUED

    lost: list[liteq.ManagedJob] = []
    with contextlib.suppress(ZeroDivisionError), app.transaction():
        app.execute("INSERT INTO orders VALUES (2)")
        lost = store.enqueue_many([Noop(2), Noop(3)], connection=app)
        _ = 1 / 0
    assert len(lost) == 2
    for mjob in lost:
        with pytest.raises(liteq.JobNotFound):
            store.get(mjob.id)
    assert app.execute("SELECT count(*) FROM orders").fetchone() == (1,)

    # A connection that is not in autocommit mode: its implicit transaction decides.
    implicit = psycopg.connect(pg.dsn_or_skip())
    first = store.enqueue(Noop(4), connection=implicit, coalesce_id="nightly")
    implicit.rollback()
    with pytest.raises(liteq.JobNotFound):
        store.get(first.id)
    second = store.enqueue(Noop(5), connection=implicit, coalesce_id="nightly")
    again = store.enqueue(Noop(6), connection=implicit, coalesce_id="nightly")
    assert again.id == second.id  # coalesced inside the transaction too
    implicit.commit()
    assert store.count() == 2 and store.get(second.id).status is Status.QUEUED

    with pytest.raises(TypeError, match="psycopg Connection"):
        store.enqueue(Noop(7), connection="dbname=test")  # type: ignore[arg-type]
    implicit.close()
    app.close()


@pytest.mark.parametrize("completing", ["complete_many", "complete_and_claim"])
def test_a_dependent_enqueued_while_its_parent_completes_is_released(
    url: str, completing: str
) -> None:
    # The application's enqueue after=[parent] holds the parent's row while the parent's
    # worker completes it: the completion waits, then must see the new dependency row.
    # (complete_and_claim: the worker's steady state, one statement committed on its own.)
    store, worker_side = liteq.connect(url), liteq.connect(url)
    parent = store.enqueue(Noop(1))
    (held,) = worker_side.claim_many("o", lease=30, limit=1)
    app = psycopg.connect(pg.dsn_or_skip(), autocommit=True)
    with app.transaction():
        child = store.enqueue(Noop(2), after=[parent], connection=app)
        args = ([held],) if completing == "complete_many" else ([held], "o")
        done = threading.Thread(target=getattr(worker_side, completing), args=args)
        done.start()
        wait_until(lambda: _waiting_on(app) == 1, timeout=10)
    done.join(10)
    assert store.dependencies(child.id) == [(parent.id, True)]
    assert not store.get(child.id).waiting
    app.close()


def test_a_dependent_of_two_parents_completing_at_once_is_released(url: str) -> None:
    # Two workers complete the two parents of one job at once, each in one statement (their
    # steady state): each marks its own dependency done, and only the one that sees the
    # other's may release the job. Both are made to wait for the job's row, held here, so
    # that neither has committed when the other looks.
    store, first, second = liteq.connect(url), liteq.connect(url), liteq.connect(url)
    one, two = store.enqueue(Noop(1)), store.enqueue(Noop(2))
    child = store.enqueue(Noop(3), after=[one, two])
    (held_one,) = first.claim_many("first", lease=30, limit=1)
    (held_two,) = second.claim_many("second", lease=30, limit=1)
    assert {held_one.id, held_two.id} == {one.id, two.id}
    app = psycopg.connect(pg.dsn_or_skip(), autocommit=True)
    schema = url.rsplit("schema=", 1)[1]
    with app.transaction():
        lock = f'SELECT 1 FROM "{schema}".jobs WHERE id = %s FOR UPDATE'  # noqa: S608 - our schema
        app.execute(lock.encode(), (child.id,))
        done = [
            threading.Thread(target=first.complete_and_claim, args=([held_one], "first")),
            threading.Thread(target=second.complete_and_claim, args=([held_two], "second")),
        ]
        for thread in done:
            thread.start()
        # (Both wait; one that went past the row without a lock ends instead.)
        wait_until(lambda: _waiting_on(app) + sum(not t.is_alive() for t in done) == 2, 10)
    for thread in done:
        thread.join(10)
    assert store.dependencies(child.id) == [(one.id, True), (two.id, True)]
    released = store.get(child.id)  # (queued and due, or claimed by the second completion)
    assert not released.waiting and released.status in (Status.QUEUED, Status.RUNNING)
    app.close()


def test_an_enqueue_after_parents_goes_through_a_deadlock_over_them(url: str) -> None:
    # A writer of the application's may lock the parents in the reverse of the ids' order
    # that the enqueue locks them in: here another session holds the second parent and then
    # asks for the first, which the enqueue holds while it waits for the second. The server
    # rolls the enqueue back (it waited first); it is tried again, and goes through once the
    # other session has committed.
    store = liteq.connect(url)
    first, second = store.enqueue(Noop(1)), store.enqueue(Noop(2))
    schema = url.rsplit("schema=", 1)[1]
    lock = f'SELECT 1 FROM "{schema}".jobs WHERE id = %s FOR UPDATE'.encode()  # noqa: S608
    deadlocks = _deadlocks()
    other = psycopg.connect(pg.dsn_or_skip(), autocommit=True)
    enqueued: list[object] = []

    def enqueue() -> None:
        try:
            enqueued.append(store.enqueue(Noop(3), after=[first, second]))
        except liteq.StoreError as exc:
            enqueued.append(exc)

    for _ in range(3):
        enqueued.clear()
        thread = threading.Thread(target=enqueue)
        try:
            with other.transaction():
                other.execute(lock, (second.id,))
                thread.start()
                wait_until(lambda: _waiting_on(other) == 1, timeout=10)
                other.execute(lock, (first.id,))  # (returns once the enqueue is rolled back)
        except psycopg.errors.DeadlockDetected:
            # A second passed before this session asked (a slow machine): the server rolled
            # this one back instead, and the enqueue went through untried. Again.
            thread.join(10)
            continue
        thread.join(10)
        break
    else:
        pytest.fail("the server rolled back the other session three times, never the enqueue")
    other.close()
    wait_until(lambda: _deadlocks() > deadlocks, timeout=10)  # (the server's statistics lag)
    (child,) = enqueued
    assert isinstance(child, liteq.ManagedJob), child
    assert store.dependencies(child.id) == [(first.id, False), (second.id, False)]
    assert store.get(child.id).waiting


def test_a_lease_renewal_and_an_enqueue_after_its_jobs_do_not_deadlock(url: str) -> None:
    # A worker renews its leases in the order it holds its jobs (the claim's: the second
    # parent first, its priority higher), an `after=` enqueue locks the parents in id order.
    # Here the enqueue waits first for the first parent (another session holds it), then the
    # renewal asks for both: were it to take the second before the first, each would hold
    # what the other waits for once that session lets go. Renewals lock in id order too.
    store, worker_side = liteq.connect(url), liteq.connect(url)
    first, second = store.enqueue(Noop(1)), store.enqueue(Noop(2), priority=5)
    held = worker_side.claim_many("o", lease=30, limit=2)
    assert [m.id for m in held] == [second.id, first.id]
    schema = url.rsplit("schema=", 1)[1]
    lock = f'SELECT 1 FROM "{schema}".jobs WHERE id = %s FOR UPDATE'.encode()  # noqa: S608
    done: dict[str, object] = {}

    def enqueue() -> None:
        done["enqueue"] = store.enqueue(Noop(3), after=[first.id, second.id])

    def renew() -> None:
        try:
            done["renew"] = worker_side.renew_leases(held, lease=30)
        except liteq.StoreError as exc:
            done["renew"] = exc

    with psycopg.connect(pg.dsn_or_skip(), autocommit=True) as other:
        with other.transaction():
            other.execute(lock, (first.id,))
            threads = [threading.Thread(target=enqueue), threading.Thread(target=renew)]
            threads[0].start()
            wait_until(lambda: _waiting_on(other) == 1, timeout=10)
            threads[1].start()
            wait_until(lambda: _waiting_on(other) == 2, timeout=10)
            let_go = time.monotonic()
        for thread in threads:
            thread.join(10)
        took = time.monotonic() - let_go
        row = other.execute(
            "SELECT setting::float / 1000 FROM pg_settings WHERE name = 'deadlock_timeout'"
        ).fetchone()
    assert [m.id for m in done["renew"]] == [second.id, first.id]  # type: ignore[attr-defined]
    assert isinstance(done["enqueue"], liteq.ManagedJob)
    # (A deadlock would have cost the server's deadlock_timeout, a second by default.)
    assert row is not None and took < 0.8 * row[0], took


def test_a_transaction_left_open_by_a_frozen_process_is_ended_by_the_server(url: str) -> None:
    # A process stopped inside one of liteq's transactions (SIGSTOP, a debugger, a host
    # swapping) would hold the rows it locked for as long as it is stopped, and every worker
    # and enqueue needing them would wait as long. The server ends such a transaction after
    # 5 s idle (as the frozen process does here, between two of its statements).
    store = liteq.connect(url)
    other = liteq.connect(f"{url}&options=-c%20lock_timeout%3D20s")  # (without: a hang)
    parent = store.enqueue(Noop(1))
    frozen = store._transaction()
    tx = frozen.__enter__()
    try:
        tx.get(parent.id)  # (its row now locked, as a completion's or an enqueue's is)
        began = time.monotonic()
        child = other.enqueue(Noop(2), after=[parent.id])  # waits for that row
        waited = time.monotonic() - began
    finally:  # the frozen one goes on: its transaction is gone, and nothing of it
        with pytest.raises(liteq.StoreUnavailable, match="left open too long"):
            frozen.__exit__(None, None, None)  # (its COMMIT)
    assert 4 < waited < 20
    assert other.dependencies(child.id) == [(parent.id, False)]
    assert store.get(parent.id).status is Status.QUEUED  # (connected again)


def _deadlocks() -> int:
    """The deadlocks the server has found in this database so far."""
    with psycopg.connect(pg.dsn_or_skip()) as conn:
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def _waiting_on(app: psycopg.Connection[Any]) -> int:
    """How many other sessions wait for `app`'s transaction, or for one that does (a row's
    second waiter waits for the first)."""
    with psycopg.connect(pg.dsn_or_skip()) as other:
        row = other.execute(
            "SELECT count(*) FROM pg_stat_activity AS a WHERE %(app)s = ANY(pg_blocking_pids(a.pid))"
            " OR EXISTS (SELECT 1 FROM pg_stat_activity AS b"
            "  WHERE %(app)s = ANY(pg_blocking_pids(b.pid)) AND b.pid = ANY(pg_blocking_pids(a.pid)))",
            {"app": app.info.backend_pid},
        ).fetchone()
    return int(row[0]) if row else 0


# -- wake-ups ------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_an_idle_worker_is_woken_by_a_commit_on_another_connection(
    url: str, tmp_path: Path
) -> None:
    # With no polling to speak of (--wakeup-every 60), only LISTEN/NOTIFY can wake it.
    store = liteq.connect(url)
    trace = tmp_path / "q.trace"
    work = subprocess.Popen(
        [
            *[sys.executable, "-m", "liteq", "work", "--db", url, "--import", "tests.jobs"],
            *["--no-jitter", "--wakeup-every", "60"],
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: len(store.workers()) == 1, 30, "the worker to start")
        time.sleep(1.0)  # idle, waiting
        app = psycopg.connect(pg.dsn_or_skip())
        for n in range(3):
            enqueued = time.time()
            store.enqueue(Traced(str(trace), 0.0), connection=app)
            time.sleep(0.3)
            assert not trace.exists() or len(runs_by_job(trace)) == n  # not before the commit
            app.commit()
            committed = time.time()
            wait_until(lambda n=n: len(runs_by_job(trace)) == n + 1, 10, "the job to run")  # type: ignore[misc]
            started = max(r[0]["start"] for r in runs_by_job(trace).values())  # type: ignore[type-var]
            assert started - committed < 1.0, f"picked up {started - committed:.3f}s after commit"  # type: ignore[operator]
            assert started > enqueued
        app.close()
    finally:
        stop(work)


# -- schemas -------------------------------------------------------------------------------
def test_a_schema_liteq_did_not_make_or_a_newer_one_is_refused_untouched() -> None:
    dsn = pg.dsn_or_skip()
    schema = pg.new_schema()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
            conn.execute(f'CREATE TABLE "{schema}".users (name text)'.encode())
        with pytest.raises(liteq.StoreError, match="holds tables liteq did not make"):
            liteq.PostgresStore(dsn, schema=schema)
        with psycopg.connect(dsn, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
            ).fetchall()
        assert tables == [("users",)]
    finally:
        pg.drop_schema(schema)

    newer = pg.new_schema()
    try:
        liteq.PostgresStore(dsn, schema=newer).enqueue(Noop(1))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'UPDATE "{newer}".meta SET version = 99'.encode())  # noqa: S608
        with pytest.raises(liteq.StoreError, match="newer than this liteq understands"):
            liteq.PostgresStore(dsn, schema=newer)
    finally:
        pg.drop_schema(newer)


def test_a_schema_of_version_1_is_migrated_with_its_jobs() -> None:
    dsn = pg.dsn_or_skip()
    schema = pg.new_schema()
    try:
        first = liteq.PostgresStore(dsn, schema=schema)
        job = first.enqueue(Noop(1), queue="mail")
        first.close()
        with psycopg.connect(dsn, autocommit=True) as conn:  # as version 1 left it
            for sql in (
                f'ALTER TABLE "{schema}".queues DROP COLUMN completed, DROP COLUMN failed',
                f'ALTER TABLE "{schema}".workers DROP COLUMN rss',
                f'UPDATE "{schema}".meta SET version = 1',  # noqa: S608
            ):
                conn.execute(sql.encode())
        with pytest.raises(liteq.StoreError, match="open it once read-write"):
            liteq.PostgresStore(dsn, schema=schema, readonly=True)
        store = liteq.PostgresStore(dsn, schema=schema)
        try:
            assert store.get(job.id).queue == "mail"
            store.register_worker(WorkerInfo("w", "host", 1, None, time.time(), time.time(), 30))
            store.beat("w", jobs_done=1, current_job=None, finished={"mail": (1, 0)}, rss=1 << 20)
            assert store.totals() == {"mail": (1, 0)}
            assert [w.rss for w in store.workers()] == [1 << 20]
        finally:
            store.close()
    finally:
        pg.drop_schema(schema)


def test_a_schema_of_version_3_gets_its_workers_jobs_in_flight() -> None:
    dsn = pg.dsn_or_skip()
    schema = pg.new_schema()
    try:
        first = liteq.PostgresStore(dsn, schema=schema)
        now = time.time()
        first.register_worker(WorkerInfo("w", "elsewhere", 7, None, now, now, 600, 4, 9))
        first.close()
        with psycopg.connect(dsn, autocommit=True) as conn:  # as version 3 left it
            for sql in (
                f'ALTER TABLE "{schema}".workers DROP COLUMN in_flight',
                f'UPDATE "{schema}".meta SET version = 3',  # noqa: S608
            ):
                conn.execute(sql.encode())
        with pytest.raises(liteq.StoreError, match="open it once read-write"):
            liteq.PostgresStore(dsn, schema=schema, readonly=True)
        store = liteq.PostgresStore(dsn, schema=schema)
        try:
            (old,) = store.workers()
            assert (old.owner, old.jobs_done, old.current_job, old.in_flight) == ("w", 4, 9, 0)
            store.beat("w", jobs_done=5, current_job=None, finished={}, in_flight=3)
            assert [w.in_flight for w in store.workers()] == [3]
            store.register_worker(WorkerInfo("w", "elsewhere", 7, None, now, now, 600))
            assert [w.in_flight for w in store.workers()] == [0]  # registered anew
        finally:
            store.close()
    finally:
        pg.drop_schema(schema)


def test_a_schema_of_version_4_gets_its_schedules_table() -> None:
    from liteq.stores.contract import ScheduleInfo

    dsn = pg.dsn_or_skip()
    schema = pg.new_schema()
    try:
        liteq.PostgresStore(dsn, schema=schema).close()
        with psycopg.connect(dsn, autocommit=True) as conn:  # as version 4 left it
            for sql in (
                f'DROP TABLE "{schema}".schedules',
                f'UPDATE "{schema}".meta SET version = 4',  # noqa: S608
            ):
                conn.execute(sql.encode())
        with pytest.raises(liteq.StoreError, match="open it once read-write"):
            liteq.PostgresStore(dsn, schema=schema, readonly=True)
        store = liteq.PostgresStore(dsn, schema=schema)
        try:
            info = ScheduleInfo("nightly", "0 3 * * *", "UTC", "default", 100, None, 1.0)
            with store._transaction() as tx:
                tx.declare_schedule(info)
                assert tx.advance_schedule(dataclasses.replace(info, last_slot=200))
                assert not tx.advance_schedule(dataclasses.replace(info, last_slot=200))
            assert [(s.name, s.last_slot) for s in store.schedules()] == [("nightly", 200)]
        finally:
            store.close()
    finally:
        pg.drop_schema(schema)


def test_a_schema_of_version_5_gets_results_and_dependencies() -> None:
    dsn = pg.dsn_or_skip()
    schema = pg.new_schema()
    try:
        first = liteq.PostgresStore(dsn, schema=schema)
        old = first.enqueue(Noop(1))
        first.close()
        with psycopg.connect(dsn, autocommit=True) as conn:  # as version 5 left it
            for sql in (
                f'DROP TABLE "{schema}".dependencies',
                f'DROP TRIGGER jobs_released ON "{schema}".jobs',
                f'DROP TRIGGER jobs_done ON "{schema}".jobs',
                f'DROP FUNCTION "{schema}".job_done',
                f'ALTER TABLE "{schema}".jobs DROP COLUMN result, DROP COLUMN keep_result, '
                "DROP COLUMN expires_at",
                f'UPDATE "{schema}".meta SET version = 5',  # noqa: S608
            ):
                conn.execute(sql.encode())
        with pytest.raises(liteq.StoreError, match="open it once read-write"):
            liteq.PostgresStore(dsn, schema=schema, readonly=True)
        store = liteq.PostgresStore(dsn, schema=schema)
        try:
            assert store.get(old.id).keep_result is None
            then = store.enqueue(Noop(2), after=[old.id], keep_result=True)
            assert store.dependencies(then.id) == [(old.id, False)]
            assert store.get(then.id).waiting
        finally:
            store.close()
    finally:
        pg.drop_schema(schema)


def test_read_only_commands_never_create_a_schema(tmp_path: Path) -> None:
    schema = pg.new_schema()
    target = pg.url(schema)
    for command in (["status"], ["jobs"], ["show", "1"]):
        done = subprocess.run(
            [sys.executable, "-m", "liteq", *command, "--db", target],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"liteq: no liteq queue in schema {schema} of PostgreSQL")
        assert len(done.stderr.splitlines()) == 1
    with psycopg.connect(pg.dsn_or_skip()) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        assert found.fetchone() is None


def test_a_url_with_the_host_in_its_query_string_connects() -> None:
    # libpq's form for a Unix socket directory, postgresql:///db?host=/run/postgresql, has
    # an empty authority: the URL liteq hands psycopg must keep it.
    parts = psycopg.conninfo.conninfo_to_dict(pg.dsn_or_skip())
    schema = pg.new_schema()
    query = f"host={parts['host']}&port={parts.get('port', 5432)}&user={parts['user']}"
    store = liteq.connect(f"postgresql:///{parts['dbname']}?{query}&schema={schema}")
    try:
        assert store.get(store.enqueue(Noop()).id).status is Status.QUEUED
    finally:
        store.close()
        pg.drop_schema(schema)


def test_liteq_work_never_logs_the_password_of_its_url(tmp_path: Path) -> None:
    schema = pg.new_schema()
    parts = psycopg.conninfo.conninfo_to_dict(pg.dsn_or_skip())
    netloc = f"{parts['user']}:s3cret-pw@{parts['host']}:{parts.get('port', 5432)}"
    url = f"postgresql://{netloc}/{parts['dbname']}?schema={schema}&password=s3cret-q"
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "liteq",
                "work",
                "--db",
                url,
                "--burst",
                "--import",
                "tests.jobs",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert f"on postgresql://{parts['user']}@" in done.stderr  # (the line is there)
        assert "s3cret" not in done.stdout + done.stderr
    finally:
        pg.drop_schema(schema)


# -- faults --------------------------------------------------------------------------------
@pytest.mark.parametrize("committing", [False, True])
def test_a_deadlock_is_told_as_a_transaction_rolled_back_not_a_lost_connection(
    committing: bool,
) -> None:
    # Two sessions take two rows in opposite orders: the server aborts one of them, whose
    # transaction then holds nothing (psycopg's DeadlockDetected is no TransactionRollback).
    dsn, schema = pg.dsn_or_skip(), pg.new_schema()
    first, second = psycopg.connect(dsn), psycopg.connect(dsn)
    raised: list[psycopg.Error] = []

    def take(conn: psycopg.Connection[Any], n: int) -> None:
        try:
            conn.execute(row, (n,))
        except psycopg.Error as exc:
            raised.append(exc)

    try:
        first.execute(f'CREATE SCHEMA "{schema}"'.encode())
        first.execute(f'CREATE TABLE "{schema}".t AS SELECT 1 AS n UNION SELECT 2'.encode())
        first.commit()
        row = f'SELECT n FROM "{schema}".t WHERE n = %s FOR UPDATE'.encode()  # noqa: S608
        first.execute(row, (1,))
        second.execute(row, (2,))
        crossing = threading.Thread(target=take, args=(first, 2))
        crossing.start()
        wait_until(lambda: _waiting_on(second) == 1, timeout=10)
        take(second, 1)
        crossing.join(10)
    finally:
        first.close()
        second.close()
        pg.drop_schema(schema)
    (deadlock,) = raised  # (the server aborts the session that waited first)
    assert isinstance(deadlock, psycopg.errors.DeadlockDetected)
    told = translate(deadlock, "the server", committing=committing)
    assert isinstance(told, RolledBack) and not isinstance(told, liteq.StoreUnavailable)
    assert str(told).startswith("the server rolled back a transaction: deadlock detected")
    assert str(told).endswith("; try again")


@pytest.mark.timeout(180)
def test_a_server_restart_loses_no_job_and_runs_none_twice(tmp_path: Path) -> None:
    cluster = pg.new_cluster()
    url = f"{cluster.dsn}?schema=liteq"
    trace, log = tmp_path / "q.trace", tmp_path / "work.log"
    store = liteq.connect(url)
    store.enqueue_many([Traced(str(trace), 0.005) for _ in range(400)])
    work = start_work(url, log, "--processes", "2")
    try:
        wait_until(lambda: store.count() < 300, 60, "a quarter of the jobs")
        cluster.stop("fast")
        with pytest.raises(liteq.StoreUnavailable, match=f"127.0.0.1:{cluster.port}"):
            store.enqueue(Noop(1))
        time.sleep(2.0)
        cluster.start()
        late = store.enqueue(Traced(str(trace), 0.0))  # the store connects again by itself
        wait_until(lambda: store.count() == 0, 90, "every job after the restart")
    finally:
        stop(work)
        store.close()
    said = log.read_text()
    assert "Traceback" not in said
    assert "lost the connection" in said or "cannot connect" in said
    runs = runs_by_job(trace)
    assert len(runs) == 401 and late.id in runs
    assert_runs_never_overlap(runs, {})


@pytest.mark.timeout(120)
def test_liteq_work_waits_for_a_server_that_is_not_up_yet(tmp_path: Path) -> None:
    # At boot, the workers' service may start before the database's.
    cluster = pg.new_cluster()
    url = f"{cluster.dsn}?schema=liteq"
    trace, log = tmp_path / "q.trace", tmp_path / "work.log"
    with contextlib.closing(liteq.connect(url)) as store:
        store.enqueue(Traced(str(trace), 0.0))
    cluster.stop("fast")
    work = start_work(url, log)
    try:
        wait_until(lambda: "trying again in" in log.read_text(), 20, "liteq work to wait")
        assert work.poll() is None
        cluster.start()
        wait_until(lambda: len(runs_by_job(trace)) == 1, 60, "the job, once the server is up")
    finally:
        stop(work)
    assert work.returncode == 0
    assert "Traceback" not in log.read_text()


@pytest.mark.timeout(120)
def test_a_job_whose_lease_cannot_be_renewed_stops_before_it_could_run_elsewhere(
    tmp_path: Path,
) -> None:
    # Past its lease, another worker may rescue a job and run it: one whose worker cannot
    # reach the store to renew the lease must stop first, or it would run twice at once.
    cluster = pg.new_cluster()
    url = f"{cluster.dsn}?schema=liteq"
    trace, log = tmp_path / "q.trace", tmp_path / "work.log"
    store = liteq.connect(url)
    mjob = store.enqueue(Stoppable(str(trace), 60))
    work = start_work(url, log, "--lease", "3")
    try:
        wait_until(trace.exists, 30, "the job to start")
        time.sleep(0.5)
        cluster.stop("fast")
        down = time.time()
        wait_until(lambda: "stopped" in trace.read_text(), 10, "the job to be stopped")
        stopped = time.time()
        assert stopped - down < 3.0  # within its 3 s lease, renewed every second
        time.sleep(max(0.0, down + 4.0 - time.time()))  # the lease has run out
        cluster.start()
        wait_until(lambda: store.count() == 0, 60, "the job to run again and complete")
    finally:
        stop(work)
        store.close()
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [(e["id"], e["event"]) for e in events] == [
        (mjob.id, "start"),
        (mjob.id, "stopped"),
        (mjob.id, "start"),
        (mjob.id, "end"),
    ]
    assert events[2]["t"] > stopped
    assert "its lease could not be renewed" in log.read_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("prefetched", [False, True])
def test_dropped_connections_and_cancelled_statements_lose_no_job(
    url: str, tmp_path: Path, prefetched: bool
) -> None:
    # The server ends liteq's sessions again and again (what a failover or an idle-session
    # reaper does), and, for a while, cancels its statements (a statement_timeout shorter
    # than a lock held by someone else): workers log it, reconnect and go on. Only this
    # test's workers' sessions are ended: they carry a name of their own. (Prefetched jobs
    # with max_runtime: each records its start as it starts, which must wait it out too.)
    trace, log = tmp_path / "q.trace", tmp_path / "work.log"
    store = liteq.connect(url)
    schema = url.rsplit("schema=", 1)[1]
    # (Work for about 4.5 s: sessions are ended, then the table locked, while jobs still run.)
    store.enqueue_many(
        [Traced(str(trace), 0.03) for _ in range(300)], max_runtime=60 if prefetched else None
    )
    name = pg.new_name()
    timed = pg.with_params(url, application_name=name, options="-c%20statement_timeout%3D300")
    batches = ["--prefetch", "10"] if prefetched else []
    work = start_work(timed, log, "--processes", "2", *batches)
    admin = psycopg.connect(pg.dsn_or_skip(), autocommit=True)
    try:
        wait_until(lambda: store.count() < 280, 60, "work to start")
        ended = 0
        for _ in range(4):
            ended += pg.terminate(name)
            time.sleep(0.4)
        assert ended > 0
        with admin.transaction():  # hold the queue's table for two seconds
            admin.execute(f'LOCK TABLE "{schema}".jobs IN ACCESS EXCLUSIVE MODE'.encode())
            time.sleep(2.0)
        wait_until(lambda: store.count() == 0, 60, "every job")
    finally:
        stop(work)
        admin.close()
    said = log.read_text()
    # An idle session ended is found closed before use; one ended mid-statement is lost.
    assert "closed by the server" in said or "lost the connection" in said
    assert "connected to PostgreSQL" in said and "again" in said
    assert "cancelled a statement" in said
    assert "Traceback" not in said
    runs = runs_by_job(trace)
    assert len(runs) == 300
    assert_runs_never_overlap(runs, {})


@pytest.mark.timeout(300)
def test_the_suites_terminating_test_spares_a_bystanders_sessions_and_schema(
    tmp_path: Path,
) -> None:
    # A developer runs the tests against the server their own application uses: its
    # sessions are named liteq (the default) and its queue is in a schema of its own. The
    # test that ends sessions, run as the suite runs it, must end none of theirs.
    dsn = pg.dsn_or_skip()
    schema = pg.new_schema()
    theirs = pg.url(schema)
    log = tmp_path / "bystander.log"
    app = psycopg.connect(dsn, application_name="liteq", autocommit=True)
    store = liteq.connect(theirs)
    waiting = store.enqueue(Noop(1), delay=3600)
    work = start_work(theirs, log)
    try:
        wait_until(lambda: len(store.workers()) == 1, 30, "the bystander's worker")
        pid = app.info.backend_pid
        suite = subprocess.run(
            [
                *[sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                f"{__file__}::test_dropped_connections_and_cancelled_statements_lose_no_job",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "LITEQ_TEST_POSTGRES": dsn},
        )
        assert suite.returncode == 0, suite.stdout + suite.stderr
        assert "2 passed" in suite.stdout  # (plain and prefetched)
        assert app.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
        trace = tmp_path / "q.trace"
        store.enqueue(Traced(str(trace), 0.0))  # their worker, woken, uses its sessions
        wait_until(lambda: len(runs_by_job(trace)) == 1, 30, "the bystander's job")
        assert store.get(waiting.id).status is Status.QUEUED
    finally:
        stop(work)
        app.close()
        store.close()
        pg.drop_schema(schema)
    said = log.read_text()
    assert "closed by the server" not in said and "lost the connection" not in said, said


# -- the admin commands ------------------------------------------------------------------
def test_an_unreachable_server_or_no_psycopg_is_one_line_and_a_documented_status(
    tmp_path: Path,
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cases = [
        ([], f"postgresql://postgres@127.0.0.1:{port}/x", 69, "cannot connect to PostgreSQL"),
        (["-c", "import sys; sys.modules['psycopg'] = None; from liteq.cli import main; "
          "sys.exit(main(sys.argv[1:]))"], pg.url("x"), 2, "pip install 'liteq-jobs[postgres]'"),
    ]  # fmt: skip
    for how, target, code, words in cases:
        done = subprocess.run(
            [sys.executable, *(how or ["-m", "liteq"]), "status", "--db", target],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == code, done.stderr
        assert words in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.timeout(120)
def test_a_bad_connection_setting_exits_2_at_once_on_every_command(tmp_path: Path) -> None:
    # libpq refuses these before it asks the server: no wait would help. `liteq work`
    # must not wait for them as for a server that is down, nor `status` say 69.
    schema = pg.new_schema()
    cases = {
        "sslmode=bogus": 'invalid sslmode value: "bogus"',
        "port=abc": 'for connection option "port"',
        "port=99999": 'invalid port number: "99999"',
        "target_session_attrs=nope": "invalid target_session_attrs value",
        "no_such_option=1": '"no_such_option"',
        "connect_timeout=abc": "bad value for connect_timeout: 'abc'",
    }
    commands = [
        ["work", "--import", "tests.jobs"],
        ["status"],
        ["enqueue", "tests.jobs.Noop", "--state", '{"n": 1}'],
        ["jobs"],
        ["dashboard", "--port", "0"],
    ]
    for setting, words in cases.items():
        target = pg.with_params(pg.url(schema), **dict([setting.split("=")]))
        for command in commands if setting == "sslmode=bogus" else commands[:2]:
            began = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "liteq", *command, "--db", target],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
            )
            took = time.monotonic() - began
            assert done.returncode == 2, (command, setting, done.stderr)
            assert words in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
            assert took < 10, f"{command} took {took:.1f}s"
    with pytest.raises(ValueError, match="bad PostgreSQL setting: invalid sslmode"):
        liteq.connect(pg.with_params(pg.url(schema), sslmode="bogus"))
    with psycopg.connect(pg.dsn_or_skip()) as conn:  # nothing was made
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        assert found.fetchone() is None


def test_the_admin_commands_work_on_postgres(url: str, tmp_path: Path) -> None:
    store = liteq.connect(url)
    store.enqueue_many([Fails("bad") for _ in range(3)], max_attempts=1, queue="mail")
    store.enqueue(Noop(1), queue="reports")

    def liteq_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "liteq", *args, "--db", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert liteq_cmd("pause", "reports").returncode == 0
    burst = subprocess.run(
        [sys.executable, "-m", "liteq", "work", "--db", url, "--import", "tests.jobs", "--burst"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert burst.returncode == 0
    status = json.loads(liteq_cmd("status", "--json").stdout)
    by_queue = {q["queue"]: q for q in status["queues"]}
    assert by_queue["mail"]["counts"] == {"failed": 3} and by_queue["reports"]["paused"]
    assert by_queue["reports"]["counts"] == {"queued": 1}
    listed = json.loads(liteq_cmd("jobs", "--status", "failed", "--json").stdout)["jobs"]
    assert len(listed) == 3 and all("RuntimeError: bad" in j["error"] for j in listed)
    shown = json.loads(liteq_cmd("show", str(listed[0]["id"]), "--json").stdout)
    assert "Traceback" in shown["traceback"]
    retried = liteq_cmd("retry", "--all-failed", "--queue", "mail")
    assert retried.returncode == 0 and store.count(status=Status.QUEUED) == 4
    assert liteq_cmd("resume", "reports").returncode == 0 and not store.paused()
    purge = liteq_cmd("purge", "--status", "failed", "--dry-run")
    assert purge.returncode == 0 and "nothing to delete" in purge.stdout
    check = liteq_cmd("db", "check")
    assert check.returncode == 0 and "counts of jobs: ok" in check.stdout
    vacuum = liteq_cmd("db", "vacuum")
    assert vacuum.returncode == 2 and "SQLite queue files" in vacuum.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize("delete_on_complete", [False, True])
def test_a_completion_whose_commit_went_through_unseen_is_told_as_it_was(
    url: str, tmp_path: Path, delete_on_complete: bool
) -> None:
    # The connection drops after the server committed a job's completion but before the
    # worker heard so: the worker tries again, finds its own run already completed, and
    # must say that, not that the job was re-queued and its result dropped. (Deleted on
    # completion, nothing is left to tell its completion from a delete: it says both.)
    proxy = pg.LosesACommitReply(pg.dsn_or_skip())
    trace = tmp_path / "q.trace"
    mjob = liteq.connect(url).enqueue(
        Traced(str(trace), 0.0), delete_on_complete=delete_on_complete
    )
    through = f"{proxy.url}?schema={url.rsplit('schema=', 1)[1]}"
    try:
        done = subprocess.run(
            [
                *[sys.executable, "-m", "liteq", "work", "--db", through, "--import", "tests.jobs"],
                *["--burst", "--no-jitter"],
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        proxy.close()
    said = done.stdout + done.stderr
    assert proxy.lost.is_set(), said
    assert done.returncode == 0, said
    assert "while committing" in said  # the worker saw the connection drop
    assert "re-queued" not in said, said
    assert len(runs_by_job(trace)[mjob.id]) == 1
    store = liteq.connect(url)
    if delete_on_complete:  # its row is gone: as a delete by someone else would leave it
        assert f"job {mjob.id} was deleted while it ran, or by its own completion" in said
        assert store.count() == 0
    else:
        assert (
            f"job {mjob.id}: the connection dropped during or after its commit; "
            "the commit had gone through: completed"
        ) in said
        assert "result is dropped" not in said, said
        assert store.get(mjob.id).status is Status.COMPLETED


@pytest.mark.timeout(90)
@pytest.mark.parametrize("prefetch", [1, 4])
def test_jobs_claimed_by_a_commit_whose_reply_was_lost_are_handed_back_at_once(
    url: str, tmp_path: Path, prefetch: int
) -> None:
    # The reply to a worker's complete_and_claim is lost: the server has completed the job
    # and started the next ones for this worker, which, trying again, claims others. Those
    # it claimed unawares must go back at once, no attempt used and no crash counted, not
    # wait for their lease (30 s) and be rescued as if their worker had died.
    proxy = pg.LosesACommitReply(pg.dsn_or_skip(), claiming=True)
    trace, log = tmp_path / "q.trace", tmp_path / "work.log"
    store = liteq.connect(url)
    jobs = store.enqueue_many(
        [Traced(str(trace), 0.01) for _ in range(12)], delete_on_complete=False
    )
    through = f"{proxy.url}?schema={url.rsplit('schema=', 1)[1]}"
    work = start_work(through, log, "--lease", "30", "--prefetch", str(prefetch))
    try:
        wait_until(
            lambda: store.count(status=Status.COMPLETED) == len(jobs),
            15,
            "every job, none waiting for its lease",
        )
    finally:
        stop(work)
        proxy.close()
    said = log.read_text()
    assert proxy.lost.is_set(), said
    assert "while committing" in said, said
    assert "the commit had gone through: completed" in said, said
    assert "claimed by a commit whose reply was lost: handed back unstarted" in said, said
    assert "Traceback" not in said and "hung" not in said, said
    runs = runs_by_job(trace)
    assert sorted(runs) == [m.id for m in jobs]
    assert all(len(r) == 1 for r in runs.values()), runs  # each started and ended once
    assert [store.get(m.id).record.crashes for m in jobs] == [0] * len(jobs)
    assert [store.get(m.id).attempts for m in jobs] == [1] * len(jobs)
    store.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("max_attempts", [1, 3])
def test_a_failure_whose_commit_went_through_unseen_is_told_as_it_was(
    url: str, tmp_path: Path, max_attempts: int
) -> None:
    # As for a completion: the worker tries again, finds its own failure on file, and says
    # so, not that the job was re-queued by someone else and its result dropped.
    proxy = pg.LosesACommitReply(pg.dsn_or_skip())
    mjob = liteq.connect(url).enqueue(Fails("boom"), max_attempts=max_attempts)
    through = f"{proxy.url}?schema={url.rsplit('schema=', 1)[1]}"
    try:
        done = subprocess.run(
            [
                *[sys.executable, "-m", "liteq", "work", "--db", through, "--import", "tests.jobs"],
                *["--burst", "--no-jitter"],
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        proxy.close()
    said = done.stdout + done.stderr
    status = "failed" if max_attempts == 1 else "queued"
    assert proxy.lost.is_set(), said
    assert done.returncode == 0, said
    assert "while committing" in said, said
    assert (
        f"job {mjob.id}: the connection dropped during or after its commit; "
        f"the commit had gone through: {status}"
    ) in said, said
    assert f"failed on attempt 1/{max_attempts}: RuntimeError: boom -> {status}" in said, said
    assert "re-queued" not in said and "result is dropped" not in said, said
    store = liteq.connect(url)
    found = store.get(mjob.id)
    assert (found.status.value, found.attempts, found.error) == (status, 1, "RuntimeError: boom")
    store.close()


@pytest.fixture
def claimer() -> Iterator[tuple[liteq.PostgresStore, Clock, psycopg.Connection[Any]]]:
    """A store on a schema of its own, its clock, and an application's connection to it."""
    dsn, clock = pg.dsn_or_skip(), Clock()
    store = liteq.PostgresStore(dsn, schema=pg.new_schema(), clock=clock)
    conn = psycopg.connect(dsn, autocommit=True)
    yield store, clock, conn
    conn.close()
    store.close()
    pg.drop_schema(store.schema)


# The claim is written twice: in queries.sql (a transaction's, the application's) and in the
# function complete_and_claim (a worker's own). Both must take the same jobs, in one order.
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    jobs=st.lists(
        st.tuples(st.sampled_from("abcd"), st.integers(-2, 2), st.integers(-1, 3)), max_size=20
    ),
    queues=st.none() | st.lists(st.sampled_from("abcde"), min_size=1, max_size=3),
    paused=st.sets(st.sampled_from("abcd"), max_size=2),
    limit=st.integers(1, 6),
    in_transaction=st.booleans(),
)
def test_a_claim_in_a_transaction_takes_what_the_workers_claim_takes(
    claimer: tuple[liteq.PostgresStore, Clock, psycopg.Connection[Any]],
    jobs: list[tuple[str, int, int]],
    queues: list[str] | None,
    paused: set[str],
    limit: int,
    in_transaction: bool,
) -> None:
    store, clock, conn = claimer
    for mjob in list(store.jobs()):
        mjob.delete()
    for name in store.paused():
        store.resume(name)
    for name in paused:
        store.pause(name)
    made = [
        store.enqueue(Noop(n), queue=queue, priority=priority, run_at=clock.now - age)
        for n, (queue, priority, age) in enumerate(jobs)
    ]
    due = [
        m
        for m in made
        if (queues is None or m.queue in queues)
        and m.queue not in paused
        and m.run_at <= m.created_at
    ]
    best_first = [m.id for m in sorted(due, key=lambda m: (-m.priority, m.run_at, m.id))]
    got: list[int] = []
    while True:
        if in_transaction:  # (the statement of queries.sql)
            with store._joining(conn):
                batch = store.claim_many(OWNER, queues, limit=limit)
        else:  # (the function's)
            batch = store.claim_many(OWNER, queues, limit=limit)
        if not batch:
            break
        assert len(batch) <= limit
        assert all(m.status is Status.RUNNING and m.owner == OWNER for m in batch)
        got += [m.id for m in batch]
        store.complete_many(batch)
    assert got == best_first


# The release of dependents is written twice too: in Python (transitions.release_dependents,
# a transaction's completions) and in the function complete_and_claim (a worker's). Either
# way, a job after some parents becomes claimable once its last parent completes, not before.
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    parents=st.integers(1, 5),
    afters=st.lists(st.sets(st.integers(0, 4), min_size=1), min_size=1, max_size=8),
    order=st.randoms(use_true_random=False),
    paths=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_dependents_are_released_alike_by_both_completions(
    claimer: tuple[liteq.PostgresStore, Clock, psycopg.Connection[Any]],
    parents: int,
    afters: list[set[int]],
    order: random.Random,
    paths: list[bool],
) -> None:
    store = claimer[0]
    for mjob in list(store.jobs()):
        mjob.delete()
    made = [store.enqueue(Noop(i), queue="parents") for i in range(parents)]
    kids = {
        store.enqueue(Noop(k), queue="kids", after=[made[p] for p in sorted(ps)]).id: {
            made[p].id for p in ps
        }
        for k, ps in enumerate(afters)
        if max(ps) < parents
    }
    running = store.claim_many(OWNER, ["parents"], limit=parents)
    order.shuffle(running)
    completed: set[int] = set()
    released: set[int] = set()
    for step, mjob in enumerate(running):
        if paths[step]:  # (the function's release)
            lost, none = store.complete_and_claim([mjob], OWNER, ["nothing"], limit=1)
            assert (lost, none) == ([], [])
        else:  # (Python's, in a transaction)
            assert store.complete_many([mjob]) == []
        completed.add(mjob.id)
        claimed = store.claim_many(OWNER, ["kids"], limit=100)
        released |= {m.id for m in claimed}
        store.complete_many(claimed)
        assert released == {kid for kid, ps in kids.items() if ps <= completed}
    assert released == set(kids)
