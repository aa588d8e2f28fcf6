"""do_later: run work after the current script exits, in this process."""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from liteq.job import Job
from liteq.stores.memory import MemoryStore
from liteq.worker import Worker

log = logging.getLogger("liteq.dolater")

_pending: list[Callable[[], None]] = []
_pending_lock = threading.Lock()
_registered_pid: int | None = None


def do_later(fn_or_job: Callable[..., Any] | Job, *args: Any, **kwargs: Any) -> None:
    """Run a callable (with these arguments) or a Job when the interpreter exits.

    Jobs run in the order given (an `async def` function is run to its end with
    asyncio.run); one that raises is logged and the rest still run. The
    work never leaves this process, so any callable will do; a Job runs through a
    MemoryStore and a Worker, exactly as a worker would run it. A child created by
    fork() does not inherit its parent's pending work.

        liteq.do_later(send_receipt, order_id)   # after the response is sent
    """
    global _registered_pid  # one exit hook per process
    if isinstance(fn_or_job, Job):
        if args or kwargs:
            raise TypeError("do_later(job) takes no further arguments")
        job = fn_or_job
        thunk: Callable[[], None] = lambda: _run_job(job)  # noqa: E731
    elif inspect.iscoroutinefunction(fn_or_job):
        coroutine_function = fn_or_job
        thunk = lambda: _run_coroutine(coroutine_function, args, kwargs)  # noqa: E731
    elif inspect.isasyncgenfunction(fn_or_job):
        raise TypeError(f"do_later({fn_or_job.__qualname__}): an async generator cannot be run")
    elif callable(fn_or_job):
        fn = fn_or_job
        thunk = lambda: fn(*args, **kwargs)  # noqa: E731
    else:
        raise TypeError(f"do_later needs a callable or a Job, not {fn_or_job!r}")
    with _pending_lock:
        if _registered_pid != os.getpid():
            _pending.clear()  # a fork's inherited list belongs to the parent
            atexit.register(run_pending)
            _registered_pid = os.getpid()
        _pending.append(thunk)


def _run_coroutine(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    import asyncio  # (only for an async def: most programs would import it for nothing)

    asyncio.run(function(*args, **kwargs))


def _run_job(job: Job) -> None:
    store = MemoryStore()
    store.enqueue(job)
    Worker(store, exit_if_no_jobs=True, jitter=False, check_code=False).start()


def run_pending() -> None:
    """Run what do_later deferred, now, in order (the exit hook calls this)."""
    if _registered_pid != os.getpid():
        return
    while True:
        with _pending_lock:
            if not _pending:
                return
            thunk = _pending.pop(0)
        try:
            thunk()
        except Exception:
            log.exception("a do_later job raised")
