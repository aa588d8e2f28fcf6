"""`liteq db`: looking after an SQLite queue file (check, vacuum, checkpoint, page-size)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable

from liteq import admin
from liteq.cli.common import (
    OK,
    PARTLY,
    Commands,
    Failure,
    add_db,
    add_json,
    open_existing,
    open_store,
)
from liteq.cli.output import Progress, emit_json
from liteq.errors import StoreCorrupt
from liteq.stores import SQLiteStore
from liteq.stores.base import BaseStore
from liteq.stores.contract import CountDrift


def add_parsers(sub: Commands) -> None:
    """Register `liteq db` and its actions."""
    db = sub.add_parser("db", help="look after an SQLite queue file")
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="check the file for damage, and the kept counts of jobs against a scan",
        description="Check an SQLite queue file with PRAGMA quick_check (--full: "
        "integrity_check, which also compares indexes with their tables), and show the size "
        "of its write-ahead log; then, on SQLite and PostgreSQL, compare the counts of jobs "
        "per queue and status that `liteq status` reads with a scan of the jobs (--repair: "
        "set them from the scan). Exit 0: no damage, counts right (or repaired); 1: damage "
        "or wrong counts found; 2: no queue there.",
    )
    check.add_argument("--full", action="store_true", help="also check indexes (slower)")
    check.add_argument("--repair", action="store_true", help="set wrong counts of jobs from a scan")
    check.set_defaults(func=_check)
    vacuum = actions.add_parser(
        "vacuum",
        help="rewrite the file compactly, giving back the space of deleted jobs",
        description="VACUUM: rewrite the file without the pages deleted jobs left free. It "
        "holds the file's write lock while it runs: refused while workers run (--force).",
    )
    vacuum.add_argument("--force", action="store_true", help="even while workers run")
    vacuum.set_defaults(func=_vacuum)
    checkpoint = actions.add_parser(
        "checkpoint",
        help="copy the write-ahead log into the file and empty it",
        description="wal_checkpoint(TRUNCATE): what SQLite does by itself, at once; it "
        "cannot get past a reader that holds a transaction open (it says so).",
    )
    checkpoint.set_defaults(func=_checkpoint)
    pages = actions.add_parser(
        "page-size",
        help="rewrite the file with another page size (4096 suits states of 10 KB or more)",
        description="Convert the file to pages of SIZE bytes (a power of two from 512 to "
        "65536). It needs the file to itself: refused while any other process has it open.",
    )
    pages.add_argument("size", type=int, help="bytes per page")
    pages.set_defaults(func=_page_size)
    for action in (check, vacuum, checkpoint, pages):
        add_db(action)
        add_json(action)


def _store(args: argparse.Namespace, *, readonly: bool) -> SQLiteStore:
    store = open_store(args, readonly=True) if readonly else open_existing(args)
    if not isinstance(store, SQLiteStore):
        raise Failure("liteq db looks after SQLite queue files; this URL names no file")
    return store


def _check(args: argparse.Namespace) -> int:
    try:
        store = open_existing(args) if args.repair else open_store(args, readonly=True)
        file = store if isinstance(store, SQLiteStore) else None
        problems = [] if file is None else file.integrity(full=args.full)
        # Damage first: counts read from a damaged file say nothing, and a repair would
        # write into it.
        drift = [] if problems else store.check_counts(repair=args.repair)
    except StoreCorrupt as exc:
        raise Failure(str(exc), PARTLY) from None
    name = _name(store)
    wal = None if file is None else file.wal_bytes()
    wrong = bool(drift) and not args.repair
    if args.json:
        found = [dataclasses.asdict(d) for d in drift]
        emit_json(
            {
                "path": name,
                "ok": not problems and not wrong,
                "problems": problems,
                "wal_bytes": wal,
                "counts": found,
                "repaired": args.repair and bool(drift),
            }
        )
        return PARTLY if problems or wrong else OK
    if file is not None and problems:
        _print_damage(file, problems)
        return PARTLY
    print(f"{name}: ok" + ("" if wal is None else f" (write-ahead log {wal:,} bytes)"))
    _print_drift(drift, args.repair)
    return PARTLY if wrong else OK


def _name(store: BaseStore) -> str:
    """What the check speaks of: a file's path, or a PostgreSQL queue's schema."""
    if isinstance(store, SQLiteStore):
        return store.path
    schema = getattr(store, "schema", None)
    return "the queue" if schema is None else f"schema {schema}"


def _print_drift(drift: list[CountDrift], repaired: bool) -> None:
    if not drift:
        print("counts of jobs: ok (as a scan counts them)")
        return
    print("counts of jobs that differ from a scan (kept -> scanned):")
    for d in drift[:20]:
        print(f"  {d.queue} {d.status}: {d.kept:,} -> {d.scanned:,}")
    if len(drift) > 20:
        print(f"  … and {len(drift) - 20} more")
    if repaired:
        print("repaired: every count set from the scan")
    else:
        print("something wrote to the jobs around liteq; `liteq db check --repair`")
        print("sets the counts from a scan (writers wait for it meanwhile)")


def _print_damage(store: SQLiteStore, problems: list[str]) -> None:
    print(f"{store.path} is damaged; SQLite says:")
    for line in problems[:20]:
        print(f"  {line}")
    if len(problems) > 20:
        print(f"  … and {len(problems) - 20} more")
    print(
        "Stop every process that uses it, then restore it from a backup, or save what "
        f"it holds with `sqlite3 {store.path} .recover | sqlite3 recovered.sqlite`."
    )


def _refuse_while_workers_run(store: SQLiteStore, doing: str) -> None:
    running = admin.live_workers(store)
    if running:
        hosts = ", ".join(sorted({f"{w.host} pid {w.pid}" for w in running}))
        raise Failure(f"{len(running)} worker(s) use {store.path} ({hosts}): stop them to {doing}")


def _vacuum(args: argparse.Namespace) -> int:
    store = _store(args, readonly=False)
    if not args.force:
        _refuse_while_workers_run(store, "vacuum it (or pass --force)")
    # In WAL mode VACUUM writes the compact copy into the log, and the file shrinks only
    # when a checkpoint copies it back: so sizes are taken after a checkpoint, and are of
    # the file and its log together, which is what the queue takes on disk.
    store.checkpoint()
    before = _bytes(store)
    store.vacuum(progress=_spinner("vacuuming"))
    through, wal = store.checkpoint()
    after = _bytes(store)
    if args.json:
        emit_json(
            {
                "path": store.path,
                "bytes_before": before,
                "bytes_after": after,
                "wal_bytes": wal,
                "complete": through,
            }
        )
    else:
        print(f"\r{store.path}: {before:,} bytes -> {after:,} bytes")
        if not through:
            print(
                "the write-ahead log still holds part of the rewrite: a reader holds a "
                "transaction open; `liteq db checkpoint` once it is done"
            )
    return OK


def _checkpoint(args: argparse.Namespace) -> int:
    store = _store(args, readonly=False)
    through, wal = store.checkpoint()
    if args.json:
        emit_json({"path": store.path, "complete": through, "wal_bytes": wal})
    elif through:
        print(f"{store.path}: checkpointed; write-ahead log {wal:,} bytes")
    else:
        print(
            f"{store.path}: the checkpoint could not get past a reader that holds a "
            f"transaction open; write-ahead log {wal:,} bytes"
        )
    return OK if through else PARTLY


def _page_size(args: argparse.Namespace) -> int:
    store = _store(args, readonly=False)
    _refuse_while_workers_run(store, "convert it")
    before = store.page_size_now()
    try:
        store.vacuum(page_size=args.size, progress=_spinner("converting"))
    except ValueError as exc:
        raise Failure(str(exc)) from None
    after = store.page_size_now()
    if args.json:
        emit_json({"path": store.path, "page_size_before": before, "page_size": after})
    else:
        print(f"\r{store.path}: {before}-byte pages -> {after}-byte pages")
    return OK


def _bytes(store: SQLiteStore) -> int:
    """The bytes of the file and its write-ahead log."""
    return os.stat(store.path).st_size + store.wal_bytes()


def _spinner(what: str) -> Callable[[], None]:
    progress = Progress(None, what)
    return lambda: progress.update(0)
