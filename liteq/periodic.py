"""Periodic jobs: `@store.periodic(cron)` or `@store.periodic(every=...)`, their slots,
and the process's registry of schedules.

A schedule's *slots* are the times its job is due: for `every=N`, the multiples of N
seconds since the epoch (so that every process, on every host, agrees on them); for a
cron string, the times cronsim gives in the schedule's time zone (Debian cron's rules
across a DST change: docs/concepts.md). A slot is a whole number of epoch seconds.

The decorator fills a registry of this process (name -> Periodic) as the application's
modules are imported; a worker (`liteq work --import app`) reads that registry, not the
store object the module made, and enqueues each slot's job through its own store, which
guarantees one job per (name, slot) (`Schedules.run_schedule`).
"""

from __future__ import annotations

import abc
import inspect
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, ClassVar, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from liteq.codec import encode_as, how_to_encode
from liteq.job import Job, type_name
from liteq.options import EnqueueOptions, build_record, check_text
from liteq.task import CoroutineTaskJob, Task, TaskJob

if TYPE_CHECKING:
    from liteq.stores.contract import AppStore

#: How the schedules' row names `every=N` (and how `liteq schedules` reads it back).
EVERY_PREFIX: Final = "every "
INSTALL_CRON: Final = "pip install 'liteq-jobs[cron]'"


class Schedule(abc.ABC):
    """When a schedule's slots fall: `spec` (as stored) in the time zone `tz`."""

    spec: str
    tz: str

    def __init__(self, tz: str) -> None:
        self.tz = tz
        self.zone: tzinfo = time_zone(tz)

    @abc.abstractmethod
    def after(self, when: float) -> int | None:
        """The first slot later than `when` (epoch seconds), or None: none ever."""

    @abc.abstractmethod
    def latest(self, now: float, after: float, count: int) -> list[int]:
        """Up to `count` of the latest slots later than `after` and no later than `now`,
        in order (`count` 0: the latest one alone, if any)."""

    def local(self, slot: float) -> datetime:
        """A slot as an aware datetime in the schedule's zone."""
        return datetime.fromtimestamp(slot, self.zone)


class Every(Schedule):
    """Every `seconds` seconds: the multiples of it since the epoch."""

    def __init__(self, seconds: int, tz: str) -> None:
        super().__init__(tz)
        self.seconds = seconds
        self.spec = f"{EVERY_PREFIX}{seconds}s"

    def after(self, when: float) -> int:
        return (math.floor(when) // self.seconds + 1) * self.seconds

    def latest(self, now: float, after: float, count: int) -> list[int]:
        last = math.floor(now) // self.seconds * self.seconds
        first = max(last - (max(count, 1) - 1) * self.seconds, self.after(after))
        return list(range(first, last + 1, self.seconds))


class Cron(Schedule):
    """A five-field cron string, read by cronsim, in the zone `tz`."""

    def __init__(self, spec: str, tz: str) -> None:
        super().__init__(tz)
        try:
            from cronsim import CronSim, CronSimError
        except ImportError as exc:
            raise ImportError(
                f"a cron schedule ({spec!r}) needs cronsim: {INSTALL_CRON} "
                "(or schedule with every=SECONDS, which needs nothing)",
                name="cronsim",
            ) from exc
        self._cronsim = CronSim
        fields = spec.split()
        if len(fields) != 5:
            raise ValueError(
                f"bad cron string {spec!r}: it has {len(fields)} fields; give five "
                "(minute hour day-of-month month day-of-week), e.g. '0 3 * * *'"
            )
        self.spec = " ".join(fields)
        try:
            CronSim(self.spec, datetime.now(UTC))
        except CronSimError as exc:
            raise ValueError(f"bad cron string {spec!r}: {exc}") from None
        # cronsim treats datetime.UTC specially (no DST to handle): quicker.
        self._start_zone = UTC if tz == "UTC" else self.zone

    def _iterate(self, when: float, reverse: bool) -> Any:
        return self._cronsim(
            self.spec, datetime.fromtimestamp(when, self._start_zone), reverse=reverse
        )

    def after(self, when: float) -> int | None:
        try:
            return int(next(self._iterate(math.floor(when), False)).timestamp())
        except StopIteration:  # (cronsim gives up after fifty years without one)
            return None

    def latest(self, now: float, after: float, count: int) -> list[int]:
        found: list[int] = []
        # Backwards from now: its first tick lands on now (whole seconds), which counts.
        for slot in self._iterate(math.floor(now) + 1, True):
            stamp = int(slot.timestamp())
            if stamp <= after or len(found) >= max(count, 1):
                break
            found.append(stamp)
        return found[::-1]


def time_zone(tz: object) -> tzinfo:
    """The zone an IANA name gives; ValueError (or TypeError) for a name zoneinfo lacks."""
    check_text(tz, "tz")
    assert isinstance(tz, str)  # noqa: S101 - check_text said so
    if tz == "UTC":
        return UTC
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone tz={tz!r}: give an IANA name such as 'UTC' or "
            f"'Europe/Berlin' ({type(exc).__name__})"
        ) from None


