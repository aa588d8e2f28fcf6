"""Until coroutine jobs land, an `async def` job is refused, never completed unrun."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

import liteq
from liteq import Status

RAN: list[str] = []


async def send_later(to: str) -> None:
    RAN.append(to)
    await asyncio.sleep(0)


def hands_back_a_coroutine(to: str) -> Coroutine[Any, Any, None]:
    """A plain def that returns a coroutine: nothing would ever await it."""
    return send_later(to)


class ReturnsACoroutine(liteq.Job):
    def run(self, job: liteq.ManagedJob) -> Any:
        return send_later("from run")


def test_a_task_on_an_async_def_is_refused_where_it_is_defined(
    store: liteq.stores.BaseStore,
) -> None:
    with pytest.raises(TypeError, match=r"send_later: it is an async def: liteq cannot run"):
        store.task(send_later)
    with pytest.raises(TypeError, match="async def"):
        store.task(queue="mail")(send_later)


def test_a_job_class_with_an_async_run_is_refused_where_it_is_defined() -> None:
    with pytest.raises(TypeError, match=r"AsyncRun\.run is an async def"):

        class AsyncRun(liteq.Job):
            async def run(self, job: liteq.ManagedJob) -> None:  # type: ignore[override]
                RAN.append("never")

    with pytest.raises(TypeError, match=r"AsyncResolve\.resolve_wait_async is an async def"):

        class AsyncResolve(liteq.Job):
            def run(self, job: liteq.ManagedJob) -> None:
                pass

            async def resolve_wait_async(self, data: Any) -> Status:  # type: ignore[override]
                return Status.COMPLETED

    assert liteq.job.lookup(f"{__name__}.AsyncRun") is None


@pytest.mark.parametrize("how", ["task", "job"])
def test_a_job_that_returns_a_coroutine_fails_and_is_never_completed(
    store: liteq.stores.BaseStore, how: str
) -> None:
    RAN.clear()
    if how == "task":
        mjob = store.task(hands_back_a_coroutine).enqueue("ann@example.com")
    else:
        mjob = store.enqueue(ReturnsACoroutine(), max_attempts=3)
    # filterwarnings=error: a coroutine left unawaited would also fail this test.
    liteq.Worker(store, exit_if_no_jobs=True, jitter=False, check_code=False).start()
    done = store.get(mjob.id)
    assert done.status is Status.FAILED
    assert done.attempts == 1  # failed for good: a retry would return a coroutine again
    assert "coroutine" in (done.error or "")
    assert "cannot run coroutine jobs yet" in (done.error or "")
    assert RAN == []


def test_do_later_refuses_an_async_def() -> None:
    with pytest.raises(TypeError, match="async def"):
        liteq.do_later(send_later, "ann@example.com")
