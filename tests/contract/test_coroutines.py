"""Coroutine jobs (`async def run`, `@store.task` on an `async def`), on every store: they
run, their return values and errors mean what a plain job's do, a plain `run` that hands back
a coroutine fails instead of completing unrun, and `concurrency` keeps up to N in flight.

(Real worker processes, signals and kills: tests/test_coroutine_workers.py.)
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, ClassVar

import pytest

import liteq
from liteq import Status
from liteq.dolater import run_pending
from liteq.status import MULLIGAN_CAP

RAN: list[object] = []


def work(store: liteq.stores.BaseStore, **options: Any) -> liteq.Worker:
    """A burst worker run to its end; its return status must be 0."""
    worker = liteq.Worker(store, exit_if_no_jobs=True, jitter=False, check_code=False, **options)
    assert worker.start() == 0
    return worker


def done(store: liteq.stores.BaseStore, mjob: liteq.ManagedJob) -> bool:
    """Whether `mjob` completed (completed jobs are deleted)."""
    try:
        store.get(mjob.id)
    except liteq.JobNotFound:
        return True
    return False


# -- job types ------------------------------------------------------------------------


class CoSend(liteq.Job):
    """A coroutine job: awaits, then records that it ran."""

    def __init__(self, to: str) -> None:
        self.to = to

    async def run(self, job: liteq.ManagedJob) -> None:  # type: ignore[override]
        await asyncio.sleep(0.01)
        RAN.append(("job", self.to, threading.current_thread() is threading.main_thread()))


async def co_send(to: str, subject: str = "hi") -> str:
    await asyncio.sleep(0.01)
    RAN.append(("task", to, subject))
    return "a task's return value is ignored"


class CoReturns(liteq.Job):
    """Returns what it is told to: a Status's value, or any other value as it is."""

    def __init__(self, value: Any) -> None:
        self.value = value

    async def run(self, job: liteq.ManagedJob) -> Any:  # type: ignore[override]
        await asyncio.sleep(0)
        RAN.append(self.value)
        return Status(self.value) if self.value in ("wait_async", "completed") else self.value


async def co_waits() -> Status:
    await asyncio.sleep(0)
    return Status.WAIT_ASYNC


class CoFails(liteq.Job):
    async def run(self, job: liteq.ManagedJob) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        RAN.append(("failed", job.attempts))
        raise RuntimeError("the mail server said no")


async def co_fails() -> None:
    await asyncio.sleep(0)
    raise ValueError("bad address")


async def never_awaited(to: str) -> None:
    RAN.append(("never", to))  # must never run: nothing awaits it


class ReturnsACoroutine(liteq.Job):
    """A plain def that hands back a coroutine (the old silent-completion case)."""

    def run(self, job: liteq.ManagedJob) -> Any:
        return never_awaited("from run")


def hands_back_a_coroutine(to: str) -> Coroutine[Any, Any, None]:
    return never_awaited(to)


class Peak:
    """Counts how many jobs of each kind run at once."""

    def __init__(self) -> None:
        self.now = {"co": 0, "plain": 0}
        self.peak = {"co": 0, "plain": 0}
        self.lock = threading.Lock()

    def enter(self, kind: str) -> None:
        with self.lock:
            self.now[kind] += 1
            self.peak[kind] = max(self.peak[kind], self.now[kind])

    def leave(self, kind: str) -> None:
        with self.lock:
            self.now[kind] -= 1


PEAK = Peak()
ENDED: list[float] = []


class CoCounted(liteq.Job):
    def __init__(self, n: int, seconds: float) -> None:
        self.n = n
        self.seconds = seconds

    async def run(self, job: liteq.ManagedJob) -> None:  # type: ignore[override]
        PEAK.enter("co")
        try:
            await asyncio.sleep(self.seconds)
        finally:
            PEAK.leave("co")
        RAN.append(("co", self.n))
        ENDED.append(time.monotonic())


