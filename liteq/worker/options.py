"""WorkerOptions: how a worker runs, checked once (Worker's arguments, `liteq work`'s flags).

The one place the options are written out: `Worker.__init__` takes them through
`takes_options` (its signature is WorkerOptions', for type checkers and `inspect` alike),
and `liteq work` maps each to its flag or says why it has none (liteq/cli/work.py, checked
by a test).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Concatenate, Final, ParamSpec, TypeVar

from liteq.options import check_text
from liteq.status import DEFAULT_MAX_CRASHES

DEFAULT_GUARANTEE_MEMORY: Final = 64 * 1024 * 1024
#: The most jobs one claim may take (prefetch, concurrency): far past any gain, and a bound
#: that keeps a typo from claiming a whole queue into one process.
MAX_SLOTS: Final = 10_000

P = ParamSpec("P")
W = TypeVar("W")
S = TypeVar("S")


# (Not kw_only: the fields' order is Worker's, whose options may be passed by position.)
@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """Every option of a Worker but its store, checked once (ValueError, TypeError).

    Args:
        queues: the queues to serve (default: all).
        wakeup_every: seconds between re-checks when idle (new jobs wake it sooner).
        exit_if_no_jobs: return once no job in its queues is due now.
        exit_after_n_jobs / max_time: return after that many jobs / seconds.
        guarantee_memory: return 1 before a job if less available memory would remain.
        graceful_shutdown_timeout: seconds a signalled worker lets its job finish.
        jitter: randomize start-up and idle re-checks (never the pick-up of a new job).
        nice: add this to the process's niceness.
        lease: seconds a claim is valid; renewed while the job runs.
        check_code: return 2 when an imported module's source changes.
        check_health: log, every 10 s, conditions of the store an operator should hear of
            (a WAL file that a long reader keeps growing, say); `liteq work` does it
            in its supervisor instead.
        max_rss: return 1 before a job once this process uses more bytes than this. While
            a job runs too: past it, the job is stopped (as a crash of it, see max_crashes)
            and the worker returns 1; under `liteq work` the supervisor kills the worker.
        handle_signals: in the main thread, handle TERM/QUIT/INT/HUP as described in
            docs/deploying.md and enforce max_runtime and max_rss in a job with SIGALRM.
        prefetch: claim up to this many jobs per transaction and acknowledge completions
            in batches of as many: far faster for short jobs. Prefetched jobs are RUNNING
            and leased by this worker until they run; on a stop, those not started are
            handed back; on a crash, they are rescued like any running job (at least once).
            None (the default): the worker sizes each claim itself, one job at a time
            unless the queue is deep and its jobs short, then as many (up to 100) as it
            expects to run within about 50 ms (see worker/sizing.py; a job past a second
            has the rest of its batch handed back by the heartbeat: docs/deploying.md).
            1: one job per transaction, always.
        max_crashes: a job whose worker died while running it (a segfault, os._exit, an
            OOM or max_rss kill) this many times fails for good; each death before is a
            mulligan. Counted by whoever sees the death: `liteq work`'s supervisor, this
            worker for max_rss, or a caller of detect_hung_jobs (which uses 3).
        concurrency: up to this many coroutine jobs (`async def run`, or `@task` on an
            `async def`) in flight at once, on an event loop in a thread of the worker's
            own; a claim takes as many jobs as there are free slots (prefetch aside). Plain
            jobs still run one at a time, in the worker's main thread.

    A new option is a field here (with its check in __post_init__ and a line above): Worker
    takes it, and `liteq work` needs a flag for it or a reason for none (cli/work.py).
    """

    queues: Sequence[str] | None = None
    wakeup_every: float = 5.0
    exit_if_no_jobs: bool = False
    exit_after_n_jobs: int | None = None
    max_time: float | None = None
    guarantee_memory: int = DEFAULT_GUARANTEE_MEMORY
    graceful_shutdown_timeout: float = 5.0
    jitter: bool = True
    nice: int | None = None
    lease: float = 30.0
    check_code: bool = True
    check_health: bool = True
    max_rss: int | None = None
    handle_signals: bool = True
    prefetch: int | None = None
    max_crashes: int = DEFAULT_MAX_CRASHES
    concurrency: int = 1

    def __post_init__(self) -> None:
        queues = self.queues
        if isinstance(queues, str):
            raise TypeError(f"queues must be a list of names, not the string {queues!r}")
        if queues is not None:
            object.__setattr__(self, "queues", tuple(queues))
            for queue in queues:
                check_text(queue, "a queue name")
        if self.wakeup_every <= 0:
            raise ValueError(f"wakeup_every must be positive, not {self.wakeup_every!r}")
        if self.exit_after_n_jobs is not None and self.exit_after_n_jobs < 1:
            raise ValueError(
                f"exit_after_n_jobs must be at least 1, not {self.exit_after_n_jobs!r}"
            )
        if self.lease <= 0:
            raise ValueError(f"lease must be positive, not {self.lease!r}")
        if self.prefetch is not None:
            _check_count("prefetch", self.prefetch, MAX_SLOTS)
        _check_count("max_crashes", self.max_crashes)
        _check_count("concurrency", self.concurrency, MAX_SLOTS)
        if self.max_rss is not None and self.max_rss < 1:
            raise ValueError(f"max_rss must be a positive number of bytes, not {self.max_rss!r}")


def _check_count(name: str, value: object, most: int | None = None) -> None:
    """ValueError unless `value` is an int (not a bool) from 1 (to `most`)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < 1
        or (most is not None and value > most)
    ):
        bounds = "of at least 1" if most is None else f"from 1 to {most}"
        raise ValueError(f"{name} must be an int {bounds}, not {value!r}")


def takes_options(
    options: Callable[P, WorkerOptions],
) -> Callable[[Callable[Concatenate[W, S, ...], None]], Callable[Concatenate[W, S, P], None]]:
    """Give an `__init__(self, store, *args, **kwargs)` the options of `options` (WorkerOptions)
    as its parameters after the store: type checkers check a call against them, and
    `inspect.signature` (help(), editors) shows them with their defaults."""

    def decorate(
        init: Callable[Concatenate[W, S, ...], None],
    ) -> Callable[Concatenate[W, S, P], None]:
        own = list(inspect.signature(init).parameters.values())[:2]  # self, store
        init.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  # read by inspect
            [*own, *inspect.signature(options).parameters.values()]
        )
        return init

    return decorate
