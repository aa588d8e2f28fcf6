"""A Django task as a liteq job type: each `@task` function gets a Job class of its own,
stored as the function's dotted path (`myapp.tasks.send_mail`), so that liteq's tools name
it and a worker runs only tasks whose module it has imported (payloads stay data).

The class is made when the task is declared (the backend's validate_task, which Django
calls as `@task` runs), so a worker that imported the module knows the type.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from asgiref.sync import sync_to_async
from django.db import connections
from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from liteq.contrib.django.results import exception_path, task_result
from liteq.job import Job, is_coroutine_function
from liteq.managed import ManagedJob
from liteq.worker import Interrupted

_CLASSES: dict[str, type[TaskJob]] = {}
_MAKING = threading.Lock()


class TaskJob(Job):
    """A call of a Django task: its arguments and the backend alias it was enqueued on."""

    #: The task as declared (`@task`), without `.using()`'s changes.
    task: ClassVar[Task]

    def __init__(self, args: list[Any], kwargs: dict[str, Any], backend: str) -> None:
        self.args = args
        self.kwargs = kwargs
        self.backend = backend

    def bound(self, mjob: ManagedJob) -> Task:
        """The task as this job was enqueued: its backend, queue and priority."""
        return type(self).task.using(
            backend=self.backend, queue_name=mjob.queue, priority=mjob.priority
        )

    def result_of(self, mjob: ManagedJob, task: Task) -> TaskResult:
        """This job as a TaskResult (what a task with takes_context receives)."""
        return task_result(mjob, task, self.backend, self.args, self.kwargs)

    def description(self) -> str:
        """`module.function(args)`."""
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{type(self).task.module_path}({', '.join(parts)})"

    def run(self, job: ManagedJob) -> Any:
        """Run the task as Django's request cycle runs a view: stale database connections
        closed before and after, Django's task signals sent; its return value is kept."""
        task = self.bound(job)
        running = self.result_of(job, task)
        sender = type(task.get_backend())
        close_stale_connections()
        try:
            task_started.send(sender=sender, task_result=running)
            args = (
                [TaskContext(task_result=running), *self.args] if task.takes_context else self.args
            )
            with _finishing(sender, running):
                value = normalize_json(task.call(*args, **self.kwargs))
        finally:
            close_stale_connections()
        return value if job.record.keep_result is not None else None


class CoroutineTaskJob(TaskJob):
    """A call of an `async def` Django task: a coroutine job, on the worker's event loop
    (`liteq_work --concurrency N` runs N at once)."""

    async def run(self, job: ManagedJob) -> Any:  # (an async run is a Job's too: see Job.run)
        """Await the task, stale connections closed before and after (in the thread where
        Django's async code keeps them: sync_to_async's)."""
        task = self.bound(job)
        running = self.result_of(job, task)
        sender = type(task.get_backend())
        await sync_to_async(close_stale_connections)()
        try:
            task_started.send(sender=sender, task_result=running)
            args = (
                [TaskContext(task_result=running), *self.args] if task.takes_context else self.args
            )
            with _finishing(sender, running):
                value = normalize_json(await task.acall(*args, **self.kwargs))
        finally:
            await sync_to_async(close_stale_connections)()
        return value if job.record.keep_result is not None else None


def close_stale_connections() -> None:
    """Django's `close_old_connections` (what it does around each request: a connection
    past CONN_MAX_AGE, or broken, is closed), but never one inside a transaction: a task
    run where a transaction is open (a test's, with liteq's testing tools) keeps it."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


@contextmanager
def _finishing(sender: type, running: TaskResult) -> Iterator[None]:
    """Send task_finished for the run inside: FAILED with its error (inside the exception
    handler, as Django's receivers expect), else SUCCESSFUL. The exception goes on to the
    worker, which fails or retries the job. A run the worker stopped (a signal, its
    max_runtime) has not finished: it is queued again."""
    try:
        yield
    except (Interrupted, asyncio.CancelledError):
        raise  # (the worker stopped it: it is queued again, not finished)
    except BaseException as exc:
        text = "".join(traceback.format_exception(exc))
        kind = f"{type(exc).__name__}: {exc}"
        failed = dataclasses.replace(
            running,
            status=TaskResultStatus.FAILED,
            finished_at=timezone.now(),
            errors=[TaskError(exception_class_path=exception_path(kind, text), traceback=text)],
        )
        task_finished.send(sender=sender, task_result=failed)
        raise
    done = dataclasses.replace(
        running, status=TaskResultStatus.SUCCESSFUL, finished_at=timezone.now()
    )
    task_finished.send(sender=sender, task_result=done)


def job_class(task: Task) -> type[TaskJob]:
    """The Job class of a task: made (and so registered) once per function."""
    path = task.module_path
    with _MAKING:
        cls = _CLASSES.get(path)
        if cls is None or cls.task.func is not task.func:  # (a module imported again)
            base = CoroutineTaskJob if is_coroutine_function(task.func) else TaskJob
            cls = type(
                task.func.__name__,
                (base,),
                {
                    "task": task,
                    "__module__": task.func.__module__,
                    "__qualname__": task.func.__qualname__,
                    "__doc__": f"Django task {path}.",
                },
            )
            _CLASSES[path] = cls
        return cls