class PlainCounted(liteq.Job):
    def __init__(self, n: int, seconds: float) -> None:
        self.n = n
        self.seconds = seconds

    def run(self, job: liteq.ManagedJob) -> None:
        PEAK.enter("plain")
        try:
            time.sleep(self.seconds)
        finally:
            PEAK.leave("plain")
        RAN.append(("plain", self.n, threading.current_thread() is threading.main_thread()))


class CoStuck(liteq.Job):
    """Awaits an hour on its first attempt; records that its `finally` ran."""

    finals: ClassVar[list[int]] = []

    async def run(self, job: liteq.ManagedJob) -> None:  # type: ignore[override]
        try:
            await asyncio.sleep(3600 if job.attempts == 1 else 0)
        finally:
            CoStuck.finals.append(job.attempts)


@pytest.fixture(autouse=True)
def _clean() -> None:
    RAN.clear()
    PEAK.__init__()  # type: ignore[misc]
    CoStuck.finals.clear()
    ENDED.clear()


# -- they run -------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_coroutine_job_and_an_async_task_run_and_their_effects_are_visible(
    store: liteq.stores.BaseStore, concurrency: int
) -> None:
    send = store.task(queue="mail")(co_send)
    jobs = [
        store.enqueue(CoSend("ann@example.com")),
        send.enqueue("bob@example.com", subject="hello"),
        send.enqueue_with(("cy@example.com",), queue="mail"),
    ]
    assert jobs[1].queue == "mail"
    worker = work(store, concurrency=concurrency)
    assert sorted(RAN, key=str) == sorted(
        [
            ("job", "ann@example.com", False),  # (on the loop's thread, not the main one)
            ("task", "bob@example.com", "hello"),
            ("task", "cy@example.com", "hi"),
        ],
        key=str,
    )
    assert all(done(store, m) for m in jobs)
    assert worker.jobs_processed == 3
    assert store.count() == 0


def test_a_coroutine_that_returns_wait_async_waits_and_none_completes(
    store: liteq.stores.BaseStore,
) -> None:
    waits = store.enqueue(CoReturns("wait_async"))
    completes = store.enqueue(CoReturns(None))
    says_completed = store.enqueue(CoReturns("completed"))
    task_waits = store.task(co_waits).enqueue()
    work(store, concurrency=3)
    assert store.get(waits.id).status is Status.WAIT_ASYNC
    assert store.get(task_waits.id).status is Status.WAIT_ASYNC
    assert done(store, completes) and done(store, says_completed)
    # Finished from outside, as any async job is.
    assert store.apply_async_result(store.get(waits.id), Status.COMPLETED) is Status.COMPLETED


def test_a_coroutine_that_returns_anything_else_fails_for_good(
    store: liteq.stores.BaseStore,
) -> None:
    odd = store.enqueue(CoReturns(42), max_attempts=3)
    work(store, concurrency=2)
    failed = store.get(odd.id)
    assert failed.status is Status.FAILED and failed.attempts == 1
    assert "run() returned 42" in (failed.error or "")
    assert RAN == [42]


def test_an_exception_in_a_coroutine_retries_then_fails_as_a_plain_jobs_does(
    store: liteq.stores.BaseStore,
) -> None:
    retried = store.enqueue(CoFails(), max_attempts=3)
    final = store.enqueue(CoFails(), max_attempts=1)
    task = store.task(co_fails).enqueue_with(max_attempts=1)
    work(store, concurrency=4)
    again = store.get(retried.id)
    assert again.status is Status.QUEUED and again.attempts == 1  # (its retry is not due yet)
    assert "RuntimeError: the mail server said no" in (again.error or "")
    gone = store.get(final.id)
    assert gone.status is Status.FAILED and "the mail server said no" in (gone.error or "")
    failed_task = store.get(task.id)
    assert failed_task.status is Status.FAILED
    assert "ValueError: bad address" in (failed_task.error or "")
    assert sorted(RAN) == [("failed", 1), ("failed", 1)]


async def forgets_to_await(to: str) -> Any:
    """An async def that returns a coroutine it forgot to await."""
    return never_awaited(to)


