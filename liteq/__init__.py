"""liteq: a job queue for Python whose queue is one SQLite file."""

from liteq.asyncjob import resolve_wait_async
from liteq.delayed import do_later
from liteq.errors import (
    InvalidState,
    InvalidStateChange,
    JobLocked,
    JobNotFound,
    LeaseLost,
    LiteqError,
    PayloadError,
    StoreCorrupt,
    StoreError,
    StoreMoved,
    UnknownJobType,
)
from liteq.job import Job
from liteq.managed import ManagedJob
from liteq.status import Status
from liteq.stores import EnqueueOptions, MemoryStore, SQLiteStore, Store, connect
from liteq.task import Task
from liteq.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "EnqueueOptions",
    "InvalidState",
    "InvalidStateChange",
    "Job",
    "JobLocked",
    "JobNotFound",
    "LeaseLost",
    "LiteqError",
    "ManagedJob",
    "MemoryStore",
    "PayloadError",
    "SQLiteStore",
    "Status",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreMoved",
    "Task",
    "UnknownJobType",
    "Worker",
    "__version__",
    "connect",
    "do_later",
    "resolve_wait_async",
]