def schedule_of(spec: str, tz: str) -> Schedule:
    """The Schedule a stored spec and zone name mean (`every Ns`, or a cron string)."""
    if spec.startswith(EVERY_PREFIX) and spec.endswith("s"):
        return Every(int(spec[len(EVERY_PREFIX) : -1]), tz)
    return Cron(spec, tz)


def _every_seconds(every: object) -> int:
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"every must be seconds (a number) or a timedelta, not {every!r}")
    if not math.isfinite(seconds) or seconds < 1 or seconds != int(seconds):
        raise ValueError(
            f"every must be a whole number of seconds, at least 1, not {every!r} "
            "(slots are whole seconds)"
        )
    return int(seconds)


class SlotTaskJob(TaskJob):
    """A slot's call of a function decorated with `@store.periodic`: `scheduled_at` is
    stored as ISO text and given to the function as an aware datetime in the zone."""

    time_zone: ClassVar[str] = "UTC"

    def call_kwargs(self) -> dict[str, Any]:
        """The stored arguments, `scheduled_at` back as an aware datetime."""
        return aware_kwargs(self.kwargs, type(self).time_zone)


class CoroutineSlotTaskJob(CoroutineTaskJob):
    """SlotTaskJob for an `async def` function."""

    time_zone: ClassVar[str] = "UTC"

    def call_kwargs(self) -> dict[str, Any]:
        """The stored arguments, `scheduled_at` back as an aware datetime."""
        return aware_kwargs(self.kwargs, type(self).time_zone)


def aware_kwargs(kwargs: dict[str, Any], tz: str) -> dict[str, Any]:
    """`kwargs` with a stored `scheduled_at` (ISO text) made an aware datetime in `tz`."""
    stored = kwargs.get("scheduled_at")
    if not isinstance(stored, str):
        return kwargs
    return {**kwargs, "scheduled_at": datetime.fromisoformat(stored).astimezone(time_zone(tz))}


