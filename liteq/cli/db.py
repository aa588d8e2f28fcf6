"""`liteq db`: looking after an SQLite queue file (check, vacuum, checkpoint, page-size)."""

from __future__ import annotations

import argparse
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


def add_parsers(sub: Commands) -> None:
    """Register `liteq db` and its actions."""
    db = sub.add_parser("db", help="look after an SQLite queue file")
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="check the file for damage",
        description="Check an SQLite queue file with PRAGMA quick_check (--full: "
        "integrity_check, which also compares indexes with their tables), and show the size "
        "of its write-ahead log. Exit 0: no damage; 1: damage found; 2: no queue there.",
    )
    check.add_argument("--full", action="store_true", help="also check indexes (slower)")
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
        store = _store(args, readonly=True)
        problems = store.integrity(full=args.full)
    except StoreCorrupt as exc:
        raise Failure(str(exc), PARTLY) from None
    wal = store.wal_bytes()
    if args.json:
        emit_json({"path": store.path, "ok": not problems, "problems": problems, "wal_bytes": wal})
        return PARTLY if problems else OK
    if not problems:
        print(f"{store.path}: ok (write-ahead log {wal:,} bytes)")
        return OK
    print(f"{store.path} is damaged; SQLite says:")
    for line in problems[:20]:
        print(f"  {line}")
    if len(problems) > 20:
        print(f"  … and {len(problems) - 20} more")
    print(
        "Stop every process that uses it, then restore it from a backup, or save what "
        f"it holds with `sqlite3 {store.path} .recover | sqlite3 recovered.sqlite`."
    )
    return PARTLY


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
