"""PostgresStore's statements, read from queries.sql and completed for one schema."""

from __future__ import annotations

import functools
import re
import typing
from typing import Any, Final

from liteq.record import COLUMNS, COLUMNS_BUT_ID, Record
from liteq.status import Status
from liteq.stores.contract import JobQuery
from liteq.stores.registry import POOL_COLUMNS
from liteq.stores.sqlshared import WORKER_COLUMNS, filters, read_blocks, search_filters

_SQL: Final = read_blocks(__package__, "queries.sql")

#: A schema name liteq accepts: a plain identifier, short enough that its notification
#: channel's name ("liteq." + it) fits PostgreSQL's 63 bytes.
SCHEMA_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,56}")


#: PostgreSQL's type for the Python type of a column of Record's.
_PG_TYPES: Final = {int: "bigint", float: "float8", str: "text", bool: "boolean", Status: "text"}


def _pg_type(hint: object) -> str:
    """PostgreSQL's type of a column Record types as `hint` (`float | None`: float8)."""
    (python,) = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    return _PG_TYPES[python]


#: Each column's type, from Record's: insert_batch casts an array of each to it.
_TYPES: Final = {name: _pg_type(hint) for name, hint in typing.get_type_hints(Record).items()}
#: The columns in which rows inserted by insert_alike differ: each goes in as an array.
ALIKE_ARRAYS: Final = ("job_type", "payload")


def quoted(schema: str) -> str:
    """The schema's name as SQL writes it."""
    return f'"{schema}"'


def channel(schema: str) -> str:
    """The channel NOTIFY wakes the idle workers of this schema's queue on."""
    return f"liteq.{schema}"


