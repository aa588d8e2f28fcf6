"""A liteq job as Django's TaskResult: its status, times, errors and return value."""

from __future__ import annotations

import re
import time
from typing import Any, Final

from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.base import TaskError

from liteq.errors import JobFailed, ResultExpired, ResultNotReady
from liteq.managed import ManagedJob
from liteq.status import Status
from liteq.stores.base import result_of

#: liteq's statuses as Django's: a job waiting (to run, for a retry, for its
#: dependencies) is READY; one a worker holds, or a callback is to finish, is RUNNING.
STATUS: Final = {
    Status.UNQUEUED: TaskResultStatus.READY,
    Status.QUEUED: TaskResultStatus.READY,
    Status.RUNNING: TaskResultStatus.RUNNING,
    Status.WAIT_ASYNC: TaskResultStatus.RUNNING,
    Status.COMPLETED: TaskResultStatus.SUCCESSFUL,
    Status.FAILED: TaskResultStatus.FAILED,
}

#: The exception class named by a failure that was no exception of the task's (its worker
#: died, it ran past max_runtime): its traceback is then liteq's message.
NO_EXCEPTION: Final = f"{JobFailed.__module__}.{JobFailed.__qualname__}"


def task_result(
    mjob: ManagedJob, task: Task, alias: str, args: list[Any], kwargs: dict[str, Any]
) -> TaskResult:
    """The TaskResult of a job of `task` (a Task already bound to the job's queue and
    priority), read from backend `alias`."""
    status = STATUS[mjob.status]
    attempts = mjob.attempts
    finished = status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
    result = TaskResult(
        task=task,
        id=str(mjob.id),
        status=status,
        enqueued_at=mjob.created_at,
        started_at=mjob.started_at if attempts else None,
        finished_at=mjob.finished_at if finished else None,
        last_attempted_at=mjob.started_at if attempts else None,
        args=args,
        kwargs=kwargs,
        backend=alias,
        errors=errors_of(mjob),
        # One per attempt (TaskResult.attempts counts them). liteq keeps which worker
        # holds a job while it runs, not which ran the attempts before.
        worker_ids=[""] * max(attempts - 1, 0) + [mjob.owner or ""] * min(attempts, 1),
    )
    if status is TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", return_value(mjob))
    return result


def return_value(mjob: ManagedJob) -> Any:
    """What a completed job's task returned (kept with keep_result); ResultExpired once
    the result is gone."""
    try:
        # From the row read (on Django's connection, for a queue in its database): asking
        # the store would read again on a connection of liteq's own.
        return result_of(mjob.id, mjob.record, time.time())
    except (ResultNotReady, JobFailed) as exc:  # (it changed since it was read)
        raise ResultExpired(f"job {mjob.id} changed while it was read: {exc}") from exc


def errors_of(mjob: ManagedJob) -> list[TaskError]:
    """The error of the job's last failed attempt, as Django's TaskError (liteq keeps the
    last one only)."""
    if mjob.error is None:
        return []
    traceback = mjob.traceback
    if not traceback:
        return [TaskError(exception_class_path=NO_EXCEPTION, traceback=mjob.error)]
    return [
        TaskError(exception_class_path=exception_path(mjob.error, traceback), traceback=traceback)
    ]


def exception_path(error: str, traceback: str) -> str:
    """The dotted path of the exception class a job raised. liteq's error says the class's
    name (`ValueError: ...`); the traceback's own line for it names its module too, as
    Python prints it (`myapp.tasks.Refused: ...`), except for builtins."""
    name = error.partition(":")[0].strip()
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        return NO_EXCEPTION
    line = re.compile(rf"(?:([\w.]+)\.)?{re.escape(name)}(?::|$)")
    for text in reversed(traceback.splitlines()):
        found = line.match(text)
        if found is not None:
            return f"{found.group(1) or 'builtins'}.{name}"
    return NO_EXCEPTION
