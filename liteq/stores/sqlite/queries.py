"""SQLiteStore's statements, read from queries.sql by name and completed once."""

from __future__ import annotations

import functools
from typing import Any, Final

from liteq.record import COLUMNS, COLUMNS_BUT_ID
from liteq.stores.contract import JobQuery
from liteq.stores.registry import POOL_COLUMNS
from liteq.stores.sqlshared import WORKER_COLUMNS, filters, read_blocks, search_filters

#: What jobs that insert_alike inserts with one statement share: every column but these.
ALIKE: Final = tuple(c for c in COLUMNS_BUT_ID if c not in ("job_type", "payload"))

_SQL: Final = read_blocks(__package__, "queries.sql")
_FIXED: Final = {
    "columns": ", ".join(COLUMNS),
    "c_columns": ", ".join(f"c.{c}" for c in COLUMNS),
    "new_columns": ", ".join(COLUMNS_BUT_ID),
    "values": ", ".join("?" * len(COLUMNS_BUT_ID)),
    "assignments": ", ".join(f"{c} = ?" for c in COLUMNS_BUT_ID),
    "alike_columns": ", ".join(ALIKE),
    "alike_values": ", ".join(f"?{i}" for i in range(1, len(ALIKE) + 1)),
    "alike_id": f"?{len(ALIKE) + 1}",
    "alike_rows": f"?{len(ALIKE) + 2}",
    "alike_type": f"?{len(ALIKE) + 3}",
    "claim_order": _SQL["claim_order"],
    "counted_status": _SQL["counted_status"],
    "worker_columns": ", ".join(WORKER_COLUMNS),
    "worker_values": ", ".join(f":{c}" for c in WORKER_COLUMNS),
}


def _sql(name: str, **parts: object) -> str:
    return _SQL[name].format(**_FIXED, **parts)


GET: Final = _sql("get")
COALESCE_HOLDER: Final = _sql("coalesce_holder")
ACTIVE: Final = _sql("active")
NEXT_ID: Final = _sql("next_id")
INSERT: Final = _sql("insert")
INSERT_OR_NOTHING: Final = _sql("insert_or_nothing")
INSERT_ALIKE: Final = _sql("insert_alike")
INSERT_ALIKE_OF_TYPE: Final = _sql("insert_alike_of_type")
INSERT_ALIKE_ARRAY: Final = _sql("insert_alike_array")
UPDATE: Final = _sql("update")
COUNT_CHANGE: Final = _sql("count_change", fence="")
COUNT_CHANGE_FENCED: Final = _sql("count_change", fence=_SQL["fence"])
DELETE: Final = _sql("delete")
DELETE_FENCED: Final = _sql("delete_fenced")
START_ONE: Final = _sql("start_one")
START_MANY: Final = _sql("start_many")
QUEUE_NAMES: Final = _sql("queued_queues", names=_SQL["queue_names"])
TOP_PRIORITY: Final = _sql("top_priority")
NEXT_PRIORITY: Final = _sql("next_priority")
FIRST_DUE: Final = _sql("first_due")
SUMMARY: Final = _sql("summary")
QUEUED_DETAIL: Final = _sql("queued_detail")
COUNT_DRIFT: Final = _sql("count_drift")
CLEAR_COUNTS: Final = _sql("clear_counts")
RECOUNT: Final = _sql("recount")
MARK_COUNTED: Final = _sql("mark_counted")
FOLD_COUNTS: Final = _sql("fold_counts")
COUNT_BATCH: Final = _sql("count_batch")
COUNTED_TO: Final = _sql("counted_to")
DATA_VERSION: Final = _sql("data_version")
WAL_CHECKPOINT: Final = _sql("wal_checkpoint")
EMPTY_WAL: Final = _sql("empty_wal")
VACUUM: Final = _sql("vacuum")
ROLLBACK_JOURNAL: Final = _sql("rollback_journal")
WAL_JOURNAL: Final = _sql("wal_journal")
PAGE_SIZE: Final = _sql("page_size")
USER_VERSION: Final = _sql("user_version")
TABLES: Final = _sql("tables")

