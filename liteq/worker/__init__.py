"""Workers: the loop that runs jobs, and the supervisor behind `liteq work`."""

from liteq.worker.exits import (
    EXIT_CODE_CHANGED,
    EXIT_MEMORY,
    EXIT_OK,
    EXIT_SIGNAL,
    EXIT_STORE_CORRUPT,
    EXIT_STORE_MOVED,
)
from liteq.worker.loop import Worker
from liteq.worker.options import WorkerOptions
from liteq.worker.rescue import detect_hung_jobs
from liteq.worker.signals import Interrupted

__all__ = [
    "EXIT_CODE_CHANGED",
    "EXIT_MEMORY",
    "EXIT_OK",
    "EXIT_SIGNAL",
    "EXIT_STORE_CORRUPT",
    "EXIT_STORE_MOVED",
    "Interrupted",
    "Worker",
    "WorkerOptions",
    "detect_hung_jobs",
]
