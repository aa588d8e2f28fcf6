"""Rescue of hung jobs: whose worker is gone, stuck or over time.

Each is re-queued with a mulligan. A worker still alive on this host is killed first, so that
its job never runs twice at once; one on another host is left to its lease. The verdict is
made twice: once on a snapshot, to find candidates, then again on the row as it is inside the
write transaction that re-queues it, with fresh clocks, just before any kill.

A worker that died while running a job (a crash, a kill for being stuck, over max_runtime or
over max_rss, a lease that expired) counts a crash of that job: at max_crashes it fails for
good, so that a poison payload cannot take down a worker per mulligan. A worker that stopped
deliberately (a TERM past its graceful timeout) counts none. Which job a dead worker was
running is known exactly when its supervisor saw it die (`Ended`); otherwise only when the
worker held that one job (with prefetch it holds several, and none is blamed).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Container, Mapping
from typing import TYPE_CHECKING, NamedTuple

from liteq.record import Record
from liteq.status import DEFAULT_MAX_CRASHES, MULLIGAN_CAP, Status
from liteq.stores.base import install_hung_check
from liteq.stores.contract import Hung
from liteq.worker.identity import Owner, kill, owner_state, parse_owner

if TYPE_CHECKING:
    from liteq.managed import ManagedJob
    from liteq.stores.contract import Store

log = logging.getLogger("liteq.rescue")

#: A verdict that took longer than this to reach its row kills nobody: the process making it
#: was paused or starved meanwhile, and so, perhaps, was the worker it would kill, which has
#: not had the time to renew its lease since.
STALE_VERDICT = 1.0


class Ended(NamedTuple):
    """How a worker process of this host ended, as its supervisor saw it: `death` in words
    ("signal 11", "exit status 7", over max_rss), and the job it was running then (None:
    none, or it stopped deliberately and left its job to be handed back), or whether it
    was running several (coroutine jobs: each is blamed, and then runs alone)."""

    death: str
    job: int | None
    several: bool = False


#: The key of a process in a mapping of Ended: (pid, start), as an owner names it.
ProcessKey = tuple[int, str]


#: The death of a worker no supervisor saw (its supervisor died too, or none ran it).
UNSEEN_DEATH = "cause unknown: its process was gone"


class Verdict(NamedTuple):
    """Why a job is hung, the live process of this host to stop before it is re-queued, and
    how its worker died running it (None: no death of the job's doing, a plain mulligan)."""

    reason: str
    victim: Owner | None
    death: str | None = None
    #: The death was shared with other jobs in flight: it counts a crash (the job then runs
    #: alone) but never fails the job for good, which only a death of its own may.
    shared: bool = False


def assess(
    rec: Record,
    now: float,
    mono: float,
    *,
    ended: Mapping[ProcessKey, Ended] | None = None,
    unreaped: Container[ProcessKey] = (),
    sole: bool = True,
) -> Verdict | None:
    """Whether a RUNNING or WAIT_ASYNC row is hung, judged by its store clock `now` and
    this host's monotonic clock `mono`; None if it is not. `ended`: how processes of this
    host ended, as their supervisor saw; `sole`: whether the row is the only one its owner
    holds (then a death is that job's)."""
    if rec.status is Status.WAIT_ASYNC:
        if _over_time(rec, now):
            return Verdict(f"waited more than max_runtime={rec.max_runtime}s", None)
        return None
    state = owner_state(rec.owner)
    if state == "dead":
        parsed = parse_owner(rec.owner or "")
        key = None if parsed is None else (parsed.pid, parsed.start)
        seen = None if key is None or ended is None else ended.get(key)
        if seen is None and key in unreaped:
            return None  # our own child, dead but not reaped yet: the reap will say how
        if seen is None:  # died unseen (its supervisor died too, or none ran it)
            death = UNSEEN_DEATH if sole else None
            return Verdict(f"its worker {rec.owner} is gone", None, death)
        if seen.several:  # any of them may have done it: each counts a crash, then runs alone
            why = f"the worker running it and other jobs ({rec.owner}) died: {seen.death}"
            return Verdict(why, None, seen.death, shared=True)
        if seen.job != rec.id:  # it was not running this one (prefetched, done, handed back)
            return Verdict(f"its worker {rec.owner} is gone ({seen.death})", None)
        return Verdict(f"the worker running it ({rec.owner}) died: {seen.death}", None, seen.death)
    if state == "remote":  # its worker must stop once its lease is gone; we cannot stop it
        if rec.lease_until is not None and rec.lease_until < now:
            death = "its lease expired" if sole else None
            return Verdict(f"the lease of {rec.owner} expired", None, death)
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
    # A worker killed for a job stuck past its time is a death of that job's doing; one
    # stuck with a lease gone stale is, if that was the one job it held.
    death = f"killed: {why}" if not stale or sole else None
    return Verdict(f"{why}; its worker {rec.owner} was killed", victim, death)


def _over_time(rec: Record, now: float) -> bool:
    return (
        rec.max_runtime is not None
        and rec.started_at is not None
        and now > rec.started_at + rec.max_runtime
    )


def detect_hung_jobs(
    store: Store,
    *,
    kill_live: bool = True,
    max_crashes: int = DEFAULT_MAX_CRASHES,
    ended: Mapping[ProcessKey, Ended] | None = None,
    unreaped: Container[ProcessKey] = (),
) -> list[ManagedJob]:
    """Re-queue with a mulligan every hung job of `store`; return them. A job whose worker
    died running it for the `max_crashes`-th time fails for good instead.

    With kill_live=False a live worker of this host is left alone this time, whatever its
    lease says (its supervisor was itself paused: see Supervisor). `ended` says how
    processes of this host ended, as their supervisor saw it; `unreaped` names its children
    not reaped yet (one that died meanwhile is judged once its death is known).
    """
    rescued = []
    active = store.active()
    held = Counter(rec.owner for rec in active if rec.status is Status.RUNNING)
    for rec in active:
        seen = time.monotonic()
        sole = held[rec.owner] == 1
        if assess(rec, store.clock(), seen, ended=ended, unreaped=unreaped, sole=sole) is None:
            continue

        def decide(
            current: Record, now: float, mono: float, seen: float = seen, sole: bool = sole
        ) -> Hung | None:
            verdict = assess(current, now, mono, ended=ended, unreaped=unreaped, sole=sole)
            if verdict is None:
                return None
            if verdict.victim is not None:
                if not kill_live or time.monotonic() - seen > STALE_VERDICT:
                    return None
                if not kill(verdict.victim):  # it ended by itself meanwhile
                    death = UNSEEN_DEATH if sole else None
                    return Hung(f"its worker {current.owner} is gone", death, max_crashes)
            # (A shared death is never the last: see Verdict.shared.)
            limit = MULLIGAN_CAP if verdict.shared else max_crashes
            return Hung(verdict.reason, verdict.death, limit)

        mjob = store.rescue(rec, decide)
        if mjob is not None:
            # (info: the supervisor and `liteq detect-hung` each say it in their own words)
            log.info("job %d rescued: %s -> %s", mjob.id, mjob.error, mjob.status.value)
            rescued.append(mjob)
    return rescued


# Every store's detect_hung_jobs runs this (a store knows no processes: see stores.base).
install_hung_check(detect_hung_jobs)