DECLARE_SCHEDULE: Final = _sql("declare_schedule")
ADVANCE_SCHEDULE: Final = _sql("advance_schedule")
SCHEDULE_JOB: Final = _sql("schedule_job")
SCHEDULES: Final = _sql("schedules")
ADD_DEPENDENCY: Final = _sql("add_dependency")
DEPENDENCIES: Final = _sql("dependencies")
DEPENDENTS: Final = _sql("dependents")
FINISH_DEPENDENCIES: Final = _sql("finish_dependencies")
FINISH_DEPENDENCIES_OF_ONE: Final = _sql("finish_dependencies_of_one")
EXPIRED_GONE: Final = _sql("expired_gone")
EXPIRED_KEPT: Final = _sql("expired_kept")
ORPHAN_DEPENDENCIES: Final = _sql("orphan_dependencies")
SET_PAUSED: Final = _sql("set_paused")
PAUSED: Final = _sql("paused")
REGISTER: Final = _sql("register")
BEAT: Final = _sql("beat")
COUNT_FINISHED: Final = _sql("count_finished")
FORGET_OLD_STATS: Final = _sql("forget_old_stats")
FORGET_SILENT_WORKERS: Final = _sql("forget_silent_workers")
UNREGISTER: Final = _sql("unregister")
WORKERS: Final = _sql("workers")
THROUGHPUT: Final = _sql("throughput")
COUNT_TOTAL: Final = _sql("count_total")
TOTALS: Final = _sql("totals")
# The autoscaled pools' rows, by PoolInfo's field names.
_POOLS: Final = {
    "pool_columns": ", ".join(POOL_COLUMNS),
    "pool_values": ", ".join(f":{c}" for c in POOL_COLUMNS),
}
POOLS: Final = _sql("pools", **_POOLS)
FORGET_POOLS: Final = _sql("forget_pools")
REPORT_POOL: Final = _sql("report_pool", **_POOLS)

#: pick()'s queue count meaning "every queue, while only one holds queued jobs".
ONLY_QUEUE: Final = 0


@functools.cache
def pick(queue_count: int | None, limit: int) -> str:
    """The rows of the best `limit` due jobs of `queue_count` named queues (None: every
    queue; ONLY_QUEUE: every queue, while only one holds queued jobs), best first.
    Parameters: ?1 now, ?2… the queue names."""
    if queue_count == 1:
        return _sql("pick_in_queue", limit=int(limit))
    if queue_count == ONLY_QUEUE:
        return _sql("pick_in_only_queue", limit=int(limit))
    if queue_count is None:
        names = _SQL["queue_names"]
    else:
        names = _sql("listed_names", names=", ".join(f"(?{2 + i})" for i in range(queue_count)))
    return _sql("pick_in_queues", names=names, limit=int(limit))


@functools.lru_cache(maxsize=64)
def update_fenced(columns: tuple[str, ...]) -> str:
    """Set these columns (liteq's own names) of a claimed run, fenced: parameters are
    their values, then id, owner, attempts."""
    return _SQL["update_fenced"].format(assignments=", ".join(f"{c} = ?" for c in columns))


@functools.lru_cache(maxsize=64)
def delete_fenced_many(count: int) -> str:
    """Delete `count` runs of one owner: parameters (id, attempts) each, then the owner."""
    return _SQL["delete_fenced_many"].format(pairs=", ".join("(?, ?)" for _ in range(count)))


def count(queue: str | None, status: str | None) -> tuple[str, list[Any]]:
    """How many rows of this queue and status (None: any)."""
    where, args = filters(_SQL, [("queue", queue), ("status", status)])
    return _SQL["count"].format(where=where), args


def search(query: JobQuery) -> tuple[str, list[Any]]:
    """A page of rows matching `query`, and the parameters."""
    where, args = filters(_SQL, search_filters(query))
    order = "ASC" if query.before is None else "DESC"
    return _sql("search", where=where, order=order), [*args, query.limit]


def purge(
    status: str, queue: str | None, before: float | None, limit: int
) -> tuple[str, list[Any]]:
    """Delete up to `limit` rows of this status (and queue) finished before `before`."""
    where, args = filters(_SQL, [("queue", queue), ("finished_before", before)])
    return _SQL["purge"].format(where=where), [status, *args, limit]
