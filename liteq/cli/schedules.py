"""`liteq schedules`: the periodic jobs (`@store.periodic`) a queue knows, and their slots."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from liteq import admin
from liteq.cli.common import OK, Commands, add_db, add_json, open_store
from liteq.cli.output import emit_json, table
from liteq.timeformat import ago, iso, when


def add_parser(sub: Commands) -> None:
    """Register schedules."""
    schedules = sub.add_parser(
        "schedules",
        help="the periodic jobs: each schedule's next slot, last slot and its job",
        description="Per schedule (@store.periodic): its spec and time zone, its queue, the "
        "next slot, the last slot enqueued or skipped with its job and that job's status "
        "(gone: completed and deleted), and when a worker last had it in its code (a "
        "schedule removed from the code keeps its row: not seen lately).",
    )
    add_db(schedules)
    add_json(schedules)
    schedules.set_defaults(func=_schedules)


def _at(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _schedules(args: argparse.Namespace) -> int:
    store = open_store(args, readonly=True)
    report = admin.schedules(store)
    if args.json:
        for row in report:
            for key in ("next_slot", "last_slot", "seen_at"):
                row[key] = iso(row[key])
        emit_json({"schedules": report})
        return OK
    if not report:
        print("no schedules (a worker records those of the modules it imports)")
        return OK
    now = time.time()
    table(
        ("name", "spec", "tz", "queue", "next slot", "last slot", "job", "status", "seen"),
        [
            (
                row["name"],
                row["spec"],
                row["tz"],
                row["queue"] + (" (paused)" if row["paused"] else ""),
                when(_at(row["next_slot"])),
                when(_at(row["last_slot"])),
                row["last_job"] or "-",
                row["last_status"] or "-",
                ago(max(0.0, now - row["seen_at"])) + " ago" + (" (stale)" if row["stale"] else ""),
            )
            for row in report
        ],
    )
    return OK
