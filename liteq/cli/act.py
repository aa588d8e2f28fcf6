"""Commands that change a queue: retry, restart, delete, purge, enqueue, resolve,
detect-hung, pause, resume."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from liteq import admin
from liteq.asyncjob import resolve_wait_async
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
    store_url,
)
from liteq.cli.output import Progress, ago, confirm, emit_json
from liteq.errors import InvalidState, JobLocked, JobNotFound, UnknownJobType
from liteq.job import Job, registered_type
from liteq.status import Status


def add_parsers(sub: Commands) -> None:
    """Register the commands that change a queue."""
    _ids_command(sub, "retry", "give failed jobs another attempt now", _retry)
    _ids_command(sub, "restart", "run jobs again as new (attempts 0)", _restart)
    _ids_command(sub, "delete", "delete jobs", _delete)

    purge = sub.add_parser(
        "purge",
        help="delete completed or failed jobs, by queue and age",
        description="Delete completed or failed jobs (of one queue, finished before a given "
        "age). It says how many first and asks, unless --yes.",
    )
    add_db(purge)
    add_json(purge)
    purge.add_argument("--status", required=True, choices=["completed", "failed"])
    purge.add_argument("--queue", help="only this queue")
    purge.add_argument(
        "--older-than", type=duration, metavar="AGE", help="finished more than AGE ago (7d)"
    )
    purge.add_argument("--dry-run", action="store_true", help="only say how many")
    purge.add_argument("--yes", action="store_true", help="delete without asking")
    purge.set_defaults(func=_purge)

    enqueue = sub.add_parser(
        "enqueue",
        help="enqueue a job of a class, or a call of a task",
        description="Enqueue a job of TYPE (module.Class, or module.function for a task), "
        "its module imported from the working directory. --state gives a class's state; "
        "--args/--kwargs a task's arguments.",
    )
    add_db(enqueue)
    add_json(enqueue)
    enqueue.add_argument("type", metavar="TYPE", help="module.Class or module.task_function")
    enqueue.add_argument("--state", type=_json_object, default=None, metavar="JSON")
    enqueue.add_argument("--args", type=_json_list, default=None, metavar="JSON")
    enqueue.add_argument("--kwargs", type=_json_object, default=None, metavar="JSON")
    enqueue.add_argument("--queue")
    enqueue.add_argument("--priority", type=int)
    enqueue.add_argument("--delay", type=duration, metavar="AFTER")
    enqueue.add_argument("--max-attempts", type=int, metavar="N")
    enqueue.add_argument("--coalesce-id", metavar="KEY")
    enqueue.set_defaults(func=_enqueue)

    resolve = sub.add_parser(
        "resolve",
        help="finish an async job with data, as its callback would",
        description="Call the WAIT_ASYNC job's resolve_wait_async(DATA) and apply the status "
        "it returns (its class's module is imported from the working directory).",
    )
    add_db(resolve)
    add_json(resolve)
    resolve.add_argument("id", type=job_id)
    resolve.add_argument("--data", type=_json_value, required=True, metavar="JSON")
    resolve.set_defaults(func=_resolve)

    hung = sub.add_parser(
        "detect-hung",
        help="re-queue jobs whose worker is gone, stuck or over time",
        description="What the supervisor of liteq work does every 5 s: re-queue with a "
        "mulligan each hung job; a stuck worker on this host is killed first.",
    )
    add_db(hung)
    add_json(hung)
    hung.set_defaults(func=_detect_hung)

    for name, doing in (("pause", "workers take no job from it"), ("resume", "workers go on")):
        queue_command = sub.add_parser(name, help=f"{name} a queue: {doing}")
        add_db(queue_command)
        add_json(queue_command)
        queue_command.add_argument("queue")
        queue_command.set_defaults(func=_pause if name == "pause" else _resume)


def _ids_command(sub: Commands, name: str, doing: str, func: Any) -> None:
    command = sub.add_parser(name, help=doing)
    add_db(command)
    add_json(command)
    command.add_argument("ids", nargs="*", type=job_id, metavar="ID")
    if name == "retry":
        command.add_argument("--all-failed", action="store_true", help="every failed job")
        command.add_argument("--queue", help="with --all-failed: only this queue")
    command.set_defaults(func=func)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None


def _json_object(text: str) -> dict[str, Any]:
    value = _json_value(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, not {text!r}")
    return value


def _json_list(text: str) -> list[Any]:
    value = _json_value(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a JSON list, not {text!r}")
    return value


def _report(outcome: admin.Outcome, doing: str, as_json: bool) -> int:
    if as_json:
        emit_json({"done": outcome.done, "refused": outcome.refused})
    else:
        if outcome.done:
            print(f"{doing}: {', '.join(map(str, outcome.done))}")
        for job, why in outcome.refused.items():
            print(f"job {job}: {why}", file=sys.stderr)
    return PARTLY if outcome.refused else OK


def _retry(args: argparse.Namespace) -> int:
    store = open_store(args, readonly=False)
    if args.all_failed:
        if args.ids:
            raise Failure("give job ids or --all-failed, not both")
        return _report(admin.retry_failed(store, args.queue), "re-queued", args.json)
    if not args.ids:
        raise Failure("give job ids, or --all-failed")
    return _report(admin.retry(store, args.ids), "re-queued", args.json)


def _restart(args: argparse.Namespace) -> int:
    if not args.ids:
        raise Failure("give job ids")
    return _report(
        admin.restart(open_store(args, readonly=False), args.ids), "restarted", args.json
    )


def _delete(args: argparse.Namespace) -> int:
    if not args.ids:
        raise Failure("give job ids")
    return _report(admin.delete(open_store(args, readonly=False), args.ids), "deleted", args.json)


def _purge(args: argparse.Namespace) -> int:
    store = open_store(args, readonly=args.dry_run)
    status = Status(args.status)
    count = admin.purgeable(store, status, queue=args.queue, older_than=args.older_than)
    what = f"{count:,} {status.value} job{'' if count == 1 else 's'}"
    if args.queue:
        what += f" of queue {args.queue}"
    if args.older_than is not None:
        what += f" finished more than {ago(args.older_than)} ago"
    if args.dry_run or count == 0:
        if args.json:
            emit_json({"would_delete": count})
        else:
            print(f"would delete {what}" if count else f"nothing to delete ({what})")
        return OK
    if not args.yes:
        if not sys.stdin.isatty():
            raise Failure(f"purge would delete {what}: pass --yes to delete them without asking")
        if not confirm(f"Delete {what}?"):
            print("nothing deleted")
            return OK
    progress = Progress(count, "deleting")
    deleted = admin.purge(
        store, status, queue=args.queue, older_than=args.older_than, progress=progress.update
    )
    progress.done()
    if args.json:
        emit_json({"deleted": deleted})
    else:
        print(f"deleted {deleted:,} job{'' if deleted == 1 else 's'}")
    return OK


def _job_class(name: str, url: str) -> type[Job]:
    """The Job class (or a task's) stored as `name`, importing its module."""
    module = name.rpartition(".")[0]
    if not module:
        raise Failure(f"{name!r} is not a job type: give module.Class or module.function")
    import_modules([module], url)
    try:
        return registered_type(name)
    except UnknownJobType:
        raise Failure(
            f"{module} defines no Job class or @task function named {name.rpartition('.')[2]}"
        ) from None


def _enqueue(args: argparse.Namespace) -> int:
    cls = _job_class(args.type, store_url(args))
    if args.state is not None and (args.args is not None or args.kwargs is not None):
        raise Failure("give --state (a class's), or --args/--kwargs (a task's), not both")
    state = args.state
    if state is None:
        state = {"args": args.args or [], "kwargs": args.kwargs or {}}
    try:
        job = cls.from_state(state)
    except Exception as exc:
        raise Failure(f"that state does not fit {args.type}: {type(exc).__name__}: {exc}") from exc
    options: dict[str, Any] = {
        name: value
        for name, value in (
            ("queue", args.queue),
            ("priority", args.priority),
            ("delay", args.delay),
            ("max_attempts", args.max_attempts),
            ("coalesce_id", args.coalesce_id),
        )
        if value is not None
    }
    mjob = open_store(args, readonly=False).enqueue(job, **options)
    if args.json:
        emit_json({"id": mjob.id, "status": mjob.status.value, "queue": mjob.queue})
    else:
        print(f"job {mjob.id} ({mjob.status.value}, queue {mjob.queue})")
    return OK


def _resolve(args: argparse.Namespace) -> int:
    store = open_store(args, readonly=False)
    try:
        mjob = store.get(args.id)
        if mjob.job is None and mjob.unknown_type:
            _job_class(mjob.job_type, store_url(args))  # so that its class can resolve it
        status = resolve_wait_async(store, args.id, args.data)
    except (JobNotFound, JobLocked, InvalidState) as exc:
        raise Failure(str(exc), PARTLY) from None
    if args.json:
        emit_json({"id": args.id, "status": status.value})
    else:
        print(f"job {args.id} is now {status.value}")
    return OK


def _detect_hung(args: argparse.Namespace) -> int:
    rescued = open_store(args, readonly=False).detect_hung_jobs()
    if args.json:
        emit_json([{"id": m.id, "status": m.status.value, "why": m.error} for m in rescued])
    elif rescued:
        for mjob in rescued:
            print(f"job {mjob.id}: {mjob.error} -> {mjob.status.value}")
    else:
        print("no hung jobs")
    return OK


def _pause(args: argparse.Namespace) -> int:
    open_store(args, readonly=False).pause(args.queue)
    if args.json:
        emit_json({"queue": args.queue, "paused": True})
    else:
        print(f"queue {args.queue} is paused: workers take no job from it (liteq resume to undo)")
    return OK


def _resume(args: argparse.Namespace) -> int:
    open_store(args, readonly=False).resume(args.queue)
    if args.json:
        emit_json({"queue": args.queue, "paused": False})
    else:
        print(f"queue {args.queue} is running")
    return OK
