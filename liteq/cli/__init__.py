"""The `liteq` command line: `main(argv)` runs one command and returns its exit status.

Every mistake gets one line on stderr and a documented exit status (docs/cli.md); `-v`
shows the traceback too.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

import apsw

from liteq import __version__
from liteq.cli import act, dashboard, db, look, schedules, work
from liteq.cli.common import (
    BAD_INPUT,
    CLOSED_PIPE,
    INTERRUPTED,
    OPENED,
    PARTLY,
    UNAVAILABLE,
    Commands,
    Failure,
)
from liteq.cli.output import error_line
from liteq.errors import (
    InvalidState,
    InvalidStateChange,
    JobLocked,
    JobNotFound,
    LiteqError,
    StoreCorrupt,
    StoreMoved,
    StoreUnavailable,
)
from liteq.worker.exits import EXIT_STORE_CORRUPT, EXIT_STORE_MOVED

DISTRIBUTION = "liteq-jobs"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        error_line(f"{message} (see {self.prog} --help)")
        raise SystemExit(BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = _Parser(
        prog="liteq",
        description="liteq: a job queue whose queue is one SQLite file.",
        epilog="Every command: `liteq COMMAND --help`. The reference: docs/cli.md.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"liteq {__version__} ({DISTRIBUTION}; SQLite {apsw.sqlite_lib_version()}, "
        f"apsw {apsw.apsw_version()}, Python {platform.python_version()})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run a realistic mix of jobs and show the result")
    demo.add_argument(
        "--db", default="liteq-demo.sqlite", metavar="FILE", help="its file (a demo queue)"
    )
    demo.set_defaults(func=_demo)
    work.add_parser(sub)
    look.add_parsers(sub)
    schedules.add_parser(sub)
    act.add_parsers(sub)
    db.add_parsers(sub)
    dashboard.add_parser(sub)
    _every_command_takes_verbose(sub)
    return parser


def _every_command_takes_verbose(sub: Commands) -> None:
    for command in sub.choices.values():
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            _every_command_takes_verbose(nested[0])
            continue
        command.add_argument(
            "-v", "--verbose", action="count", default=0, help="say more (a traceback on errors)"
        )


def _demo(args: argparse.Namespace) -> int:
    from liteq.demo import run_demo  # only the demo needs its job classes

    return run_demo(args.db)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the liteq command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, so that a reader gone away is met here (see below)
        return code
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return INTERRUPTED
    except BrokenPipeError:
        return _reader_gone()
    except (LiteqError, ValueError, TypeError, OSError, ImportError, apsw.Error) as exc:
        if args.verbose:
            traceback.print_exc()
        error_line(str(exc))
        return _exit_status(exc)
    finally:
        while OPENED:
            OPENED.pop().close()


def _reader_gone() -> int:
    """The reader of stdout went away (`liteq jobs | head`): end quietly, as a command
    that SIGPIPE ended would. Output still buffered goes to /dev/null, or Python would
    fail again flushing it at exit and print about it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return CLOSED_PIPE


def _exit_status(exc: BaseException) -> int:
    if isinstance(exc, Failure):
        return exc.code
    if isinstance(exc, StoreMoved):
        return EXIT_STORE_MOVED
    if isinstance(exc, StoreCorrupt):
        return EXIT_STORE_CORRUPT
    if isinstance(exc, StoreUnavailable):
        return UNAVAILABLE
    if isinstance(exc, JobNotFound | JobLocked | InvalidState | InvalidStateChange):
        return PARTLY
    return BAD_INPUT
