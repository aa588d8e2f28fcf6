"""What every command shares: its exit codes, the store it opens, and argument types."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias

from liteq.errors import LiteqError, StoreCorrupt, StoreError, StoreMoved, StoreUnavailable
from liteq.stores import BaseStore, connect

#: What `add_subparsers` gives: commands are added to it (generic to type checkers only).
Commands: TypeAlias = "argparse._SubParsersAction[Any]"

#: Exit codes of every command (docs/cli.md).
OK: Final = 0
#: The command ran, but not all of it could be done (a job not found, damage found).
PARTLY: Final = 1
#: Bad input: an argument, a URL, a file that is no queue, JSON that does not parse.
BAD_INPUT: Final = 2
#: The store's server cannot be reached now (sysexits' EX_UNAVAILABLE).
UNAVAILABLE: Final = 69
#: Interrupted (Ctrl-C).
INTERRUPTED: Final = 130
#: The reader of the output went away (`liteq jobs | head`): what a shell reports of a
#: process that SIGPIPE ended, as `cat` or `grep` would have been.
CLOSED_PIPE: Final = 141

#: How a store says that there is no queue where a URL points (a file, or a schema).
_NO_QUEUE: Final = ("no queue at", "no liteq queue")


class Failure(LiteqError):
    """A command could not be done; its message is the one line the user sees."""

    def __init__(self, message: str, code: int = BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


def add_db(parser: argparse.ArgumentParser) -> None:
    """--db URL, defaulting to $LITEQ_URL."""
    parser.add_argument(
        "--db",
        default=os.environ.get("LITEQ_URL"),
        metavar="URL",
        help="the queue: sqlite:///jobs.sqlite, a path, or postgresql://… (default: $LITEQ_URL)",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    """--json, for scripts."""
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")


def store_url(args: argparse.Namespace) -> str:
    """The URL --db or LITEQ_URL gives; Failure if neither does."""
    url: str | None = args.db
    if not url:
        raise Failure("give --db URL (e.g. --db sqlite:///jobs.sqlite) or set LITEQ_URL")
    return url


#: The stores a command opened, closed when it ends (so that SQLite tidies its files).
OPENED: list[BaseStore] = []


def open_store(args: argparse.Namespace, *, readonly: bool) -> BaseStore:
    """The store --db names. A command that only reads never creates or changes a file."""
    store = connect(store_url(args), readonly=readonly)
    OPENED.append(store)
    return store


def open_existing(args: argparse.Namespace) -> BaseStore:
    """The store --db names, to change it: one that is not there is "no queue at PATH"
    (a mistyped path must not become a new, empty queue that a command then reports as
    paused, retried or vacuumed). A queue of an older liteq is brought up to date."""
    try:
        connect(store_url(args), readonly=True).close()  # creates and changes nothing
    except StoreError as exc:
        if isinstance(exc, StoreCorrupt | StoreMoved | StoreUnavailable):
            raise
        if str(exc).startswith(_NO_QUEUE):
            raise
        # Else a queue of an older liteq (readers refuse it): opening it to write migrates
        # it, and refuses anything that is no liteq queue with its own message.
    return open_store(args, readonly=False)


def importable_here() -> None:
    """Put the working directory on the import path, as `python -m` does: an application's
    own modules import without being installed."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)


def import_modules(modules: Sequence[str], url: str | None = None) -> None:
    """Import each module (from the working directory too, and with LITEQ_URL set to `url`
    for `liteq.connect()` in it, as a worker's would be); Failure naming the one that
    fails, in one line."""
    importable_here()
    if url is not None:
        os.environ["LITEQ_URL"] = url
    for module in modules:
        try:
            importlib.import_module(module)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise Failure(f"cannot import {module}: {type(exc).__name__}: {exc}") from exc


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (and below 2**63, as stores hold)."""
    if not re.fullmatch(r"\s*\d+\s*", text) or not 1 <= int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def up_to(limit: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 to `limit`."""

    def whole_number(text: str) -> int:
        if not re.fullmatch(r"\s*\d+\s*", text) or not 1 <= int(text) <= limit:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from 1 to {limit}, not {text!r}"
            )
        return int(text)

    return whole_number


def job_id(text: str) -> int:
    """An argparse type: a job id (ids start at 1)."""
    if not re.fullmatch(r"\s*\d+\s*", text):
        raise argparse.ArgumentTypeError(
            f"expected a job id (a whole number from 1 up), not {text!r}"
        )
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"no job has id {number}: job ids start at 1")
    if number >= 2**63:
        raise argparse.ArgumentTypeError(f"no job has id {number}: job ids end at {2**63 - 1}")
    return number


def positive_float(text: str) -> float:
    """An argparse type: a number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, not {text!r}")
    return value


_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> float:
    """An argparse type: `90`, `90s`, `15m`, `12h`, `7d`, `2w` -> seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 15m, 12h or 7d, not {text!r}"
        )
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def size(text: str) -> int:
    """An argparse type: `67108864`, `64M`, `1.5G`, `512k` -> bytes."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"expected a size such as 64M or 1G, not {text!r}")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[found.group(2)]
    return int(float(found.group(1)) * factor)
