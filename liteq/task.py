"""Task: a module-level function made into a job type by `@store.task(...)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, TypeVar

from liteq.job import COROUTINES_NOT_YET, Job, is_coroutine_function
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

    def run(self, job: ManagedJob) -> Status | None:
        """Call the function with the stored arguments."""
        result = type(self).func(*self.args, **self.kwargs)
        # The worker fails a job that returns an awaitable, rather than complete it unrun.
        handed_on = result is Status.WAIT_ASYNC or inspect.isawaitable(result)
        return result if handed_on else None

    def enqueue_options(self) -> EnqueueOptions:
        """The options given to `@store.task(...)`."""
        return type(self).task_options

    def description(self) -> str:
        """`module.function(args)`."""
        parts = [repr(a) for a in self.args]
        parts += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{type(self).__qualname__}({', '.join(parts)})"


class Task(Generic[P, R]):
    """A function made into a job type by `@store.task(...)`.

    Call it to run it now; `enqueue(*args, **kwargs)` to run it in a worker.
    """

    def __init__(self, store: AppStore, func: Callable[P, R], options: EnqueueOptions) -> None:
        # (a worker imports a task by module and name: a partial or a callable has none)
        is_function = inspect.isfunction(func)  # (kept apart: a narrowed func returns Any)
        if not is_function:
            raise TypeError(
                f"@task needs a function defined with def at module level, not {func!r}"
            )
        if "<locals>" in func.__qualname__:
            raise TypeError(f"@task needs a module-level function; {func.__qualname__} is nested")
        if is_coroutine_function(func):
            raise TypeError(f"@task on {func.__qualname__}: it is {COROUTINES_NOT_YET}")
        self.store = store
        self.func = func
        self.options = options
        self.job_class: type[TaskJob] = type(
            func.__name__,
            (TaskJob,),
            {
                "func": staticmethod(func),
                "task_options": dict(options),
                "__module__": func.__module__,
                "__qualname__": func.__qualname__,
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