class Queries:
    """Every statement, completed for one schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._fixed = {
            "s": quoted(schema),
            "columns": ", ".join(COLUMNS),
            "new_columns": ", ".join(COLUMNS_BUT_ID),
            "j_columns": ", ".join(f"j.{c}" for c in COLUMNS),
            "values": ", ".join(["%s"] * len(COLUMNS_BUT_ID)),
            "assignments": ", ".join(f"{c} = %s" for c in COLUMNS_BUT_ID),
            "arrays": ", ".join(f"%({c})b::{_TYPES[c]}[]" for c in COLUMNS_BUT_ID),
            "alike_values": ", ".join(
                f"t.{c}" if c in ALIKE_ARRAYS else f"%({c})s::{_TYPES[c]}" for c in COLUMNS_BUT_ID
            ),
            "worker_columns": ", ".join(WORKER_COLUMNS),
            "worker_values": ", ".join(f"%({c})s" for c in WORKER_COLUMNS),
        }
        sql = self._sql
        self.channel = channel(schema)
        self.GET = sql("get")
        self.GET_FOR_UPDATE = sql("get_for_update")
        self.GET_MANY_FOR_UPDATE = sql("get_many_for_update")
        self.COALESCE_HOLDER = sql("coalesce_holder")
        self.COALESCE_HOLDER_FOR_UPDATE = sql("coalesce_holder_for_update")
        self.ACTIVE = sql("active")
        self.INSERT = sql("insert")
        self.INSERT_BATCH = sql("insert_batch")
        self.INSERT_ALIKE = sql("insert_alike")
        self.UPDATE = sql("update")
        self.DELETE = sql("delete")
        self.DELETE_FENCED = sql("delete_fenced")
        self.DELETE_FENCED_MANY = sql("delete_fenced_many")
        self.CLAIM_ANY = sql("claim", where="")
        self.CLAIM_ONE_QUEUE = sql("claim", where=_SQL["in_one_queue"])
        self.CLAIM_QUEUES = sql("claim", where=_SQL["in_queues"])
        self.COMPLETE_AND_CLAIM = sql("complete_and_claim")
        self.QUEUED_QUEUES = sql("queued_queues")
        self.FIRST_DUE = sql("first_due")
        self.SUMMARY = sql("summary")
        self.COUNT_DRIFT = sql("count_drift")
        self.WITHOUT_JIT = sql("without_jit")
        self.LOCK_JOBS_FOR_RECOUNT = sql("lock_jobs_for_recount")
        self.FOLD_COUNTS = sql("fold_counts")
        self.CLEAR_COUNTS = sql("clear_counts")
        self.RECOUNT = sql("recount")
        self.DECLARE_SCHEDULE = sql("declare_schedule")
        self.ADVANCE_SCHEDULE = sql("advance_schedule")
        self.SCHEDULE_JOB = sql("schedule_job")
        self.SCHEDULES = sql("schedules")
        self.ADD_DEPENDENCIES = sql("add_dependencies")
        self.DEPENDENCIES = sql("dependencies")
        self.DEPENDENTS = sql("dependents")
        self.FINISH_DEPENDENCIES = sql("finish_dependencies")
        self.EXPIRED_GONE = sql("expired_gone")
        self.EXPIRED_KEPT = sql("expired_kept")
        self.ORPHAN_DEPENDENCIES = sql("orphan_dependencies")
        self.SET_PAUSED = sql("set_paused")
        self.PAUSED = sql("paused")
        self.REGISTER = sql("register")
        self.BEAT = sql("beat")
        self.COUNT_FINISHED = sql("count_finished")
        self.FORGET_OLD_STATS = sql("forget_old_stats")
        self.FORGET_SILENT_WORKERS = sql("forget_silent_workers")
        self.UNREGISTER = sql("unregister")
        self.WORKERS = sql("workers")
        self.THROUGHPUT = sql("throughput")
        self.COUNT_TOTAL = sql("count_total")
        self.TOTALS = sql("totals")
        self.NOTIFY = sql("notify")
        self.SESSION_SETTINGS = sql("session_settings")
        self.TABLES = sql("tables")
        self.META_VERSION = sql("meta_version")
        self.MIGRATION_LOCK = sql("migration_lock")
        self.CREATE_SCHEMA = sql("create_schema")
        self.CREATE_META = sql("create_meta")
        self.INIT_META = sql("init_meta")
        self.SET_VERSION = sql("set_version")
        # The autoscaled pools' rows, by PoolInfo's field names.
        pools = {
            "pool_columns": ", ".join(POOL_COLUMNS),
            "pool_values": ", ".join(f"%({c})s" for c in POOL_COLUMNS),
        }
        self.POOLS = sql("pools", **pools)
        self.FORGET_POOLS = sql("forget_pools")
        self.REPORT_POOL = sql("report_pool", **pools)

    def _sql(self, name: str, **parts: str) -> str:
        return _SQL[name].format(**self._fixed, **parts)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one Queries per store, kept for its life
    def update_fenced(self, columns: tuple[str, ...]) -> str:
        """Set these columns of a claimed run, fenced: parameters are their values, then
        id, owner, attempts."""
        return self._sql("update_fenced", set=", ".join(f"{c} = %s" for c in columns))

    def count(self, queue: str | None, status: str | None) -> tuple[str, list[Any]]:
        """How many rows of this queue and status (None: any)."""
        where, args = filters(_SQL, [("queue", queue), ("status", status)])
        return self._sql("count", where=where), args

    def search(self, query: JobQuery) -> tuple[str, list[Any]]:
        """A page of rows matching `query`, and the parameters."""
        where, args = filters(_SQL, search_filters(query))
        order = "ASC" if query.before is None else "DESC"
        return self._sql("search", where=where, order=order), [*args, query.limit]

    def purge(
        self, status: str, queue: str | None, before: float | None, limit: int
    ) -> tuple[str, list[Any]]:
        """Delete up to `limit` rows of this status (and queue) finished before `before`."""
        where, args = filters(_SQL, [("queue", queue), ("finished_before", before)])
        return self._sql("purge", where=where), [status, *args, limit]


@functools.cache
def queries(schema: str) -> Queries:
    """The statements of this schema (made once per process)."""
    return Queries(schema)
