"""Task: a module-level function made into a job type by `@store.task(...)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, TypeVar

from liteq.job import Job
from liteq.status import Status

if TYPE_CHECKING:
    from liteq.managed import ManagedJob
    from liteq.options import EnqueueOptions
    from liteq.stores.contract import AppStore

P = ParamSpec("P")
R = TypeVar("R")


class TaskJob(Job):
    """A call of a function decorated with `@store.task`; its state is the arguments."""

    func: ClassVar[Callable[..., Any]]
    #: The decorator's enqueue options: they apply however a call is enqueued (`liteq
    #: enqueue` too), explicit options winning as always.
    task_options: ClassVar[EnqueueOptions]

    def __init__(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs

    def call_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the function is called with: the stored ones."""
        return self.kwargs

    def run(self, job: ManagedJob) -> Any:
        """Call the function with the stored arguments; its return value is the job's result
        when the job keeps one (keep_result)."""
        result = type(self).func(*self.args, **self.call_kwargs())
        # The worker fails a job that returns an awaitable, rather than complete it unrun.
        handed_on = result is Status.WAIT_ASYNC or inspect.isawaitable(result)
        return result if handed_on or job.record.keep_result is not None else None

    def enqueue_options(self) -> EnqueueOptions:
        """The options given to `@store.task(...)`."""
        return type(self).task_options

    def description(self) -> str:
        """`module.function(args)`."""
        parts = [repr(a) for a in self.args]
        parts += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{type(self).__qualname__}({', '.join(parts)})"


class CoroutineTaskJob(TaskJob):
    """A call of an `async def` function decorated with `@store.task`: a coroutine job."""

    async def run(self, job: ManagedJob) -> Any:  # (an async run is a Job's too: see Job.run)
        """Await the function with the stored arguments; its return value is the job's
        result when the job keeps one (keep_result)."""
        result = await type(self).func(*self.args, **self.call_kwargs())
        # (One that returns a coroutine it forgot to await fails: nothing would run it.)
        keep = (
            result is Status.WAIT_ASYNC
            or job.record.keep_result is not None
            or inspect.isawaitable(result)
        )
        return result if keep else None


class Task(Generic[P, R]):
    """A function made into a job type by `@store.task(...)`.

    Call it to run it now; `enqueue(*args, **kwargs)` to run it in a worker.
    """

    def __init__(
        self,
        store: AppStore,
        func: Callable[P, R],
        options: EnqueueOptions,
        *,
        decorator: str = "@task",
        bases: tuple[type[TaskJob], type[TaskJob]] = (TaskJob, CoroutineTaskJob),
        extra: dict[str, Any] | None = None,
    ) -> None:
        """`bases`: the job class's base for a plain function and for an `async def` one;
        `extra`: more attributes of the job class (`@store.periodic` gives both)."""
        # (a worker imports a task by module and name: a partial or a callable has none)
        is_function = inspect.isfunction(func)  # (kept apart: a narrowed func returns Any)
        if not is_function:
            raise TypeError(
                f"{decorator} needs a function defined with def at module level, not {func!r}"
            )
        if "<locals>" in func.__qualname__:
            raise TypeError(
                f"{decorator} needs a module-level function; {func.__qualname__} is nested"
            )
        if inspect.isasyncgenfunction(func):
            raise TypeError(
                f"{decorator} on {func.__qualname__}: an async generator (it yields) cannot be "
                "a job; make it a def or an async def that returns"
            )
        base = bases[1] if inspect.iscoroutinefunction(func) else bases[0]
        self.store = store
        self.func = func
        self.options = options
        self.job_class: type[TaskJob] = type(
            func.__name__,
            (base,),
            {
                "func": staticmethod(func),
                "task_options": dict(options),
                "__module__": func.__module__,
                "__qualname__": func.__qualname__,
                **(extra or {}),
            },
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> ManagedJob:
        """Enqueue a call with these (JSON-encodable) arguments; return its ManagedJob."""
        return self.store.enqueue(self.job_class(list(args), dict(kwargs)))

    def enqueue_with(
        self,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> ManagedJob:
        """Enqueue a call with enqueue options for this call only (they win over the decorator's)."""
        return self.store.enqueue(self.job_class(list(args), dict(kwargs or {})), **options)

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> ManagedJob:
        """`enqueue` from async code (see the store's aenqueue): the caller's event loop
        goes on while the job is written.

            mjob = await send_email.aenqueue("ann@example.com")
        """
        return await self.store.aenqueue(self.job_class(list(args), dict(kwargs)))

    async def aenqueue_with(
        self,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> ManagedJob:
        """`enqueue_with` from async code: options for this call only, the caller's event
        loop going on while the job is written."""
        job = self.job_class(list(args), dict(kwargs or {}))
        return await self.store.aenqueue(job, **options)
