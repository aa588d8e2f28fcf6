"""The Job base class and the registry of job types.

A process turns a stored payload back into a Job only through the Job subclasses it has
imported (see codec): payloads are data, never code.
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar, Final

from liteq.errors import UnknownJobType

if TYPE_CHECKING:
    from liteq.managed import ManagedJob
    from liteq.options import EnqueueOptions
    from liteq.status import Status

_REGISTRY: dict[str, type[Job]] = {}


def type_name(cls: type) -> str:
    """The name a job class is stored under: `module.QualName`."""
    return f"{cls.__module__}.{cls.__qualname__}"


def lookup(name: str) -> type[Job] | None:
    """The Job class stored as `name` in this process, or None."""
    return _REGISTRY.get(name)


def registered_type(name: str) -> type[Job]:
    """Return the Job class stored as `name`, or raise UnknownJobType."""
    try:
        return _REGISTRY[name]
    except KeyError:
        module = name.rpartition(".")[0] or name
        hint = (
            "job classes run by `liteq work` must live in an importable module, not __main__"
            if module == "__main__"
            else f"import {module} in the worker (liteq work --import {module})"
        )
        raise UnknownJobType(
            f"unknown job type {name!r}: no Job subclass of that name is imported "
            f"in this process; {hint}"
        ) from None


#: The hooks a worker or an app calls without awaiting: an `async def` one would never run.
_PLAIN_HOOKS: Final = (
    "resolve_wait_async",
    "cleanup",
    "status_did_change",
    "description",
    "coalesce_id",
    "enqueue_options",
    "retry_delay",
    "to_state",
    "from_state",
)


def is_coroutine_function(obj: object) -> bool:
    """Whether `obj` is an `async def` function (or async generator function)."""
    return inspect.iscoroutinefunction(obj) or inspect.isasyncgenfunction(obj)


def is_coroutine_job(job: Job) -> bool:
    """Whether `job` is a coroutine job: its `run` is an `async def`."""
    return inspect.iscoroutinefunction(job.run)


def bad_result(result: object) -> str:
    """Why a value `run()` returned is refused. A coroutine is closed first, so that Python
    does not also warn that it was never awaited."""
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if callable(close):
            close()
        return (
            f"run() returned a {type(result).__name__} instead of running it: make run() "
            "itself an async def (a coroutine job), or await it inside; nothing ran"
        )
    return (
        f"run() returned {result!r}; return None or Status.WAIT_ASYNC (or enqueue the job "
        "with keep_result=True to keep what it returns)"
    )


class ResultRefused(str):
    """Why a job's return value cannot be kept as its result (the job fails for good)."""

    __slots__ = ()


def encode_result(value: object) -> str | ResultRefused:
    """A run's return value as the JSON text its result is kept as, or why it cannot be."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        return ResultRefused(
            f"run() returned {type(value).__name__} {_short(value)}, which cannot be kept as "
            f"its result (keep_result keeps JSON: {exc}); the job fails, not retried"
        )


def _short(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        return "(whose repr() raised)"
    return text if len(text) <= 80 else text[:77] + "..."


def backoff(attempts: int, base: float = 2.0, cap: float = 3600.0) -> float:
    """About `base ** attempts` seconds, ±25 % jitter, at most `cap`, never zero."""
    nominal = min(cap, base ** min(attempts, 64))
    jittered = nominal * random.uniform(0.75, 1.25)  # noqa: S311 - jitter, not crypto
    return max(0.001, min(cap, jittered))


class Job:
    """Base class of a unit of work. Subclass it and implement `run`.

    Example::

        class SendEmail(liteq.Job):
            def __init__(self, to: str) -> None:
                self.to = to
            def run(self, job: liteq.ManagedJob) -> None:
                mailer.send(self.to)

        store.enqueue(SendEmail("ann@example.com"))

    The job's attributes are its state and must be JSON-encodable (set
    `pickle_state = True` on the class to store them with pickle instead).
    """

    #: Store the state with pickle instead of JSON (trusted data only).
    pickle_state: ClassVar[bool] = False
    #: Retry waits about `retry_backoff ** attempts` seconds, with jitter ...
    retry_backoff: ClassVar[float] = 2.0
    #: ... but never more than this many seconds.
    retry_backoff_max: ClassVar[float] = 3600.0
    #: Keep what run() returns (JSON) once the job completes: True (a day) or seconds; the
    #: enqueue option keep_result wins. None: no result is kept.
    keep_result: ClassVar[bool | float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = vars(cls).get("run")
        if inspect.isasyncgenfunction(run):
            raise TypeError(
                f"{cls.__qualname__}.run is an async generator (it yields): a job's run is "
                "a def or an async def that returns"
            )
        for name in _PLAIN_HOOKS:
            hook = vars(cls).get(name)
            if isinstance(hook, (classmethod, staticmethod)):
                hook = hook.__func__
            if is_coroutine_function(hook):
                raise TypeError(
                    f"{cls.__qualname__}.{name} is an async def, which liteq calls without "
                    "awaiting (it would never run): make it a plain def (only run may be "
                    "an async def)"
                )
        _REGISTRY[type_name(cls)] = cls

    def run(self, job: ManagedJob) -> Status | Awaitable[Status | None] | None:
        """Do the work. Return None when done, or `Status.WAIT_ASYNC` to finish later; a job
        enqueued with keep_result returns its result (a JSON-encodable value).

        It may be an `async def` (a coroutine job): the worker awaits it on its event loop,
        with up to `liteq work --concurrency N` of them at once in one process.

        An exception fails the attempt: the job is retried while attempts remain.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def cleanup(self) -> None:
        """Called after every attempt, whatever its outcome."""

    def status_did_change(self, job: ManagedJob, old_status: Status, message: str | None) -> None:
        """Called after each status change of this job; an exception here is only logged."""

    def description(self) -> str:
        """A one-line description for logs and tables."""
        return type(self).__name__

    def coalesce_id(self) -> str | None:
        """A key: while a job with it is queued, running, waiting or failed, enqueue returns that job."""
        return None

    def enqueue_options(self) -> EnqueueOptions:
        """Default enqueue options for this job (explicit enqueue arguments win)."""
        return {}

    def resolve_wait_async(self, data: Any) -> Status:
        """Finish a WAIT_ASYNC job with `data` from a callback; return the new Status."""
        raise NotImplementedError(
            f"{type(self).__name__} returned WAIT_ASYNC but does not implement resolve_wait_async()"
        )

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait before the next attempt after `attempts` starts: never zero."""
        return backoff(attempts, self.retry_backoff, self.retry_backoff_max)

    # -- state -------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """The state to store: by default the instance's attributes."""
        return dict(vars(self))

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Job:
        """Rebuild a job from its stored state; raise to say the state does not fit."""
        job = cls.__new__(cls)
        job.__dict__.update(state)
        return job
