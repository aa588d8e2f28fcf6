"""The supervisor's autoscaled pools: what each samples of its queues, the local driver that
starts and stops its processes, and the memory guard.

The policy itself is liteq/worker/autoscale.py (pure); this module feeds it from the store
and from the supervisor's children, and applies its decisions to them. The supervisor
shares two of its containers with the pools (its children, its list of starts to make) and
otherwise only calls `Pools.tick`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from liteq.errors import StoreError
from liteq.status import Status
from liteq.stores import connect
from liteq.stores.contract import PoolInfo
from liteq.worker.autoscale import Autoscaler, Limits, Pool, Sample
from liteq.worker.child import Child
from liteq.worker.identity import host, make_owner

log = logging.getLogger("liteq.supervisor")

#: While autoscaling, how often the supervisor samples its pools' queues; and how often
#: while a pool is at zero (its first job is picked up within about this long and a
#: worker's start).
AUTOSCALE_EVERY, AUTOSCALE_AT_ZERO = 0.5, 0.2
#: Throughput is measured over about this many seconds of a pool's finished jobs.
RATE_WINDOW = 10.0
#: How often the pools' state is written to the store without a decision (for `liteq
#: status`, the dashboard and /metrics, which list it while it is under POOL_LEASE old).
REPORT_EVERY = 5.0


@dataclass(frozen=True)
class PoolSpec:
    """An autoscaled pool: its name (for the log), the queues its workers serve (None: all)
    and its limits."""

    name: str
    queues: Sequence[str] | None
    limits: Limits


class LocalPool:
    """The local `Scalable` driver: a pool of the supervisor's worker processes. Growing
    asks for starts; shrinking takes back starts not yet made, then sends TERM to idle
    workers (newest first), then to busy ones, which finish their jobs (within
    --graceful-timeout) and exit: never SIGKILL, and not counted as deaths."""

    def __init__(self, children: dict[int, Child], pending: list[str], pool: str) -> None:
        self._children = children
        self._pending = pending
        self._pool = pool

    def members(self) -> list[Child]:
        """Its live workers, those told to go not counted."""
        return [c for c in self._children.values() if c.pool == self._pool and not c.scaled_down]

    def current(self) -> int:
        """Its workers, running or to be started (those told to go not counted)."""
        return len(self.members()) + self._pending.count(self._pool)

    def scale_to(self, n: int) -> None:
        """Start or stop workers until `current()` is `n`."""
        extra = n - self.current()
        for _ in range(extra):
            self._pending.append(self._pool)
        while extra < 0 and self._pool in self._pending:
            self._pending.remove(self._pool)
            extra += 1
        members = sorted(self.members(), key=lambda c: (c.busy(), -c.started))
        for child in members[: max(0, -extra)]:
            child.scaled_down = True
            with contextlib.suppress(ProcessLookupError):  # (ours, unreaped: not reused)
                os.kill(child.pid, signal.SIGTERM)


class Pools:
    """A supervisor's autoscaled pools: once a tick, sample each pool's queues, decide
    (autoscale.Autoscaler) and apply through each pool's LocalPool."""

    def __init__(
        self,
        url: str,
        specs: Sequence[PoolSpec],
        children: dict[int, Child],
        pending: list[str],
        *,
        max_processes: int | None,
        reserve: int,
    ) -> None:
        self.url = url
        self.specs = list(specs)
        self._children = children
        #: Bytes of available memory that new workers must leave to the rest of the host.
        self.reserve = reserve
        self._drivers = {s.name: LocalPool(children, pending, s.name) for s in self.specs}
        self.autoscaler = Autoscaler(
            [Pool(s.name, s.limits, self._drivers[s.name]) for s in self.specs], max_processes
        )
        self.next_due = 0.0
        self._rates: dict[str, collections.deque[tuple[float, int]]] = {}
        self._done: dict[int, int] = {}  # jobs done per worker pid, at the last sample
        #: This supervisor as the pools' rows name it (as a worker names itself on a job).
        self.supervisor = make_owner()
        self._decided: dict[str, tuple[str, float]] = {}  # (log line, epoch seconds)
        self._next_report = 0.0

    def tick(self, *, decide: bool, report: bool) -> None:
        """If due: sample and decide (`decide`: not while the supervisor stops or rolls its
        workers), and record the pools' state in the store (`report`: not once it stops,
        nor after the queue was deleted or damaged). Each look opens a store and closes it:
        none is open when a worker forks."""
        now = time.monotonic()
        if now < self.next_due:
            return
        at_zero = any(d.current() == 0 for d in self._drivers.values())
        self.next_due = now + (AUTOSCALE_AT_ZERO if at_zero else AUTOSCALE_EVERY)
        if decide and self._decide(now):
            self._next_report = now  # (at once: what changed, and why)
        if report and now >= self._next_report:
            self._report(self.state())
            self._next_report = now + REPORT_EVERY

    def _decide(self, now: float) -> bool:
        """Sample, decide and apply; whether a decision was taken (and logged)."""
        try:
            samples = self._sample(now)
        except StoreError as exc:
            log.warning("autoscaling: cannot read the queue: %s", exc)
            return False
        spare, sizes = self._memory()
        before = {name: pool.last for name, pool in self.autoscaler.pools.items()}
        if not self.autoscaler.tick(samples, now, spare, sizes):
            return False
        for name, pool in self.autoscaler.pools.items():
            if pool.last != before[name]:
                self._decided[name] = (pool.last, time.time())
        return True

    def state(self) -> list[PoolInfo]:
        """Each pool now, as `liteq status` shows it."""
        return [
            PoolInfo(
                self.supervisor,
                spec.name,
                host(),
                os.getpid(),
                self._drivers[spec.name].current(),
                spec.limits.minimum,
                spec.limits.maximum,
                spec.limits.target_wait,
                *self._decided.get(spec.name, ("", None)),
            )
            for spec in self.specs
        ]

    def withdraw(self) -> None:
        """The supervisor stops: its pools are no longer listed."""
        self._report([])

    def _report(self, pools: list[PoolInfo]) -> None:
        # After a read-only open (which never creates a file) found the queue: a write
        # must not leave a new, empty queue where the old one was deleted.
        try:
            connect(self.url, readonly=True).close()
            store = connect(self.url)
            try:
                store.report_pools(self.supervisor, pools)
            finally:
                store.close()
        except StoreError as exc:
            log.warning("autoscaling: cannot record the pools' state: %s", exc)

    def _sample(self, now: float) -> dict[str, Sample]:
        store = connect(self.url, readonly=True)
        try:
            clock = store.clock()
            rows = [r for r in store.summary() if r.status is Status.QUEUED]
            done = {
                w.pid: w.jobs_done
                for w in store.workers()
                if w.pid in self._children and w.host == host()
            }
        finally:
            store.close()
        samples = {}
        for spec in self.specs:
            mine = [r for r in rows if spec.queues is None or r.queue in spec.queues]
            due = sum(r.due for r in mine)
            oldest = [r.oldest_due for r in mine if r.oldest_due is not None and r.due]
            children = [c for c in self._children.values() if c.pool == spec.name]
            finished = sum(
                done[c.pid] - self._done.get(c.pid, done[c.pid]) for c in children if c.pid in done
            )
            samples[spec.name] = Sample(
                now,
                due,
                clock - min(oldest) if oldest else None,
                rate=self._rate(spec.name, finished, now),
                busy=sum(1 for c in children if c.busy()),
            )
        self._done = done
        return samples

    def _rate(self, pool: str, finished: int, now: float) -> float | None:
        """Jobs per second the pool finished over about the last RATE_WINDOW seconds (None:
        not yet known)."""
        history = self._rates.setdefault(pool, collections.deque())
        history.append((now, finished))
        while history and history[0][0] < now - RATE_WINDOW:
            history.popleft()
        span = now - history[0][0]
        total = sum(n for _, n in history)
        return total / span if span >= 2.0 and total else None

    def _memory(self) -> tuple[int | None, dict[str, int]]:
        """(bytes of available memory new workers may take: the host's available memory
        less the reserve; what a new worker of each pool takes: the largest RSS of that
        pool's workers, or of any, for a pool with none yet). (None, {}): none to measure."""
        sizes: dict[str, int] = {}
        for child in self._children.values():
            with contextlib.suppress(psutil.Error):
                rss = int(psutil.Process(child.pid).memory_info().rss)
                sizes[child.pool] = max(rss, sizes.get(child.pool, 0))
        if not sizes:
            return None, {}
        largest = max(sizes.values())
        for spec in self.specs:
            sizes.setdefault(spec.name, largest)
        return psutil.virtual_memory().available - self.reserve, sizes
