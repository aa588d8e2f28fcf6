"""The Worker in this process: options, outcomes, bad payloads, wake-up and restarts."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import liteq
from liteq import Status
from tests.conftest import Clock, StoreFactory
from tests.helpers import ROOT, wait_until
from tests.jobs import Fails, Noop, Record, Strict, Touch, Waits


def burst(store: liteq.stores.BaseStore, **options: object) -> liteq.Worker:
    worker = liteq.Worker(store, exit_if_no_jobs=True, jitter=False, **options)  # type: ignore[arg-type]
    assert worker.start() == 0
    return worker


def test_minimal_use_from_the_design_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # -- the minimal use (README.md), verbatim --
    # fmt: off
    import liteq

    class SampleJob(liteq.Job):
        def __init__(self, info):  # type: ignore[no-untyped-def]
            self.info = info
        def run(self, job):  # type: ignore[no-untyped-def]
            print(self.description())          # return None (done), or liteq.Status.WAIT_ASYNC
        def description(self):  # type: ignore[no-untyped-def]
            return f"Sample job {self.info}"

    store = liteq.SQLiteStore("jobs.sqlite")
    for i in range(10):
        store.enqueue(SampleJob(i))
    liteq.Worker(store, exit_if_no_jobs=True).start()
    # fmt: on
    # -- end --
    assert capsys.readouterr().out.splitlines() == [f"Sample job {i}" for i in range(10)]
    assert store.count() == 0
    assert (tmp_path / "jobs.sqlite").exists()


def test_exit_after_n_jobs_and_jobs_processed(store: liteq.stores.BaseStore) -> None:
    store.enqueue_many([Noop(i) for i in range(5)])
    worker = liteq.Worker(store, exit_after_n_jobs=3, jitter=False)
    assert worker.start() == 0
    assert worker.jobs_processed == 3 and store.count() == 2


def test_max_time(store: liteq.stores.BaseStore) -> None:
    began = time.monotonic()
    assert liteq.Worker(store, max_time=0.3, jitter=False, wakeup_every=0.05).start() == 0
    assert 0.3 <= time.monotonic() - began < 5


def test_queues(store: liteq.stores.BaseStore) -> None:
    store.enqueue(Noop(), queue="a")
    store.enqueue(Noop(), queue="b")
    burst(store, queues=["b"])
    assert [m.queue for m in store.jobs()] == ["a"]
    with pytest.raises(TypeError, match="list of names"):
        liteq.Worker(store, queues="a")


def test_a_failing_job_is_logged_with_its_traceback_and_retried(
    store: liteq.stores.BaseStore, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    mjob = store.enqueue(Fails("disk on fire"), max_attempts=2)
    with caplog.at_level(logging.ERROR, logger="liteq.worker"):
        burst(store)
    assert "disk on fire" in caplog.text and "Traceback" in caplog.text
    retried = store.get(mjob.id)
    assert retried.status is Status.QUEUED and retried.error == "RuntimeError: disk on fire"
    assert "raise RuntimeError(self.message)" in (retried.traceback or "")
    clock.advance(10)
    burst(store)
    assert store.get(mjob.id).status is Status.FAILED


def test_exit_if_no_jobs_is_not_kept_alive_by_jobs_not_due(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.enqueue(Noop(), delay=60)
    store.enqueue(Waits())
    store.enqueue(Fails())
    burst(store)
    assert store.count(status=Status.QUEUED) == 1
    assert store.count(status=Status.WAIT_ASYNC) == 1
    assert store.count(status=Status.FAILED) == 1


class Cleans(liteq.Job):
    cleaned: list[str] = []  # noqa: RUF012 - shared record of calls

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    def run(self, job: liteq.ManagedJob) -> object:
        if self.outcome == "raise":
            raise ValueError("x")
        return self.outcome

    def cleanup(self) -> None:
        Cleans.cleaned.append(self.outcome)
        raise RuntimeError("cleanup bug")


def test_cleanup_runs_after_every_attempt_and_a_bad_return_fails_the_job(
    store: liteq.stores.BaseStore,
) -> None:
    Cleans.cleaned.clear()
    store.enqueue(Cleans("raise"))
    bad = store.enqueue(Cleans("done?"))
    burst(store)
    assert sorted(Cleans.cleaned) == ["done?", "raise"]
    assert "return None or Status.WAIT_ASYNC" in (store.get(bad.id).error or "")


@contextlib.contextmanager
def worker_thread(store: liteq.stores.BaseStore, **options: object) -> Iterator[list[int]]:
    """Run a Worker in a thread for the block (idle for a moment first); yield its exit status."""
    worker = liteq.Worker(store, jitter=False, **options)  # type: ignore[arg-type]
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.start()))
    thread.start()
    try:
        time.sleep(0.2)
        yield result
    finally:
        worker.stop()
        thread.join(5)
        assert not thread.is_alive(), "the worker did not stop"


def test_stop_from_another_thread_finishes_and_returns(store: liteq.stores.BaseStore) -> None:
    with worker_thread(store, wakeup_every=30) as result:
        pass
    assert result == [0]


def test_an_idle_worker_wakes_for_a_new_job_at_once(make_store: StoreFactory) -> None:
    store = make_store()
    Record.ran.clear()
    with worker_thread(store, wakeup_every=30):
        store.enqueue(Record("woken"))
        wait_until(lambda: bool(Record.ran), 10, "the worker to run the job")
    assert Record.ran == ["woken"]


def test_an_idle_worker_wakes_for_a_job_from_another_process(tmp_path: Path) -> None:
    store = liteq.SQLiteStore(tmp_path / "q.sqlite")
    Record.ran.clear()
    with worker_thread(store, wakeup_every=60):
        code = (
            "import liteq, sys; from tests.jobs import Record; "
            "liteq.SQLiteStore(sys.argv[1]).enqueue(Record('other process'))"
        )
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "q.sqlite")], check=True, cwd=ROOT
        )
        wait_until(lambda: bool(Record.ran), 10, "the worker to run the job")
    assert Record.ran == ["other process"]


def test_a_delayed_job_runs_when_due_without_waiting_for_wakeup_every(tmp_path: Path) -> None:
    store = liteq.SQLiteStore(tmp_path / "q.sqlite")
    Record.ran.clear()
    store.enqueue(Record("later"), delay=0.3)
    worker = liteq.Worker(store, jitter=False, wakeup_every=60, exit_after_n_jobs=1)
    began = time.monotonic()
    assert worker.start() == 0
    assert Record.ran == ["later"] and time.monotonic() - began < 10


def test_memory_preflight_exits_1_before_taking_a_job(store: liteq.stores.BaseStore) -> None:
    store.enqueue(Noop())
    worker = liteq.Worker(store, jitter=False, guarantee_memory=1 << 60)
    assert worker.start() == 1
    assert store.count(status=Status.QUEUED) == 1


def test_a_changed_source_file_exits_2_before_the_next_job(
    store: liteq.stores.BaseStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "liteq_changing_module.py"
    module.write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("liteq_changing_module")
    try:
        # The first job changes the module's file and outlasts the 1 s throttle of the check.
        first = store.enqueue(Touch(str(module), 1.1), priority=1)
        second = store.enqueue(Noop())
        assert liteq.Worker(store, jitter=False).start() == 2
        with pytest.raises(liteq.JobNotFound):
            store.get(first.id)
        assert store.get(second.id).status is Status.QUEUED
        assert (
            liteq.Worker(store, jitter=False, check_code=False, exit_if_no_jobs=True).start() == 0
        )
    finally:
        sys.modules.pop("liteq_changing_module", None)


class Broken(liteq.Job):
    def run(self, job: liteq.ManagedJob) -> None:
        pass


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ("{not json", "not valid JSON"),
        ('{"type": "tests.jobs.Noop", "state": {}} and more', "not valid JSON: Extra data"),
        ('{"state": {}}', "no job type"),
        (
            '{"type": "tests.jobs.Strict", "state": {"count": "three"}}',
            "no longer fits tests.jobs.Strict",
        ),
        ('{"type": "tests.jobs.Noop", "state": [1]}', "not an object"),
        ('{"type": "tests.jobs.Noop", "pickle": "gAR9lC4="}', "does not allow pickled state"),
        (  # deeper than any liteq writes: decoding it would exhaust the recursion limit
            '{"type": "tests.jobs.Noop", "state": {"x": ' + "[" * 990 + "]" * 990 + "}}",
            "nests too deeply to decode",
        ),
    ],
)
def test_a_bad_row_fails_that_job_and_the_worker_goes_on(
    store: liteq.stores.BaseStore, payload: str, words: str
) -> None:
    Record.ran.clear()
    bad = store.enqueue(Strict(1), max_attempts=3)
    store.enqueue(Record("after"))
    with store._transaction() as tx:  # corrupt the row as a bug or a deploy would
        record = tx.get(bad.id)
        assert record is not None
        tx.update(dataclasses.replace(record, payload=payload))
    got = store.get(bad.id)
    assert got.job is None and words in (got.error or "")
    burst(store)
    failed = store.get(bad.id)
    assert failed.status is Status.FAILED and words in (failed.error or "")
    assert Record.ran == ["after"]


@pytest.mark.parametrize(
    ("job_type", "words"),
    [
        ("tests.nowhere.Gone", "liteq work --import tests.nowhere"),
        ("__main__.Local", "not __main__"),
    ],
)
def test_a_job_of_an_unknown_type_waits_for_a_worker_that_knows_it(
    store: liteq.stores.BaseStore, clock: Clock, job_type: str, words: str
) -> None:
    # A deploy mistake (a worker without the job's module) must not fail the backlog.
    Record.ran.clear()
    waiting = store.enqueue(Strict(1), max_attempts=2)
    store.enqueue(Record("after"))
    with store._transaction() as tx:
        record = tx.get(waiting.id)
        assert record is not None
        tx.update(dataclasses.replace(record, payload=f'{{"type": "{job_type}", "state": {{}}}}'))
    clock.advance(60)
    burst(store)
    assert Record.ran == ["after"]
    back = store.get(waiting.id)
    assert (back.status, back.attempts, back.max_attempts) == (Status.QUEUED, 0, 2)
    assert "waiting for a worker that knows its type" in (back.error or "") and words in (
        back.error or ""
    )
    assert back.run_at.timestamp() > clock.now  # not at once: it backs off
    with store._transaction() as tx:  # the deploy is fixed: its type is known again
        record = tx.get(waiting.id)
        assert record is not None
        tx.update(dataclasses.replace(record, payload=waiting.record.payload))
    clock.advance(3600)
    burst(store)
    assert store.count() == 0


@pytest.mark.parametrize("by_hand", ["spaces around it", "stored as a BLOB"])
def test_a_payload_written_by_hand_still_runs(store: liteq.stores.BaseStore, by_hand: str) -> None:
    if by_hand == "stored as a BLOB" and isinstance(store, liteq.PostgresStore):
        pytest.skip("SQLite's typing lets a BLOB into a text column; PostgreSQL's does not")
    Record.ran.clear()
    mjob = store.enqueue(Record("edited"))
    with store._transaction() as tx:
        record = tx.get(mjob.id)
        assert record is not None
        payload: Any = f"\n  {record.payload} \n"
        if by_hand == "stored as a BLOB":
            payload = record.payload.encode()
        tx.update(dataclasses.replace(record, payload=payload))
    burst(store)
    assert Record.ran == ["edited"]


def test_pickled_state_round_trips(store: liteq.stores.BaseStore) -> None:
    from tests.jobs import Pickled

    Record.ran.clear()
    store.enqueue(Pickled({1, 2, 3}))
    burst(store)
    assert Record.ran == [{1, 2, 3}]


def test_worker_option_errors(store: liteq.stores.BaseStore) -> None:
    for bad in ({"wakeup_every": 0}, {"exit_after_n_jobs": 0}, {"lease": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            liteq.Worker(store, **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("prefetch", [2, 7, 50])
def test_prefetch_runs_every_job_once_in_priority_order(
    store: liteq.stores.BaseStore, prefetch: int
) -> None:
    Record.ran.clear()
    seen: list[str] = []
    store.on_status_change = lambda m, old, msg: seen.append(f"{m.id}:{m.status.value}")
    for i in range(30):
        store.enqueue(Record(i), priority=i % 3)
    worker = burst(store, prefetch=prefetch)
    assert worker.jobs_processed == 30 and store.count() == 0
    assert sorted(Record.ran) == list(range(30))
    assert [t % 3 for t in Record.ran] == sorted((t % 3 for t in Record.ran), reverse=True)
    assert sum(s.endswith(":completed") for s in seen) == 30


def test_each_completion_is_on_file_before_the_next_job_starts(
    store: liteq.stores.BaseStore,
) -> None:
    seen: list[str] = []
    store.on_status_change = lambda m, old, msg: seen.append(f"{m.job.n}:{m.status.value}")  # type: ignore[union-attr]
    store.enqueue_many([Noop(i) for i in range(3)])
    burst(store, prefetch=1)  # (a batch the worker sized itself is acknowledged together)
    assert seen == [
        *("0:queued", "1:queued", "2:queued"),
        *("0:running", "0:completed", "1:running", "1:completed", "2:running", "2:completed"),
    ]


def test_prefetched_jobs_not_started_are_handed_back_untouched(
    store: liteq.stores.BaseStore,
) -> None:
    store.enqueue_many([Noop(i) for i in range(10)], max_attempts=2)
    worker = liteq.Worker(store, jitter=False, prefetch=8, exit_after_n_jobs=3)
    assert worker.start() == 0
    assert worker.jobs_processed == 3 and store.count() == 7
    assert all((m.status, m.attempts, m.owner) == (Status.QUEUED, 0, None) for m in store.jobs())
    stopper = liteq.Worker(store, jitter=False, prefetch=8)

    class StopsWorker(liteq.Job):
        def run(self, job: liteq.ManagedJob) -> None:
            stopper.stop()

    store.enqueue(StopsWorker(), priority=10)
    assert stopper.start() == 0
    assert stopper.jobs_processed == 1
    assert store.count(status=Status.QUEUED) == 7
    assert all(m.attempts == 0 and m.max_attempts == 2 for m in store.jobs())


def fill(store: liteq.SQLiteStore) -> int:
    """Enqueue into a nearly full "disk" until it is full; return how many jobs got in."""
    conn = store._db()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}").fetchall()
    added: list[int] = []

    def enqueue_forever() -> None:
        while True:
            store.enqueue(Record(len(added)))
            added.append(1)

    with pytest.raises(liteq.StoreError, match="is full"):
        enqueue_forever()
    conn.execute("PRAGMA max_page_count = 1073741823").fetchall()  # space again
    return len(added)


def test_a_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    store = liteq.SQLiteStore(tmp_path / "q.sqlite")
    Record.ran.clear()
    queued = fill(store)
    assert queued > 0 and store.count() == queued  # every committed job is still there
    burst(store)
    assert sorted(Record.ran) == list(range(queued))


def test_a_store_that_refuses_writes_stalls_the_worker_but_does_not_kill_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = liteq.SQLiteStore(tmp_path / "q.sqlite")
    Record.ran.clear()
    store.enqueue_many([Record(i) for i in range(5)])
    conn = store._db()
    conn.execute("PRAGMA query_only = 1").fetchall()  # as a read-only mount or a full disk would
    with caplog.at_level(logging.ERROR, logger="liteq.worker"), worker_thread(store) as result:
        wait_until(lambda: "claiming jobs failed" in caplog.text, 10, "the failure to be logged")
        assert "read-only" in caplog.text and not result  # still running
        conn.execute("PRAGMA query_only = 0").fetchall()
        wait_until(lambda: len(Record.ran) == 5, 30, "the jobs to run")
    assert sorted(Record.ran) == list(range(5)) and store.count() == 0


class GoesReadOnly(liteq.Job):
    """Makes the store read-only for a second, so its own completion cannot be written."""

    def __init__(self, path: str) -> None:
        self.path = path

    def run(self, job: liteq.ManagedJob) -> None:
        conn = job.store._db()  # type: ignore[attr-defined]
        conn.execute("PRAGMA query_only = 1").fetchall()
        threading.Timer(1.0, lambda: conn.execute("PRAGMA query_only = 0").fetchall()).start()
        Record.ran.append(self.path)


def test_an_outcome_that_cannot_be_written_is_retried_until_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = liteq.SQLiteStore(tmp_path / "q.sqlite")
    Record.ran.clear()
    store.enqueue(GoesReadOnly("once"))
    with caplog.at_level(logging.ERROR, logger="liteq.worker"):
        burst(store)
    assert Record.ran == ["once"] and store.count() == 0
    assert "recording the outcome of job" in caplog.text and "read-only" in caplog.text
