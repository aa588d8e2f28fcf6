"""Operations an operator runs on a queue, over any store: what the command line and the
dashboard both call. Each works through the public Store contract only."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any, Final

from liteq.errors import InvalidState, InvalidStateChange, JobLocked, JobNotFound
from liteq.managed import ManagedJob
from liteq.managed import describe as describe  # for the command line and dashboard
from liteq.periodic import schedule_of
from liteq.status import Status
from liteq.stores.contract import JobQuery, Store, WorkerInfo, finished_of
from liteq.worker.identity import owner_state


@dataclasses.dataclass(frozen=True)
class QueueState:
    """One queue at a glance: jobs by status, and how long its oldest due job has waited."""

    queue: str
    counts: dict[Status, int]
    oldest_wait: float | None  # seconds, or None when no job is due
    due: int = 0  # queued jobs due now
    unknown_type: int = 0  # queued jobs waiting for a worker that knows their type

    @property
    def total(self) -> int:
        """Every job of the queue, whatever its status."""
        return sum(self.counts.values())


def queues(store: Store) -> list[QueueState]:
    """Every queue that holds jobs, by name, from one read of the store."""
    now = store.clock()
    found: dict[str, QueueState] = {}
    for row in store.summary():
        state = found.setdefault(row.queue, QueueState(row.queue, {}, None))
        state.counts[row.status] = row.count
        if row.status is Status.QUEUED:
            wait = None if row.oldest_due is None else now - row.oldest_due
            found[row.queue] = dataclasses.replace(
                state, oldest_wait=wait, due=row.due, unknown_type=row.unknown_type
            )
    return [found[name] for name in sorted(found)]


def overview(store: Store) -> dict[str, Any]:
    """What `liteq status` and the dashboard show, as data: per queue, jobs by status, the
    oldest due job's wait, what finished in the last 1, 5 and 15 minutes, paused or not;
    then the live workers (and, for a file, the size of its write-ahead log)."""
    now = store.clock()
    paused = store.paused()
    rows = store.throughput(since=now - 60 * 15)  # one read for the three windows
    windows = {minutes: finished_of(rows, now - 60 * minutes) for minutes in (1, 5, 15)}
    # A queue shows while it holds jobs, is paused, or finished jobs in the last 15 minutes.
    names = {name: QueueState(name, {}, None) for name in paused | set(windows[15])}
    names |= {q.queue: q for q in queues(store)}
    report: dict[str, Any] = {
        "queues": [
            {
                "queue": name,
                "paused": name in paused,
                "counts": {s.value: n for s, n in names[name].counts.items()},
                "due": names[name].due,
                "oldest_wait": names[name].oldest_wait,
                "unknown_type": names[name].unknown_type,
                "completed": {f"{m}m": windows[m].get(name, (0, 0))[0] for m in windows},
                "failed": {f"{m}m": windows[m].get(name, (0, 0))[1] for m in windows},
            }
            for name in sorted(names)
        ],
        "workers": [
            {
                "host": w.host,
                "pid": w.pid,
                "since": w.started_at,
                "jobs_done": w.jobs_done,
                "current_job": w.current_job,
                "queues": w.queues,
                "last_beat": w.beat_at,
                "rss": w.rss,
                "in_flight": w.in_flight,
            }
            for w in live_workers(store)
        ],
    }
    report["pools"] = autoscaled_pools(store)
    file = store.file_info()
    if file is not None:
        report["file"] = {"path": file.path, "wal_bytes": file.wal_bytes}
    return report


def autoscaled_pools(store: Store) -> list[dict[str, Any]]:
    """The pools of `liteq work --autoscale/--pool` supervisors that run (as they reported
    at their last decision or within seconds): per pool its worker processes now, its
    limits and target wait, and its last decision (its log line, and when: the store's
    epoch seconds; None before its first)."""
    return [
        {
            "pool": p.name,
            "host": p.host,
            "pid": p.pid,  # the supervisor's
            "processes": p.processes,
            "min": p.minimum,
            "max": p.maximum,
            "target_wait": p.target_wait,
            "last_decision": p.decision or None,
            "decided_at": p.decided_at,
            "reported_at": p.beat_at,
        }
        for p in store.pools()
        if owner_state(p.supervisor) != "dead"
    ]


def queue_names(store: Store) -> set[str]:
    """Every queue name the store has had: of jobs it holds, of jobs workers finished
    since it was made, paused, or served by a live worker (so that a name it has never
    had, a typo, say, can be told apart)."""
    names = {row.queue for row in store.summary()} | store.paused() | set(store.totals())
    for worker in live_workers(store):
        names.update(worker.queues or ())
    return names


def problem(mjob: ManagedJob) -> str:
    """Its last error; or, if its payload cannot be read at all, why (a type not imported
    here is no problem of the job's)."""
    if mjob.record.error:
        return mjob.record.error
    return "" if mjob.unknown_type else mjob.decode_error or ""


def runs_after(store: Store, mjob: ManagedJob) -> str:
    """What the job runs after (`after=`), as `liteq show` and the dashboard say it:
    "waiting for 2 jobs: 4, 7 (done: 3)", "after 3, 4 (done)", or "" for none."""
    dependencies = store.dependencies(mjob.id)
    if not dependencies:
        return ""
    pending = [str(a) for a, done in dependencies if not done]
    done = [str(a) for a, finished in dependencies if finished]
    if mjob.waiting and pending:
        more = f" (done: {', '.join(done)})" if done else ""
        s = "" if len(pending) == 1 else "s"
        return f"waiting for {len(pending)} job{s}: {', '.join(pending)}{more}"
    if not pending:
        return f"after {', '.join(done)} (done)"
    return f"after {', '.join(str(a) for a, _ in dependencies)} (not done: {', '.join(pending)})"


def result_of(mjob: ManagedJob, now: float) -> Any:
    """The job's kept result, read as JSON; None if it keeps none (or it expired)."""
    record = mjob.record
    if record.result is None or record.expires_at is None or record.expires_at <= now:
        return None
    try:
        return json.loads(record.result)
    except ValueError:
        return None


def state_of(mjob: ManagedJob) -> Any:
    """The job's stored state, read as JSON: no class of it need be imported."""
    try:
        doc = json.loads(mjob.record.payload)
    except (ValueError, RecursionError) as exc:
        return f"(the payload is not JSON: {exc})"
    if isinstance(doc, dict) and "pickle" in doc:
        return f"(pickled state, {len(str(doc['pickle']))} characters of base64)"
    return doc.get("state") if isinstance(doc, dict) else doc


def live_workers(store: Store) -> list[WorkerInfo]:
    """The workers that beat within their lease, less those of this host whose process is
    gone (a worker killed outright leaves its row behind until its lease runs out)."""
    return [w for w in store.workers() if owner_state(w.owner) != "dead"]


def each(store: Store, query: JobQuery) -> Iterator[ManagedJob]:
    """Every job matching `query` from its `after` on, page by page (the whole of a large
    queue is never in memory)."""
    while True:
        page = store.search(query)
        yield from page
        if len(page) < query.limit:
            return
        query = dataclasses.replace(query, after=page[-1].id, before=None)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a bulk operation did: the jobs it changed, and why it left others alone."""

    done: list[int] = dataclasses.field(default_factory=list)
    refused: dict[int, str] = dataclasses.field(default_factory=dict)


def retry(store: Store, ids: list[int]) -> Outcome:
    """Give each job (FAILED, or WAIT_ASYNC) another attempt now, as a mulligan: its
    max_attempts rises by one, up to 20 (past that, restart it)."""
    outcome = Outcome()
    for job_id in ids:
        try:
            mjob = store.get(job_id)
            if mjob.status in (Status.QUEUED, Status.RUNNING):
                outcome.refused[job_id] = f"it is {mjob.status.value}: nothing to retry"
                continue
            if mjob.retry(mulligan=True):
                outcome.done.append(job_id)
            else:
                outcome.refused[job_id] = "it has used its 20 attempts: restart it instead"
        except (JobNotFound, JobLocked, InvalidState, InvalidStateChange) as exc:
            outcome.refused[job_id] = str(exc)
    return outcome


def retry_failed(store: Store, queue: str | None = None) -> Outcome:
    """retry() every FAILED job (of one queue)."""
    failed = [m.id for m in each(store, JobQuery(queue=queue, status=Status.FAILED, limit=500))]
    return retry(store, failed)


def restart(store: Store, ids: list[int]) -> Outcome:
    """Re-queue each job as new (attempts 0, due now); a RUNNING one is refused."""
    outcome = Outcome()
    for job_id in ids:
        try:
            store.get(job_id).restart()
            outcome.done.append(job_id)
        except (JobNotFound, JobLocked, InvalidState) as exc:
            outcome.refused[job_id] = str(exc)
    return outcome


def delete(store: Store, ids: list[int]) -> Outcome:
    """Delete each job (a worker still running one finds it gone and logs that)."""
    outcome = Outcome()
    for job_id in ids:
        try:
            store.delete(job_id)
            outcome.done.append(job_id)
        except (JobNotFound, JobLocked) as exc:
            outcome.refused[job_id] = str(exc)
    return outcome


def purge(
    store: Store,
    status: Status,
    *,
    queue: str | None = None,
    older_than: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the COMPLETED or FAILED jobs (of one queue) that finished more than
    `older_than` seconds ago (None: all of them); return how many (`progress` is told the
    count so far after each batch)."""
    before = None if older_than is None else store.clock() - older_than
    return store.purge(status, queue=queue, before=before, progress=progress)


def purgeable(
    store: Store, status: Status, *, queue: str | None = None, older_than: float | None = None
) -> int:
    """How many jobs purge() would delete now (for a dry run, or a confirmation): all of a
    status from the kept counts; those finished before a time by a listing."""
    if older_than is None:
        return store.count(queue=queue, status=Status(status))
    before = store.clock() - older_than
    return sum(
        1
        for mjob in each(store, JobQuery(queue=queue, status=Status(status), limit=500))
        if mjob.finished_at is not None and mjob.finished_at.timestamp() < before
    )


#: A schedule no worker has declared for this long is shown as not seen lately: removed
#: from the code, or its workers are stopped (workers declare theirs every hour).
STALE_SCHEDULE: Final = 86400.0


def schedules(store: Store) -> list[dict[str, Any]]:
    """What `liteq schedules` and the dashboard show of the periodic jobs, as data: each
    schedule's name, spec, zone, queue, next slot (computed from its spec and zone; None
    for a cron string without cronsim installed, or one that never matches), its last
    slot, that slot's job and the job's status ("gone": completed and deleted, or deleted;
    None: the slot was skipped, or is the schedule's start), and when a worker last had it
    (`stale`: not for a day). Times are epoch seconds."""
    now = store.clock()
    paused = store.paused()
    report = []
    for row in store.schedules():
        try:
            next_slot: int | None = schedule_of(row.spec, row.tz).after(now)
        except (ImportError, ValueError):
            next_slot = None
        status = None
        if row.last_job is not None:
            try:
                status = store.get(row.last_job).status.value
            except JobNotFound:
                status = "gone"
        report.append(
            {
                "name": row.name,
                "spec": row.spec,
                "tz": row.tz,
                "queue": row.queue,
                "paused": row.queue in paused,
                "next_slot": next_slot,
                "last_slot": row.last_slot,
                "last_job": row.last_job,
                "last_status": status,
                "seen_at": row.seen_at,
                "stale": now - row.seen_at > STALE_SCHEDULE,
            }
        )
    return report
