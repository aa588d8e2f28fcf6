"""liteq: a job queue for Python whose queue is one SQLite file."""

from typing import TYPE_CHECKING

from liteq.dolater import do_later
from liteq.errors import (
    InvalidState,
    InvalidStateChange,
    JobFailed,
    JobLocked,
    JobNotFound,
    LeaseLost,
    LiteqError,
    PayloadError,
    ResultExpired,
    ResultNotReady,
    StoreCorrupt,
    StoreError,
    StoreMoved,
    StoreUnavailable,
    UnknownJobType,
)
from liteq.job import Job
from liteq.managed import ManagedJob
from liteq.status import Status
from liteq.stores import EnqueueOptions, MemoryStore, SQLiteStore, Store, connect, postgres_store
from liteq.task import Task
from liteq.waitasync import resolve_wait_async
from liteq.worker import Worker

if TYPE_CHECKING:
    from liteq.stores.postgres import PostgresStore

__version__ = "0.1.0"

__all__ = [
    "EnqueueOptions",
    "InvalidState",
    "InvalidStateChange",
    "Job",
    "JobFailed",
    "JobLocked",
    "JobNotFound",
    "LeaseLost",
    "LiteqError",
    "ManagedJob",
    "MemoryStore",
    "PayloadError",
    "PostgresStore",
    "ResultExpired",
    "ResultNotReady",
    "SQLiteStore",
    "Status",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreMoved",
    "StoreUnavailable",
    "Task",
    "UnknownJobType",
    "Worker",
    "__version__",
    "connect",
    "do_later",
    "resolve_wait_async",
]


def __getattr__(name: str) -> object:
    # PostgresStore needs psycopg, an optional extra: imported when first asked for.
    if name == "PostgresStore":
        return postgres_store()
    raise AttributeError(f"module 'liteq' has no attribute {name!r}")
