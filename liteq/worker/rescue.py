"""Rescue of hung jobs: whose worker is gone, stuck or over time.

Each is re-queued with a mulligan. A worker still alive on this host is killed first, so that
its job never runs twice at once; one on another host is left to its lease. The verdict is
made twice: once on a snapshot, to find candidates, then again on the row as it is inside the
write transaction that re-queues it, with fresh clocks, just before any kill.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, NamedTuple

from liteq.record import Record
from liteq.status import Status
from liteq.worker.identity import Owner, kill, owner_state, parse_owner

if TYPE_CHECKING:
    from liteq.managed import ManagedJob
    from liteq.stores.contract import Store

log = logging.getLogger("liteq.rescue")

#: A verdict that took longer than this to reach its row kills nobody: the process making it
#: was paused or starved meanwhile, and so, perhaps, was the worker it would kill, which has
#: not had the time to renew its lease since.
STALE_VERDICT = 1.0


class Verdict(NamedTuple):
    """Why a job is hung, and the live process of this host to stop before it is re-queued."""

    reason: str
    victim: Owner | None


def assess(rec: Record, now: float, mono: float) -> Verdict | None:
    """Whether a RUNNING or WAIT_ASYNC row is hung, judged by its store clock `now` and
    this host's monotonic clock `mono`; None if it is not."""
    if rec.status is Status.WAIT_ASYNC:
        if _over_time(rec, now):
            return Verdict(f"waited more than max_runtime={rec.max_runtime}s", None)
        return None
    state = owner_state(rec.owner)
    if state == "dead":
        return Verdict(f"its worker {rec.owner} is gone", None)
    if state == "remote":  # its worker must stop once its lease is gone; we cannot stop it
        if rec.lease_until is not None and rec.lease_until < now:
            return Verdict(f"the lease of {rec.owner} expired", None)
        return None
    # Alive on this host: judged by this host's monotonic clock, which no step moves (the
    # wall clock only for rows an older liteq claimed).
    if rec.lease_mono is not None:
        stale = mono > rec.lease_mono
    else:
        stale = rec.lease_until is not None and rec.lease_until < now
    if rec.deadline_mono is not None:
        over = mono > rec.deadline_mono
    else:
        over = rec.lease_mono is None and _over_time(rec, now)
    victim = parse_owner(rec.owner or "")
    if not (stale or over) or victim is None:
        return None
    if victim.pid == os.getpid():
        log.warning("job %d is hung in this very process; not re-queued", rec.id)
        return None
    why = "its lease expired" if stale else f"it ran more than max_runtime={rec.max_runtime}s"
    return Verdict(f"{why}; its worker {rec.owner} was killed", victim)


def _over_time(rec: Record, now: float) -> bool:
    return (
        rec.max_runtime is not None
        and rec.started_at is not None
        and now > rec.started_at + rec.max_runtime
    )


def detect_hung_jobs(store: Store, *, kill_live: bool = True) -> list[ManagedJob]:
    """Re-queue with a mulligan every hung job of `store`; return them.

    With kill_live=False a live worker of this host is left alone this time, whatever its
    lease says (its supervisor was itself paused: see Supervisor).
    """
    rescued = []
    for rec in store.active():
        seen = time.monotonic()
        if assess(rec, store.clock(), seen) is None:
            continue

        def decide(current: Record, now: float, mono: float, seen: float = seen) -> str | None:
            verdict = assess(current, now, mono)
            if verdict is None or verdict.victim is None:
                return None if verdict is None else verdict.reason
            if not kill_live or time.monotonic() - seen > STALE_VERDICT:
                return None
            if not kill(verdict.victim):  # it ended by itself meanwhile
                return f"its worker {current.owner} is gone"
            return verdict.reason

        mjob = store.rescue(rec, decide)
        if mjob is not None:
            log.warning("job %d was hung (%s): %s", mjob.id, mjob.error, mjob.status.value)
            rescued.append(mjob)
    return rescued