@pytest.mark.parametrize("how", ["job", "task", "async task"])
def test_a_plain_run_that_returns_a_coroutine_fails_and_nothing_runs(
    store: liteq.stores.BaseStore, how: str
) -> None:
    if how == "task":
        mjob = store.task(hands_back_a_coroutine).enqueue_with(("ann@example.com",), max_attempts=3)
    elif how == "async task":
        mjob = store.task(forgets_to_await).enqueue_with(("ann@example.com",), max_attempts=3)
    else:
        mjob = store.enqueue(ReturnsACoroutine(), max_attempts=3)
    # filterwarnings=error: a coroutine left unawaited ("never awaited") fails the test too.
    work(store)
    failed = store.get(mjob.id)
    assert failed.status is Status.FAILED
    assert failed.attempts == 1  # for good: another attempt would hand one back again
    assert "returned a coroutine instead of running it" in (failed.error or "")
    assert "nothing ran" in (failed.error or "")
    assert RAN == []


def test_max_runtime_cancels_a_coroutine_its_finally_runs_and_it_runs_again(
    store: liteq.stores.BaseStore,
) -> None:
    stuck = store.enqueue(CoStuck(), max_runtime=0.3, max_attempts=3)
    others = store.enqueue_many([CoCounted(n, 0.5) for n in range(3)])
    began = time.monotonic()
    work(store, concurrency=4)
    assert time.monotonic() - began < 10
    # Cancelled where it awaited (its finally ran), then run again (as a plain job past its
    # max_runtime is) and completed; the others in flight were not disturbed.
    assert CoStuck.finals == [1, 2]
    assert done(store, stuck)
    assert all(done(store, m) for m in others)
    assert sorted(RAN) == [("co", 0), ("co", 1), ("co", 2)]


class CoOverruns(liteq.Job):
    """Overruns its max_runtime on every attempt."""

    async def run(self, job: liteq.ManagedJob) -> None:  # type: ignore[override]
        RAN.append(job.attempts)
        await asyncio.sleep(3600)


def test_a_coroutine_that_always_overruns_max_runtime_is_re_queued_until_the_mulligan_cap(
    store: liteq.stores.BaseStore,
) -> None:
    # An overrun is a hung job (DESIGN: max_runtime): re-queued with a mulligan, as a plain
    # job is, which raises max_attempts by one, up to MULLIGAN_CAP: so a job that always
    # overruns ends FAILED there, never loops forever.
    mjob = store.enqueue(CoOverruns(), max_runtime=0.02, max_attempts=2)
    worker = liteq.Worker(
        store,
        exit_if_no_jobs=True,
        exit_after_n_jobs=MULLIGAN_CAP + 5,
        concurrency=2,
        jitter=False,
        check_code=False,
    )
    assert worker.start() == 0
    ended = store.get(mjob.id)
    assert ended.status is Status.FAILED, (ended.status, ended.attempts, ended.max_attempts)
    assert ended.attempts == MULLIGAN_CAP
    assert len(RAN) == MULLIGAN_CAP


# -- refused where they are defined ---------------------------------------------------


def test_an_async_generator_run_is_refused_where_it_is_defined(
    store: liteq.stores.BaseStore,
) -> None:
    with pytest.raises(TypeError, match=r"Yields\.run is an async generator"):

        class Yields(liteq.Job):
            async def run(self, job: liteq.ManagedJob) -> AsyncIterator[None]:  # type: ignore[override]
                yield None

    assert liteq.job.lookup(f"{__name__}.Yields") is None

    with pytest.raises(TypeError, match="async generator"):
        store.task(async_gen_task)


async def async_gen_task() -> AsyncIterator[int]:
    yield 1


HOOKS = [
    "cleanup",
    "status_did_change",
    "resolve_wait_async",
    "description",
    "coalesce_id",
    "enqueue_options",
    "retry_delay",
    "to_state",
]


