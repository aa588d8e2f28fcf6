"""Commands that change a queue: retry, restart, delete, purge, enqueue, resolve,
detect-hung, pause, resume."""

from __future__ import annotations

import argparse
import json
import re
import sys
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
    open_existing,
    open_store,
    store_url,
)
from liteq.cli.output import Progress, confirm, emit_json, error_line
from liteq.cli.payload import build
from liteq.errors import InvalidState, JobLocked, JobNotFound, UnknownJobType
from liteq.job import Job, registered_type
from liteq.status import Status
from liteq.task import TaskJob
from liteq.timeformat import ago
from liteq.waitasync import resolve_wait_async


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

    pause = sub.add_parser(
        "pause",
        help="pause a queue: workers take no job from it",
        description="Pause QUEUE: it still accepts jobs, and workers claim none from it until "
        "`liteq resume`. A name the queue has never had (a typo?) is refused unless --create.",
    )
    pause.add_argument(
        "--create", action="store_true", help="pause it even though it has never had a job"
    )
    resume = sub.add_parser("resume", help="resume a paused queue: workers take its jobs again")
    for command, func in ((pause, _pause), (resume, _resume)):
        add_db(command)
        add_json(command)
        command.add_argument("queue")
        command.set_defaults(func=func)


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
            # Most refusals name their job already ("no job with id 7", "job 7 is …").
            named = re.search(rf"\b(job|id) {job}\b", why)
            error_line(why if named else f"job {job}: {why}")
    return PARTLY if outcome.refused else OK


def _retry(args: argparse.Namespace) -> int:
    if args.all_failed and args.ids:
        raise Failure("give job ids or --all-failed, not both")
    if not args.all_failed and not args.ids:
        raise Failure("give job ids, or --all-failed")
    store = open_existing(args)
    if not args.all_failed:
        return _report(admin.retry(store, args.ids), "re-queued", args.json)
    outcome = admin.retry_failed(store, args.queue)
    if not outcome.done and not outcome.refused and not args.json:
        print("no failed jobs to retry" + (f" in queue {args.queue}" if args.queue else ""))
    return _report(outcome, "re-queued", args.json)


def _restart(args: argparse.Namespace) -> int:
    if not args.ids:
        raise Failure("give job ids")
    return _report(admin.restart(open_existing(args), args.ids), "restarted", args.json)


def _delete(args: argparse.Namespace) -> int:
    if not args.ids:
        raise Failure("give job ids")
    return _report(admin.delete(open_existing(args), args.ids), "deleted", args.json)


def _purge(args: argparse.Namespace) -> int:
    store = open_store(args, readonly=True) if args.dry_run else open_existing(args)
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
    if issubclass(cls, TaskJob):
        if args.state is not None:
            raise Failure(f"{args.type} is a task: give its arguments with --args/--kwargs")
        state = {"args": args.args or [], "kwargs": args.kwargs or {}}
    else:
        if args.args is not None or args.kwargs is not None:
            raise Failure(
                f"{args.type} is a Job class: --args/--kwargs are a task's; give its state "
                "with --state JSON"
            )
        state = args.state or {}
    job = build(cls, args.type, state)
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
    store = open_store(args, readonly=False)
    coalesce_id = args.coalesce_id or job.coalesce_id()
    holder = None if coalesce_id is None else store.get_by_coalesce_id(coalesce_id)
    mjob = store.enqueue(job, **options)
    coalesced = holder is not None and holder.id == mjob.id
    if args.json:
        emit_json(
            {
                "id": mjob.id,
                "status": mjob.status.value,
                "queue": mjob.queue,
                "coalesced": coalesced,
            }
        )
    elif coalesced:
        print(
            f"job {mjob.id} ({mjob.status.value}, queue {mjob.queue}) already holds coalesce "
            f"id {coalesce_id}: nothing new was enqueued"
        )
    else:
        print(f"job {mjob.id} ({mjob.status.value}, queue {mjob.queue})")
    return OK


def _resolve(args: argparse.Namespace) -> int:
    store = open_existing(args)
    try:
        mjob = store.get(args.id)
        if mjob.job is None and mjob.unknown_type:
            _job_class(mjob.job_type, store_url(args))  # so that its class can resolve it
        status = resolve_wait_async(store, args.id, args.data)
    except (JobNotFound, JobLocked, InvalidState) as exc:
        raise Failure(str(exc), PARTLY) from None
    except Exception as exc:  # the job's own code refused the data: the job keeps waiting
        if args.verbose:
            raise
        raise Failure(
            f"job {args.id}: its resolve_wait_async raised {type(exc).__name__}: {exc}; "
            "it is still waiting (-v shows the traceback)",
            PARTLY,
        ) from None
    if args.json:
        emit_json({"id": args.id, "status": status.value})
    else:
        print(f"job {args.id} is now {status.value}")
    return OK


def _detect_hung(args: argparse.Namespace) -> int:
    rescued = open_existing(args).detect_hung_jobs()
    if args.json:
        emit_json([{"id": m.id, "status": m.status.value, "why": m.error} for m in rescued])
    elif rescued:
        for mjob in rescued:
            print(f"job {mjob.id}: {mjob.error} -> {mjob.status.value}")
    else:
        print("no hung jobs")
    return OK


def _pause(args: argparse.Namespace) -> int:
    store = open_existing(args)
    if not args.create:
        known = admin.queue_names(store)
        if args.queue not in known:
            raise Failure(
                f"no queue named {args.queue} has ever had a job here{_among(known)}: "
                "pass --create to pause it before its first job"
            )
    store.pause(args.queue)
    if args.json:
        emit_json({"queue": args.queue, "paused": True})
    else:
        print(f"queue {args.queue} is paused: workers take no job from it (liteq resume to undo)")
    return OK


def _resume(args: argparse.Namespace) -> int:
    store = open_existing(args)
    paused = store.paused()
    if args.queue not in paused:
        # A mistyped name would leave the queue meant paused while saying it runs.
        if args.queue not in admin.queue_names(store):
            raise Failure(f"no queue named {args.queue} here{_among(paused, 'paused')}")
        was = " (it was not paused)"
    else:
        store.resume(args.queue)
        was = ""
    if args.json:
        emit_json({"queue": args.queue, "paused": False})
    else:
        print(f"queue {args.queue} is running{was}")
    return OK


def _among(names: set[str], which: str = "known") -> str:
    """`names`, shortly, for a message about a name that is not among them."""
    if not names:
        return f" (none is {which})" if which != "known" else ""
    shown = sorted(names)[:8]
    more = ", …" if len(names) > len(shown) else ""
    return f" ({which}: {', '.join(shown)}{more})"
