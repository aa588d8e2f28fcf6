"""The `liteq` command line: `liteq demo`, `liteq work`, and a look at the queue."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from liteq.managed import Status
from liteq.stores import connect


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liteq", description="liteq: a job queue whose queue is one SQLite file."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a realistic mix of jobs and show the result")
    demo.add_argument("--db", default="liteq-demo.sqlite", help="file to create (replaced)")

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
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.command == "demo":
        from liteq.demo import run_demo  # only the demo needs its job classes

        return run_demo(args.db)
    if args.command == "jobs":
        from liteq.demo import table

        for module in args.imports:
            importlib.import_module(module)
        store = connect(_store_url(args, parser))
        status = Status(args.status) if args.status else None
        print(table(list(store.jobs(queue=args.queue, status=status))))
        return 0
    parser.error(f"unknown command {args.command}")  # exits with status 2


if __name__ == "__main__":
    sys.exit(main())