@pytest.mark.parametrize("hook", [*HOOKS, "from_state"])
def test_an_async_hook_is_refused_where_it_is_defined(hook: str) -> None:
    async def hook_body(*args: Any) -> None:
        RAN.append(hook)

    async def run(self: liteq.Job, job: liteq.ManagedJob) -> None:
        pass

    namespace: dict[str, Any] = {"run": run, "__module__": __name__}
    namespace[hook] = classmethod(hook_body) if hook == "from_state" else hook_body
    with pytest.raises(TypeError, match=rf"AsyncHook\.{hook} is an async def"):
        type("AsyncHook", (liteq.Job,), namespace)
    assert liteq.job.lookup(f"{__name__}.AsyncHook") is None


# -- do_later --------------------------------------------------------------------------


async def later(to: str) -> None:
    await asyncio.sleep(0)
    RAN.append(("later", to))


def test_do_later_runs_an_async_def_and_a_coroutine_job() -> None:
    liteq.do_later(later, "ann@example.com")
    liteq.do_later(CoSend("bob@example.com"))
    run_pending()
    assert RAN == [("later", "ann@example.com"), ("job", "bob@example.com", False)]


def test_do_later_refuses_an_async_generator() -> None:
    with pytest.raises(TypeError, match="async generator"):
        liteq.do_later(async_gen_task)


# -- concurrency ------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 5])
def test_with_concurrency_n_up_to_n_coroutines_are_in_flight_and_plain_jobs_run_alone(
    store: liteq.stores.BaseStore, concurrency: int
) -> None:
    mixed: list[liteq.Job] = []
    for n in range(12):
        mixed.append(CoCounted(n, 0.1))
        if n % 3 == 0:
            mixed.append(PlainCounted(n, 0.02))
    store.enqueue_many(mixed)
    worker = work(store, concurrency=concurrency)
    co = sorted(r for r in RAN if r[0] == "co")
    plain = sorted(r for r in RAN if r[0] == "plain")
    assert co == [("co", n) for n in range(12)]  # each exactly once
    assert plain == [("plain", n, True) for n in range(0, 12, 3)]  # in the main thread
    assert PEAK.peak["plain"] == 1
    assert PEAK.peak["co"] == concurrency  # never more, and the slots are used
    assert worker.jobs_processed == 16
    assert store.count() == 0


def test_coroutines_in_flight_overlap_in_time(store: liteq.stores.BaseStore) -> None:
    store.enqueue_many([CoCounted(n, 0.5) for n in range(20)])
    began = time.monotonic()
    work(store, concurrency=20)
    took = max(ENDED) - began  # (to the last job's end: the worker's exit is not timed)
    assert len(RAN) == 20
    assert took < 3, f"20 jobs awaiting 0.5 s each took {took:.1f}s with concurrency 20"


def test_exit_after_n_jobs_is_exact_with_coroutines_in_flight(
    store: liteq.stores.BaseStore,
) -> None:
    store.enqueue_many([CoCounted(n, 0.05) for n in range(10)])
    worker = liteq.Worker(store, exit_after_n_jobs=6, concurrency=4, jitter=False, check_code=False)
    assert worker.start() == 0
    assert worker.jobs_processed == 6
    assert len(RAN) == 6
    assert store.count() == 4
    assert store.count(status=Status.QUEUED) == 4  # none left RUNNING, none lost


@pytest.mark.parametrize("bad", [0, -1, True, "3", 2.5, None])
def test_concurrency_must_be_a_positive_int(store: liteq.stores.BaseStore, bad: object) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        liteq.Worker(store, concurrency=bad)


def test_a_finished_coroutine_is_recorded_at_once_not_at_the_next_idle_wakeup(
    store: liteq.stores.BaseStore,
) -> None:
    # A coroutine that ends while the worker's claim finds nothing must wake its idle wait:
    # else its outcome (and its slot) waits for `wakeup_every` (here 5 s), the job RUNNING.
    # Short jobs end during that claim's transaction now and then: run a few.
    for n in range(40):
        store.enqueue(CoCounted(n, (n % 4) * 0.0005))
        began = time.monotonic()
        work(store, concurrency=2, wakeup_every=5.0)
        took = time.monotonic() - began
        assert took < 2.0, f"run {n} was recorded only at the idle wake-up, after {took:.2f}s"
    assert len(RAN) == 40
