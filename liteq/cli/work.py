"""`liteq work`: worker processes under a supervisor."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from liteq.cli.common import (
    Commands,
    Failure,
    add_db,
    open_store,
    positive_float,
    positive_int,
    size,
    store_url,
    up_to,
)
from liteq.errors import StoreUnavailable
from liteq.options import check_text
from liteq.worker.autoscale import DEFAULT_COOLDOWN, DEFAULT_TARGET_WAIT
from liteq.worker.options import MAX_SLOTS, WorkerOptions

#: `liteq work`'s own exit when its workers cannot import their modules.
EXIT_IMPORTS: int = 70
#: The longest wait between tries to reach a store's server at start.
MAX_WAIT = 30.0

if TYPE_CHECKING:
    from liteq.worker.pools import PoolSpec

log = logging.getLogger("liteq.supervisor")

#: What `liteq work` gives its workers unless a flag says otherwise.
DEFAULTS: Final = WorkerOptions()

#: The WorkerOptions no flag of `liteq work` sets, and why. Every other option has a flag
#: whose dest is its name (tests/test_worker_options.py holds both to WorkerOptions).
NO_FLAG: Final[Mapping[str, str]] = {
    "check_code": "always on: a worker whose code changed restarts, so a deploy takes effect",
    "check_health": "the supervisor checks the store's health itself, for all its workers",
    "handle_signals": "always on: workers obey the signals their supervisor forwards",
}


def _prefetch(text: str) -> int | None:
    """`--prefetch`: K, or `auto` (None: the worker sizes its claims)."""
    if text.strip() == "auto":
        return None
    try:
        return up_to(MAX_SLOTS)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected auto or a whole number from 1 to {MAX_SLOTS}, not {text!r}"
        ) from None


def add_parser(sub: Commands) -> None:
    """Register `liteq work`."""
    work = sub.add_parser(
        "work",
        help="run worker processes under a supervisor",
        description="Fork N worker processes, restart any that exits, forward signals. "
        "TERM/QUIT: workers finish their jobs (or re-queue them after --graceful-timeout) "
        "and everything exits; INT: finish then exit, a second INT stops now; "
        "HUP: rolling restart (new code, no job lost). Workers import each --import module "
        "after fork, from the working directory too, and find the queue's URL in LITEQ_URL.",
    )
    add_db(work)
    work.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="module defining job classes, imported in each worker (repeatable; required)",
    )
    # Each flag's dest is the WorkerOptions field it sets, its default that field's.
    work.add_argument(
        "--queue",
        dest="queues",
        action="append",
        type=queue_name,
        metavar="QUEUE",
        help="serve only this queue (repeatable; default: all)",
    )
    work.add_argument(
        "--processes", "-n", type=positive_int, metavar="N", help="workers (default 1)"
    )
    work.add_argument(
        "--autoscale",
        type=min_max,
        metavar="MIN:MAX",
        help="one pool of MIN to MAX workers for all queues (or --queue's), grown while "
        "jobs wait longer than --target-wait and shrunk when idle (not with --processes)",
    )
    work.add_argument(
        "--pool",
        dest="pools",
        action="append",
        type=pool,
        metavar="QUEUES=MIN:MAX",
        help="an autoscaled pool of MIN to MAX workers serving QUEUES (comma-separated), "
        "e.g. --pool mail=1:4 --pool default,reports=0:8 (repeatable)",
    )
    work.add_argument(
        "--target-wait",
        type=positive_float,
        default=DEFAULT_TARGET_WAIT,
        metavar="S",
        help="autoscaling: grow a pool while its oldest due job has waited longer than this, "
        f"or its backlog would take longer to clear (default {DEFAULT_TARGET_WAIT:g})",
    )
    work.add_argument(
        "--max-processes",
        type=positive_int,
        metavar="N",
        help="autoscaling: at most N worker processes in all pools together",
    )
    work.add_argument(
        "--max-jobs",
        dest="exit_after_n_jobs",
        type=positive_int,
        metavar="N",
        help="restart a worker after N jobs",
    )
    work.add_argument(
        "--max-time", type=positive_float, metavar="S", help="restart a worker after S seconds"
    )
    work.add_argument(
        "--graceful-timeout",
        dest="graceful_shutdown_timeout",
        type=positive_float,
        default=DEFAULTS.graceful_shutdown_timeout,
        metavar="S",
        help="on TERM, seconds a job may take to finish before it is re-queued "
        f"(default {DEFAULTS.graceful_shutdown_timeout:g})",
    )
    work.add_argument(
        "--wakeup-every",
        type=positive_float,
        default=DEFAULTS.wakeup_every,
        metavar="S",
        help="idle re-check interval; new jobs wake workers sooner "
        f"(default {DEFAULTS.wakeup_every:g})",
    )
    work.add_argument(
        "--guarantee-memory",
        type=size,
        default=DEFAULTS.guarantee_memory,
        metavar="BYTES",
        help="restart a worker before a job if less memory is available "
        f"(default {DEFAULTS.guarantee_memory >> 20}M)",
    )
    work.add_argument(
        "--max-rss",
        type=size,
        metavar="BYTES",
        help="restart a worker before a job once it uses more memory than this; a worker "
        "past it while a job runs is killed, a crash of that job (see --max-crashes)",
    )
    work.add_argument(
        "--max-crashes",
        type=positive_int,
        default=DEFAULTS.max_crashes,
        metavar="N",
        help="a job whose worker died while running it (segfault, os._exit, OOM, "
        f"--max-rss) N times fails for good (default {DEFAULTS.max_crashes})",
    )
    work.add_argument(
        "--lease",
        type=positive_float,
        default=DEFAULTS.lease,
        metavar="S",
        help="seconds a worker's claim holds without renewal before its job may be "
        f"rescued (renewed every S/3 while the job runs; default {DEFAULTS.lease:g})",
    )
    work.add_argument(
        "--prefetch",
        type=_prefetch,
        default=DEFAULTS.prefetch,
        metavar="K",
        help="claim K jobs per transaction and acknowledge in batches (short jobs); auto "
        "(the default): each worker sizes its claims, more while the queue is deep and its "
        "jobs short; 1: one job per claim, always",
    )
    work.add_argument(
        "--concurrency",
        type=up_to(MAX_SLOTS),
        default=DEFAULTS.concurrency,
        metavar="N",
        help="run up to N coroutine jobs (async def) at once in each worker process "
        "(plain jobs still run one at a time; default 1)",
    )
    work.add_argument("--nice", type=int, metavar="N", help="add N to the workers' niceness")
    work.add_argument(
        "--no-jitter",
        dest="jitter",
        action="store_false",
        help="no random start-up/idle delays",
    )
    work.add_argument(
        "--burst",
        dest="exit_if_no_jobs",
        action="store_true",
        help="workers exit when no job is due, and then so does liteq work",
    )
    work.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    work.set_defaults(func=_work)


def _work(args: argparse.Namespace) -> int:
    from liteq.worker.supervisor import Supervisor  # (the other commands need none of it)

    if not args.imports:
        raise Failure(
            "liteq work needs --import MODULE: the module that defines your job classes "
            "(workers that know no job type would only hand every job back)"
        )
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s",
        force=True,
    )
    pools = autoscaled_pools(args)
    reserve = memory_reserve() if pools else None
    url = store_url(args)
    _open_patiently(args)  # a bad URL or file fails now, not in a loop
    _check_imports(args.imports, url)
    supervisor = Supervisor(
        url,
        imports=args.imports,
        processes=args.processes or 1,
        worker_options=worker_options(args),
        burst=args.exit_if_no_jobs,
        verbose=args.verbose > 0,
        pools=pools,
        max_processes=args.max_processes,
        memory_reserve=reserve,
    )
    return supervisor.run()


#: For tests only: seconds a pool must be idle before it shrinks a step (else
#: DEFAULT_COOLDOWN). An environment variable, not a flag: the cooldown is no knob to tune.
COOLDOWN_ENV: Final = "LITEQ_AUTOSCALE_COOLDOWN"


#: Bytes of available memory a new autoscaled worker must leave to the rest of the host
#: (default: --guarantee-memory). An environment variable: a deployment's fact, rarely set.
RESERVE_ENV: Final = "LITEQ_AUTOSCALE_RESERVE"


def memory_reserve() -> int | None:
    """LITEQ_AUTOSCALE_RESERVE in bytes (64M, 2G...), None if unset; a bad one refused."""
    text = os.environ.get(RESERVE_ENV)
    if not text:
        return None
    try:
        return size(text)
    except argparse.ArgumentTypeError as exc:
        raise Failure(f"{RESERVE_ENV}: {exc}") from None


def min_max(text: str) -> tuple[int, int]:
    """An argparse type: MIN:MAX, whole numbers, 0 <= MIN <= MAX, MAX >= 1."""
    low, colon, high = text.partition(":")
    if not colon or not low.strip().isdigit() or not high.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected MIN:MAX (say 1:4), not {text!r}")
    lo, hi = int(low), int(high)
    if lo > hi or hi < 1 or hi > MAX_SLOTS:
        raise argparse.ArgumentTypeError(
            f"expected MIN:MAX with 0 <= MIN <= MAX and 1 <= MAX <= {MAX_SLOTS}, not {text!r}"
        )
    return lo, hi


def queue_name(text: str) -> str:
    """An argparse type: a queue name every store can hold, refused before any store is
    opened."""
    try:
        return check_text(text, "a queue name")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pool(text: str) -> tuple[tuple[str, ...], int, int]:
    """An argparse type: QUEUES=MIN:MAX, QUEUES comma-separated queue names."""
    names, equals, limits = text.rpartition("=")
    queues = tuple(queue_name(q.strip()) for q in names.split(","))
    if not equals or not all(queues):
        raise argparse.ArgumentTypeError(f"expected QUEUES=MIN:MAX (say mail=1:4), not {text!r}")
    return (queues, *min_max(limits))


def autoscaled_pools(args: argparse.Namespace) -> list[PoolSpec]:
    """The pools --autoscale or --pool ask for (none: a fixed --processes), checked."""
    from liteq.worker.autoscale import Limits
    from liteq.worker.pools import PoolSpec

    if args.autoscale is None and not args.pools:
        for flag, value in (
            ("--target-wait", args.target_wait != DEFAULT_TARGET_WAIT),
            ("--max-processes", args.max_processes is not None),
        ):
            if value:
                raise Failure(f"{flag} needs --autoscale or --pool")
        return []
    if args.processes is not None:
        raise Failure("--processes sets a fixed number of workers: not with --autoscale/--pool")
    if args.autoscale is not None and args.pools:
        raise Failure("--autoscale is one pool for all queues: use --pool for each instead")
    if args.exit_if_no_jobs:
        raise Failure("--burst drains with a fixed number of workers: not with autoscaling")
    cooldown = float(os.environ.get(COOLDOWN_ENV) or DEFAULT_COOLDOWN)
    if args.autoscale is not None:
        specs = [
            ("all" if not args.queues else ",".join(args.queues), args.queues, *args.autoscale)
        ]
    else:
        if args.queues:
            raise Failure("--queue with --pool: name each pool's queues in its --pool")
        seen: set[str] = set()
        specs = []
        for queues, low, high in args.pools:
            twice = seen & set(queues)
            if twice:
                raise Failure(f"queue {sorted(twice)[0]!r} is in two --pool options")
            seen |= set(queues)
            specs.append((",".join(queues), list(queues), low, high))
    pools = [
        PoolSpec(name, queues, Limits(low, high, args.target_wait, cooldown))
        for name, queues, low, high in specs
    ]
    least = sum(p.limits.minimum for p in pools)
    if args.max_processes is not None and args.max_processes < least:
        raise Failure(
            f"--max-processes {args.max_processes} is below the pools' minimums ({least})"
        )
    return pools


def worker_options(args: argparse.Namespace) -> WorkerOptions:
    """The WorkerOptions `liteq work`'s flags ask for (each flag's dest is its field)."""
    fields = (field.name for field in dataclasses.fields(WorkerOptions))
    return WorkerOptions(**{name: getattr(args, name) for name in fields if name not in NO_FLAG})


def _open_patiently(args: argparse.Namespace) -> None:
    """Open the store once, to check it; while its server cannot be reached (a database
    that starts after liteq work does, at boot), wait and try again, saying why."""
    delay = 1.0
    while True:
        try:
            open_store(args, readonly=False).close()
            return
        except StoreUnavailable as exc:
            log.warning("%s: trying again in %.0fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, MAX_WAIT)


def _check_imports(modules: list[str], url: str) -> None:
    """Import the modules as a worker will (in a process of its own: the supervisor never
    imports the application's code), and say in one line why one cannot be."""
    code = (
        "import importlib, os, sys\n"
        "sys.path.insert(0, os.getcwd())\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except BaseException as exc:\n"
        "        print(f'{name}: {type(exc).__name__}: {exc}', file=sys.stderr)\n"
        "        sys.exit(1)\n"
    )
    env = {**os.environ, "LITEQ_URL": url}
    result = subprocess.run(  # noqa: S603 - this interpreter, liteq's own code
        [sys.executable, "-c", code, *modules], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        if result.stderr.strip():
            reason = result.stderr.strip().splitlines()[-1]
        elif result.returncode < 0:  # (killed: by an OOM killer, say)
            reason = f"{' '.join(modules)}: the check was killed by signal {-result.returncode}"
        else:
            reason = f"{' '.join(modules)}: the check exited {result.returncode}, saying nothing"
        raise Failure(
            f"workers could not import {reason} (the working directory {os.getcwd()} is on "
            "the import path)",
            EXIT_IMPORTS,
        )
