"""The `liteq` command line: `liteq demo`, `liteq work`, and a look at the queue."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from liteq.errors import LiteqError, StoreCorrupt, StoreError
from liteq.status import Status
from liteq.stores import connect, sqlite_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liteq", description="liteq: a job queue whose queue is one SQLite file."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a realistic mix of jobs and show the result")
    demo.add_argument("--db", default="liteq-demo.sqlite", help="file to create (replaced)")

    work = sub.add_parser(
        "work",
        help="run worker processes under a supervisor",
        description="Fork N worker processes, restart any that exits, forward signals. "
        "TERM/QUIT: workers finish their jobs (or re-queue them after --graceful-timeout) "
        "and everything exits; INT: finish then exit, a second INT stops now; "
        "HUP: rolling restart (new code, no job lost).",
    )
    _db_argument(work)
    work.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="module defining job classes, imported in each worker (repeatable)",
    )
    work.add_argument(
        "--queue",
        dest="queues",
        action="append",
        metavar="QUEUE",
        help="serve only this queue (repeatable; default: all)",
    )
    work.add_argument(
        "--processes",
        "-n",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes (default 1)",
    )
    work.add_argument(
        "--max-jobs", type=_positive_int, metavar="N", help="restart a worker after N jobs"
    )
    work.add_argument(
        "--max-time", type=_positive_float, metavar="S", help="restart a worker after S seconds"
    )
    work.add_argument(
        "--graceful-timeout",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="on TERM, seconds a job may take to finish before it is re-queued (default 5)",
    )
    work.add_argument(
        "--wakeup-every",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="idle re-check interval; new jobs wake workers sooner (default 5)",
    )
    work.add_argument(
        "--guarantee-memory",
        type=_bytes,
        default=64 << 20,
        metavar="BYTES",
        help="restart a worker before a job if less memory is available (default 64M)",
    )
    work.add_argument(
        "--max-rss",
        type=_bytes,
        metavar="BYTES",
        help="restart a worker before a job once it uses more memory than this",
    )
    work.add_argument(
        "--lease",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="seconds a worker's claim holds without renewal before its job may be "
        "rescued (renewed every S/3 while the job runs; default 30)",
    )
    work.add_argument(
        "--prefetch",
        type=_positive_int,
        default=1,
        metavar="K",
        help="claim K jobs per transaction and acknowledge in batches (short jobs)",
    )
    work.add_argument("--nice", type=int, metavar="N", help="add N to the workers' niceness")
    work.add_argument("--no-jitter", action="store_true", help="no random start-up/idle delays")
    work.add_argument(
        "--burst",
        action="store_true",
        help="workers exit when no job is due, and then so does liteq work",
    )
    work.add_argument("-v", "--verbose", action="count", default=0, help="log each job (-v)")
    work.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")

    db = sub.add_parser("db", help="look after an SQLite queue file")
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="check the file for damage",
        description="Check an SQLite queue file with PRAGMA quick_check (--full: "
        "integrity_check, which also compares indexes with their tables). Exit 0: no "
        "damage; 1: damage found (what SQLite says is printed); 2: no such queue.",
    )
    _db_argument(check)
    check.add_argument("--full", action="store_true", help="also check indexes (slower)")

    jobs = sub.add_parser("jobs", help="list jobs in a queue file")
    _db_argument(jobs)
    jobs.add_argument("--queue", help="only this queue")
    jobs.add_argument("--status", choices=[s.value for s in Status], help="only this status")
    jobs.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import job classes from MODULE to describe jobs (repeatable)",
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _bytes(text: str) -> int:
    """`67108864`, `64M`, `1.5G`, `512k` -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    clean = text.strip().lower().removesuffix("b").removesuffix("i")
    factor = units.get(clean[-1:], 1)
    number = clean[:-1] if clean[-1:] in units else clean
    try:
        value = float(number) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64M, 1G)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return int(value)


def _db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=os.environ.get("LITEQ_URL"),
        help="store URL, e.g. sqlite:///jobs.sqlite (default: $LITEQ_URL)",
    )


def _store_url(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if not args.db:
        parser.error("give --db URL (e.g. --db sqlite:///jobs.sqlite) or set LITEQ_URL")
    url: str = args.db
    return url if "://" in url else f"sqlite:///{url}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the liteq command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "work":
        return _work(args, parser)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.command == "demo":
        from liteq.demo import run_demo  # only the demo needs its job classes

        return run_demo(args.db)
    if args.command == "db":
        return _db_check(args, parser)
    if args.command == "jobs":
        from liteq.demo import table

        for module in args.imports:
            importlib.import_module(module)
        store = connect(_store_url(args, parser))
        status = Status(args.status) if args.status else None
        print(table(list(store.jobs(queue=args.queue, status=status))))
        return 0
    parser.error(f"unknown command {args.command}")  # exits with status 2


def _db_check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from liteq.stores.sqlite import SQLiteStore

    url = _store_url(args, parser)
    try:
        path = sqlite_path(url)
        if not os.path.exists(path):
            raise StoreError(f"no queue at {path}")
        store = SQLiteStore(path)
        problems = store.integrity(full=args.full)
    except StoreCorrupt as exc:
        print(f"liteq: {exc}", file=sys.stderr)
        return 1
    except (LiteqError, ValueError) as exc:
        print(f"liteq: {exc}", file=sys.stderr)
        return 2
    if problems:
        print(f"{store.path} is damaged; SQLite says:")
        for line in problems[:20]:
            print(f"  {line}")
        if len(problems) > 20:
            print(f"  … and {len(problems) - 20} more")
        print(
            "Stop every process that uses it, then restore it from a backup, or save what "
            f"it holds with `sqlite3 {store.path} .recover | sqlite3 recovered.sqlite`."
        )
        return 1
    print(f"{store.path}: ok (write-ahead log {store.wal_bytes():,} bytes)")
    return 0


def _work(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from liteq.worker.options import WorkerOptions
    from liteq.worker.supervisor import Supervisor

    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s"
    )
    url = _store_url(args, parser)
    try:
        connect(url).close()  # a bad URL or file is an error now, not a crash loop later
    except (ValueError, LiteqError) as exc:
        parser.error(str(exc))
    options = WorkerOptions(
        queues=args.queues,
        wakeup_every=args.wakeup_every,
        exit_if_no_jobs=args.burst,
        exit_after_n_jobs=args.max_jobs,
        max_time=args.max_time,
        guarantee_memory=args.guarantee_memory,
        max_rss=args.max_rss,
        graceful_shutdown_timeout=args.graceful_timeout,
        jitter=not args.no_jitter,
        nice=args.nice,
        prefetch=args.prefetch,
        lease=args.lease,
    )
    supervisor = Supervisor(
        url,
        imports=args.imports,
        processes=args.processes,
        worker_options=options,
        burst=args.burst,
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