class Periodic:
    """A job scheduled by `@store.periodic(...)`: what each slot enqueues, and when.

    Calling it calls the function, as the undecorated function would be called.
    """

    def __init__(
        self,
        store: AppStore,
        target: Callable[..., Any] | Job,
        schedule: Schedule,
        *,
        name: str | None,
        catch_up: int,
        options: EnqueueOptions,
    ) -> None:
        if isinstance(catch_up, bool) or not isinstance(catch_up, int):
            raise TypeError(f"catch_up must be an int, not {catch_up!r}")
        if catch_up < 0:
            raise ValueError(f"catch_up must be 0 (skip missed slots) or more, not {catch_up}")
        self.schedule = schedule
        self.catch_up = catch_up
        self.options = options
        self.func: Callable[..., Any] | None = None
        self.job: Job | None = None
        self.takes_scheduled_at = False
        now = store.clock()
        if isinstance(target, Job):
            self.job = target
            how = how_to_encode(type(target))
            self.job_type, self._state = encode_as(target, how)  # (checks it can be stored)
            default_name = type_name(type(target))
            build_record(target, options, now)  # the options, checked now
        elif isinstance(target, type) and issubclass(target, Job):
            raise TypeError(
                f"@periodic takes a function or a Job instance, not the class "
                f"{target.__qualname__}: schedule an instance, e.g. "
                f"store.periodic(..., name='...')({target.__qualname__}(...))"
            )
        else:
            zone = schedule.tz
            bases = (SlotTaskJob, CoroutineSlotTaskJob)
            task: Task[Any, Any] = Task(
                store,
                target,
                options,
                decorator="@periodic",
                bases=bases,
                extra={"time_zone": zone},
            )
            self.func = target
            self.task = task
            self.job_type = type_name(task.job_class)
            self._state = ""
            self.takes_scheduled_at = _takes(target, "scheduled_at")
            default_name = f"{target.__module__}.{target.__qualname__}"
            build_record(self.job_for(0), options, now)  # the options, checked now
        self.name = check_text(default_name if name is None else name, "name")
        if not self.name.strip():
            raise ValueError("a schedule's name must not be empty")
        self.queue: str = options.get("queue") or "default"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.func is None:
            raise TypeError(f"schedule {self.name!r} runs a Job instance: it is not callable")
        return self.func(*args, **kwargs)

    def job_for(self, slot: int) -> Job:
        """The job a slot enqueues."""
        if self.job is not None:
            return self.job
        kwargs: dict[str, Any] = {}
        if self.takes_scheduled_at:
            kwargs["scheduled_at"] = self.schedule.local(slot).isoformat()
        return self.task.job_class([], kwargs)

    def options_for(self, slot: int) -> EnqueueOptions:
        """A slot's enqueue options: the decorator's, due at the slot's time (its run_at)."""
        return {**self.options, "run_at": float(slot)}

    def identity(self) -> tuple[Any, ...]:
        """What makes two definitions the same schedule (a module imported twice)."""
        return (
            self.schedule.spec,
            self.schedule.tz,
            self.catch_up,
            self.job_type,
            self._state,
            sorted(self.options.items()),
        )

    def __repr__(self) -> str:
        return f"Periodic({self.name!r}, {self.schedule.spec!r}, tz={self.schedule.tz!r})"


def _takes(func: Callable[..., Any], parameter: str) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return parameter in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


# -- the registry of this process ------------------------------------------------------------
_lock = threading.Lock()
_SCHEDULES: dict[str, Periodic] = {}
#: Moves on at every change of the registry (a worker reloads its schedules then).
_generation = [0]


def register(periodic: Periodic) -> Periodic:
    """Add a schedule to this process's registry; ValueError if its name is taken by
    another definition (the same definition again, a module imported twice, is fine)."""
    with _lock:
        known = _SCHEDULES.get(periodic.name)
        if known is not None and known.identity() != periodic.identity():
            raise ValueError(
                f"schedule name {periodic.name!r} is used twice ({known!r} and {periodic!r}): "
                "give each schedule its own name= "
            )
        _SCHEDULES[periodic.name] = periodic
        _generation[0] += 1
    return periodic


def unregister(name: str) -> None:
    """Forget a schedule in this process (tests; a worker stops enqueuing its slots)."""
    with _lock:
        if _SCHEDULES.pop(name, None) is not None:
            _generation[0] += 1


def registered() -> tuple[int, list[Periodic]]:
    """The registry's generation and its schedules, by name."""
    with _lock:
        return _generation[0], [_SCHEDULES[n] for n in sorted(_SCHEDULES)]


def make_schedule(cron: str | None, every: float | timedelta | None, tz: str) -> Schedule:
    """The Schedule `@store.periodic`'s arguments give; TypeError or ValueError (or an
    ImportError naming the extra to install, for a cron string without cronsim)."""
    time_zone(tz)
    if (cron is None) == (every is None):
        raise TypeError(
            "@periodic takes a cron string or every=SECONDS, one of them: "
            "@store.periodic('0 3 * * *') or @store.periodic(every=30)"
        )
    if cron is not None:
        if not isinstance(cron, str):
            raise TypeError(f"a cron schedule is a string such as '0 3 * * *', not {cron!r}")
        return Cron(cron, tz)
    return Every(_every_seconds(every), tz)
