"""Commands that look at a queue without changing it: status, jobs, show."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from typing import Any

from liteq import admin
from liteq.cli.common import (
    OK,
    PARTLY,
    Commands,
    Failure,
    add_db,
    add_json,
    duration,
    import_modules,
    job_id,
    open_store,
    positive_float,
    positive_int,
    store_url,
)
from liteq.cli.output import emit_json, table, write_all
from liteq.errors import JobNotFound
from liteq.managed import ManagedJob
from liteq.status import Status
from liteq.stores import JobQuery
from liteq.timeformat import ago, iso, when


def add_parsers(sub: Commands) -> None:
    """Register status, jobs and show."""
    status = sub.add_parser(
        "status",
        help="each queue's jobs, throughput and live workers at a glance",
        description="Per queue: jobs by status, how long the oldest due job has waited, jobs "
        "completed and attempts failed in the last 1, 5 and 15 minutes, jobs waiting for a "
        "worker that knows their type, paused or not; then the live workers, and the pools "
        "of liteq work --autoscale/--pool (processes, limits, last decision).",
    )
    add_db(status)
    add_json(status)
    status.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=positive_float,
        metavar="S",
        help="show it again every S seconds (default 2) until Ctrl-C",
    )
    status.set_defaults(func=_status)

    jobs = sub.add_parser("jobs", help="list jobs, newest first, with filters")
    add_db(jobs)
    add_json(jobs)
    jobs.add_argument("--queue", help="only this queue")
    jobs.add_argument("--status", choices=[s.value for s in Status], help="only this status")
    jobs.add_argument("--type", dest="job_type", metavar="TYPE", help="only this job type")
    jobs.add_argument("--error", metavar="TEXT", help="only jobs whose error holds TEXT")
    jobs.add_argument(
        "--failed-since",
        type=duration,
        metavar="AGO",
        help="only jobs that failed in the last AGO (e.g. 1h); implies --status failed",
    )
    jobs.add_argument(
        "--limit", type=positive_int, metavar="N", help="at most N (default: a screenful)"
    )
    jobs.add_argument(
        "--before", type=job_id, metavar="ID", help="the page after this one: ids below ID"
    )
    jobs.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import job classes from MODULE to show their descriptions (repeatable)",
    )
    jobs.set_defaults(func=_jobs)

    show = sub.add_parser(
        "show", help="one job in full: every field, its state, the whole error and traceback"
    )
    add_db(show)
    add_json(show)
    show.add_argument("id", type=job_id, help="the job's id")
    show.set_defaults(func=_show)


# -- status ---------------------------------------------------------------------------------
def _status(args: argparse.Namespace) -> int:
    store = open_store(args, readonly=True)
    if args.watch is None:
        _print_status(store, args.json)
        return OK
    # On a terminal, each view replaces the last; into a file or a pipe go plain snapshots
    # (JSON: one document a line), with no escapes to clear a screen there is none of.
    screen = sys.stdout.isatty()
    while True:  # until Ctrl-C, or the reader goes away
        if screen:
            sys.stdout.write("\033[H\033[2J")
        _print_status(store, args.json, one_line=not screen)
        if screen:
            sys.stdout.write(f"\n(every {args.watch:g}s; Ctrl-C to stop)\n")
        elif not args.json:
            sys.stdout.write("\n")
        sys.stdout.flush()
        time.sleep(args.watch)


def _print_status(store: Any, as_json: bool, *, one_line: bool = False) -> None:
    report = admin.overview(store)
    if as_json:
        for worker in report["workers"]:
            worker["since"], worker["last_beat"] = iso(worker["since"]), iso(worker["last_beat"])
        _pools_as_json(report["pools"])
        if one_line:
            write_all(sys.stdout, json.dumps(report, ensure_ascii=False) + "\n")
        else:
            emit_json(report)
        return
    if one_line:  # a snapshot among others: say when it was taken
        print(f"at {when(datetime.now(UTC))}")
    rows = []
    for q in report["queues"]:
        counts = q["counts"]
        rows.append(
            (
                q["queue"] + (" (paused)" if q["paused"] else ""),
                counts.get("queued", 0),
                q["due"],
                counts.get("running", 0),
                counts.get("wait_async", 0),
                counts.get("failed", 0),
                counts.get("completed", 0),
                ago(q["oldest_wait"]),
                "/".join(str(q["completed"][w]) for w in ("1m", "5m", "15m")),
                q["failed"]["15m"],
                q["unknown_type"] or "",
            )
        )
    if rows:
        head = (
            "queue", "queued", "due", "running", "waiting", "failed", "completed",
            "oldest wait", "done 1/5/15m", "failed 15m", "unknown type",
        )  # fmt: skip
        table(head, rows)
    else:
        print("no jobs")
    workers = report["workers"]
    print(f"\n{len(workers)} live worker{'' if len(workers) == 1 else 's'}")
    if workers:
        now = time.time()
        table(
            ("host", "pid", "since", "jobs done", "in flight", "running job", "memory", "queues"),
            [
                (
                    w["host"],
                    w["pid"],
                    ago(now - w["since"]) + " ago",
                    w["jobs_done"],
                    w["in_flight"],
                    w["current_job"] or "-",
                    "-" if w["rss"] is None else f"{w['rss'] / (1 << 20):.0f} MiB",
                    ",".join(w["queues"]) if w["queues"] else "all",
                )
                for w in workers
            ],
        )
    _print_pools(report["pools"])
    if "file" in report:
        print(f"\n{report['file']['path']}: write-ahead log {report['file']['wal_bytes']:,} bytes")


def _pools_as_json(pools: list[dict[str, Any]]) -> None:
    for p in pools:
        p["reported_at"], p["decided_at"] = iso(p["reported_at"]), iso(p["decided_at"])


def _print_pools(pools: list[dict[str, Any]]) -> None:
    """The autoscaled pools of running `liteq work` supervisors, if any."""
    if not pools:
        return
    print(f"\n{len(pools)} autoscaled pool{'' if len(pools) == 1 else 's'}")
    now = time.time()
    table(
        ("host", "supervisor", "pool", "processes", "min:max", "target wait", "last decision"),
        [
            (
                p["host"],
                p["pid"],
                p["pool"],
                p["processes"],
                f"{p['min']}:{p['max']}",
                f"{p['target_wait']:g} s",
                "-"
                if p["last_decision"] is None
                else f"{ago(now - p['decided_at'])} ago: {p['last_decision']}",
            )
            for p in pools
        ],
    )


# -- jobs -----------------------------------------------------------------------------------
def _jobs(args: argparse.Namespace) -> int:
    if args.imports:
        import_modules(args.imports, store_url(args))
    store = open_store(args, readonly=True)
    status = Status(args.status) if args.status else None
    since = None
    if args.failed_since is not None:
        status, since = Status.FAILED, store.clock() - args.failed_since
    limit = args.limit or max(10, shutil.get_terminal_size((80, 24)).lines - 6)
    query = JobQuery(
        queue=args.queue,
        status=status,
        job_type=args.job_type,
        error_contains=args.error,
        finished_since=since,
        before=args.before or 2**63 - 1,
        limit=limit + 1,  # one more, to know whether there is a next page
    )
    found = store.search(query)
    page, more = found[:limit], len(found) > limit
    if args.json:
        emit_json({"jobs": [_json_fields(m) for m in page], "more": more})
        return OK
    if not page:
        print("no jobs")
        return OK
    table(
        ("id", "job", "queue", "pri", "status", "tries", "created", "finished", "error"),
        [
            (
                m.id,
                admin.describe(m),
                m.queue,
                m.priority,
                m.status.value,
                f"{m.attempts}/{m.max_attempts}",
                when(m.created_at),
                when(m.finished_at),
                admin.problem(m),
            )
            for m in page
        ],
    )
    if more:
        print(f"(more: liteq jobs ... --before {page[-1].id}; `liteq show ID` for one job)")
    return OK


# -- show -----------------------------------------------------------------------------------
def _show(args: argparse.Namespace) -> int:
    store = open_store(args, readonly=True)
    try:
        mjob = store.get(args.id)
    except JobNotFound as exc:
        raise Failure(str(exc), PARTLY) from None
    after = admin.runs_after(store, mjob) or None
    result = admin.result_of(mjob, store.clock())
    if args.json:
        fields = _json_fields(mjob)
        fields["after"] = [{"id": a, "done": done} for a, done in store.dependencies(mjob.id)]
        fields["result"] = result
        fields["state"] = admin.state_of(mjob)
        fields["traceback"] = mjob.traceback
        emit_json(fields)
        return OK
    fields = _fields(mjob)
    if after:
        fields["after"] = after
    if mjob.keep_result is not None:
        fields["keeps_result"] = f"{mjob.keep_result:g} s"
        fields["result_expires"] = when(mjob.expires_at)
        fields["result"] = json.dumps(result, ensure_ascii=False)
    fields["state"] = admin.state_of(mjob)
    fields["traceback"] = mjob.traceback
    shown = {k: v for k, v in fields.items() if k not in ("state", "traceback", "error")}
    width = max(map(len, shown)) + 2  # the longest name, its colon and a space
    for name, value in shown.items():
        print(f"{name + ':':<{width}}{_plain(value)}")
    print("state:")
    write_all(sys.stdout, _indent(json.dumps(fields["state"], indent=2, ensure_ascii=False)) + "\n")
    for name in ("error", "traceback"):
        if fields[name]:
            print(f"{name}:")
            write_all(sys.stdout, _indent(str(fields[name]).rstrip()) + "\n")
    return OK


def _plain(value: object) -> str:
    """A field's value as `liteq show` prints it: yes/no, not Python's True/False."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _json_fields(mjob: ManagedJob) -> dict[str, Any]:
    """_fields() for JSON: times ISO 8601 in UTC, with their offset; unset ones null."""
    fields = _fields(mjob)
    for name, value in (
        ("created", mjob.created_at),
        ("run_at", mjob.run_at),
        ("started", mjob.started_at),
        ("finished", mjob.finished_at),
    ):
        fields[name] = iso(value)
    return fields


def _fields(mjob: ManagedJob) -> dict[str, Any]:
    rec = mjob.record
    return {
        "id": mjob.id,
        "type": mjob.job_type,
        "queue": mjob.queue,
        "priority": mjob.priority,
        "status": mjob.status.value,
        "attempts": mjob.attempts,
        "max_attempts": mjob.max_attempts,
        "created": when(mjob.created_at),
        "run_at": when(mjob.run_at),
        "started": when(mjob.started_at),
        "finished": when(mjob.finished_at),
        "coalesce_id": mjob.coalesce_id,
        "max_runtime": mjob.max_runtime,
        "delete_on_complete": mjob.delete_on_complete,
        "owner": mjob.owner,
        "locked": rec.lock_token is not None,
        "error": rec.error,
    }


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
