"""Scheduler: a worker's periodic jobs (`@store.periodic`), enqueued when their slots come.

Every worker process schedules: there is no scheduler process to forget. It takes the
schedules this process's registry holds (filled as `liteq work --import` imported the
application's modules) whose queue it serves, declares them to the store when it starts
(and again every DECLARE_EVERY seconds, which keeps their `seen_at` fresh), and, once the
earliest next slot among them is due, asks the store to enqueue what is due
(`store.run_schedule`): the store guarantees one job per (name, slot) however many
workers ask. Until then a check costs a clock read and a comparison; an idle worker's wait
ends at the next slot (`wait`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Final

from liteq import periodic
from liteq.periodic import Periodic
from liteq.stores.contract import Store

log = logging.getLogger("liteq.worker")

#: How often a worker says again which schedules it has (their rows' seen_at).
DECLARE_EVERY: Final = 3600.0


class Scheduler:
    """The periodic jobs of one worker: those of the queues it serves (None: all)."""

    def __init__(self, store: Store, queues: Sequence[str] | None) -> None:
        self.store = store
        self.queues = None if queues is None else frozenset(queues)
        self._generation = -1  # of the registry, when last read
        self._mine: list[Periodic] = []
        self._next: dict[str, float] = {}  # name -> its next slot (epoch seconds)
        self._due = -math.inf  # the earliest of them: the first check runs at once
        self._declare_at = -math.inf

    def _reload(self, now: float) -> None:
        generation, every = periodic.registered()
        if generation == self._generation and now < self._declare_at:
            return
        if generation != self._generation:
            self._generation = generation
            self._mine = [p for p in every if self.queues is None or p.queue in self.queues]
            self._next = {p.name: -math.inf for p in self._mine}  # (each looked at once)
            if self._mine:
                names = ", ".join(p.name for p in self._mine)
                log.info("periodic jobs: %s", names)
        self.store.declare_schedules(self._mine)
        self._declare_at = now + DECLARE_EVERY
        self._due = min(self._next.values(), default=math.inf)

    def run_due(self) -> int:
        """Enqueue the due slots of this worker's schedules, if any is due (cheap when none
        is); return how many jobs were enqueued (here: others may have enqueued them)."""
        now = self.store.clock()
        if now < self._due and now < self._declare_at:
            return 0
        self._reload(now)
        if now < self._due:
            return 0
        enqueued = 0
        for p in self._mine:
            if self._next[p.name] > now:
                continue
            for mjob in self.store.run_schedule(p):
                enqueued += 1
                log.info("schedule %s: enqueued job %d for %s", p.name, mjob.id, mjob.run_at)
            after = p.schedule.after(now)
            self._next[p.name] = math.inf if after is None else after
        self._due = min(self._next.values(), default=math.inf)
        return enqueued

    def wait(self) -> float:
        """Seconds until the next slot of this worker's schedules (inf: none)."""
        if not self._mine and self._generation == periodic.registered()[0]:
            return math.inf
        return max(0.0, self._due - self.store.clock())
