"""WorkerOptions: how a worker runs, checked once (Worker's arguments, `liteq work`'s flags)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

from liteq.options import check_text
from liteq.status import DEFAULT_MAX_CRASHES

DEFAULT_GUARANTEE_MEMORY: Final = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """Every option of a Worker but its store; see Worker for what each means."""

    queues: Sequence[str] | None = None
    wakeup_every: float = 5.0
    exit_if_no_jobs: bool = False
    exit_after_n_jobs: int | None = None
    max_time: float | None = None
    guarantee_memory: int = DEFAULT_GUARANTEE_MEMORY
    graceful_shutdown_timeout: float = 5.0
    jitter: bool = True
    nice: int | None = None
    lease: float = 30.0
    check_code: bool = True
    check_health: bool = True
    max_rss: int | None = None
    handle_signals: bool = True
    prefetch: int = 1
    max_crashes: int = DEFAULT_MAX_CRASHES

    def __post_init__(self) -> None:
        queues = self.queues
        if isinstance(queues, str):
            raise TypeError(f"queues must be a list of names, not the string {queues!r}")
        if queues is not None:
            object.__setattr__(self, "queues", tuple(queues))
            for queue in queues:
                check_text(queue, "a queue name")
        if self.wakeup_every <= 0:
            raise ValueError(f"wakeup_every must be positive, not {self.wakeup_every!r}")
        if self.exit_after_n_jobs is not None and self.exit_after_n_jobs < 1:
            raise ValueError(
                f"exit_after_n_jobs must be at least 1, not {self.exit_after_n_jobs!r}"
            )
        if self.lease <= 0:
            raise ValueError(f"lease must be positive, not {self.lease!r}")
        prefetch = self.prefetch
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int of at least 1, not {prefetch!r}")
        crashes = self.max_crashes
        if isinstance(crashes, bool) or not isinstance(crashes, int) or crashes < 1:
            raise ValueError(f"max_crashes must be an int of at least 1, not {crashes!r}")
        if self.max_rss is not None and self.max_rss < 1:
            raise ValueError(f"max_rss must be a positive number of bytes, not {self.max_rss!r}")
