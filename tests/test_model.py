"""A Hypothesis state machine: random operations on a store, checked against a small model.

The model is liteq's semantics (docs/concepts.md) in a few lines of plain Python: which job a claim
returns (priority, run_at, FIFO), coalescing, attempts, retries, mulligans, locks, async
results and hung-job rescue. After every step the store and the model must agree.
"""

from __future__ import annotations

import dataclasses
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import liteq
from liteq import Status
from liteq.record import DUE_AT_ONCE
from liteq.status import COALESCE_HOLDING, DEFAULT_MAX_CRASHES, MULLIGAN_CAP
from tests.conftest import STORES, Clock, close_store, open_store
from tests.jobs import Waits

QUEUES = ["a", "b"]
OWNER = "elsewhere/1/0.00/model"  # another host: only lease expiry rescues its jobs
LEASE = 30.0


@dataclasses.dataclass
class Model:
    id: int
    queue: str
    priority: int
    run_at: float
    max_attempts: int
    coalesce_id: str | None
    keep: bool
    max_runtime: float | None
    status: Status = Status.QUEUED
    attempts: int = 0
    started_at: float | None = None
    lease_until: float | None = None
    locked: bool = False
    crashes: int = 0


job_specs = st.fixed_dictionaries(
    {
        "queue": st.sampled_from(QUEUES),
        "priority": st.integers(-2, 2),
        "delay": st.sampled_from([0.0, 0.0, 5.0, 50.0]),
        "coalesce_id": st.sampled_from([None, None, None, "x", "y"]),
        "max_attempts": st.integers(1, 3),
        "keep": st.booleans(),
        "max_runtime": st.sampled_from([None, 20.0, 100.0]),
    }
)


class StoreMachine(RuleBasedStateMachine):
    """Subclassed once per store kind; `make_store` builds the store under test."""

    def make_store(self, clock: Clock) -> liteq.stores.BaseStore:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.store = self.make_store(self.clock)
        self.model: dict[int, Model] = {}
        self.claimed: list[liteq.ManagedJob] = []
        self.locks: dict[int, AbstractContextManager[liteq.ManagedJob]] = {}
        self.max_id = 0

    def teardown(self) -> None:
        for holder in self.locks.values():
            holder.__exit__(None, None, None)
        close_store(self.store)

    # -- helpers -------------------------------------------------------------
    def holder(self, cid: str) -> Model | None:
        found = [
            m for m in self.model.values() if m.coalesce_id == cid and m.status in COALESCE_HOLDING
        ]
        assert len(found) <= 1
        return found[0] if found else None

    def in_status(self, *statuses: Status) -> list[int]:
        return sorted(i for i, m in self.model.items() if m.status in statuses)

    def finish(self, m: Model, status: Status) -> None:
        m.status, m.lease_until = status, None
        if status is Status.COMPLETED and not m.keep:
            del self.model[m.id]

    def requeue_or_fail(self, m: Model, *, mulligan: bool) -> None:
        if mulligan and m.max_attempts < MULLIGAN_CAP:
            m.max_attempts += 1
        if m.attempts < m.max_attempts:
            m.status, m.run_at, m.lease_until = Status.QUEUED, DUE_AT_ONCE, None
        else:
            m.status, m.lease_until = Status.FAILED, None

    def expected_claim(self, queues: list[str] | None) -> Model | None:
        due = [
            m
            for m in self.model.values()
            if m.status is Status.QUEUED
            and m.run_at <= self.clock.now
            and not m.locked
            and (queues is None or m.queue in queues)
        ]
        return min(due, key=lambda m: (-m.priority, m.run_at, m.id), default=None)

    def add(self, spec: dict[str, object], mjob: liteq.ManagedJob, batch: dict[str, int]) -> None:
        cid = spec["coalesce_id"]
        holder = self.holder(cid) if isinstance(cid, str) else None
        if isinstance(cid, str) and (holder is not None or cid in batch):
            assert mjob.id == (holder.id if holder else batch[cid]), "coalesced to another job"
            return
        assert mjob.id > self.max_id, "ids must grow and never be reused"
        self.max_id = mjob.id
        if isinstance(cid, str):
            batch[cid] = mjob.id
        self.model[mjob.id] = Model(
            id=mjob.id,
            queue=str(spec["queue"]),
            priority=int(spec["priority"]),  # type: ignore[call-overload]
            run_at=self.clock.now + delay if (delay := float(spec["delay"])) else DUE_AT_ONCE,  # type: ignore[arg-type]
            max_attempts=int(spec["max_attempts"]),
            coalesce_id=cid if isinstance(cid, str) else None,  # type: ignore[call-overload]
            keep=bool(spec["keep"]),
            max_runtime=spec["max_runtime"],  # type: ignore[arg-type]
        )

    def options(self, spec: dict[str, object]) -> dict[str, object]:
        return {
            "queue": spec["queue"],
            "priority": spec["priority"],
            "delay": spec["delay"],
            "coalesce_id": spec["coalesce_id"],
            "max_attempts": spec["max_attempts"],
            "delete_on_complete": not spec["keep"],
            "max_runtime": spec["max_runtime"],
        }

    # -- rules -------------------------------------------------------------------
    @rule(spec=job_specs, waits=st.booleans())
    def enqueue(self, spec: dict[str, object], waits: bool) -> None:
        job = Waits() if waits else Waits("plain")
        self.add(spec, self.store.enqueue(job, **self.options(spec)), {})  # type: ignore[arg-type]

    @rule(specs=st.lists(job_specs, min_size=1, max_size=4))
    def enqueue_many(self, specs: list[dict[str, object]]) -> None:
        # One call per option set: enqueue_many applies the same options to all its jobs.
        spec = specs[0]
        mjobs = self.store.enqueue_many([Waits() for _ in specs], **self.options(spec))  # type: ignore[arg-type]
        batch: dict[str, int] = {}
        for mjob in mjobs:
            self.add(spec, mjob, batch)

    @rule(queues=st.sampled_from([None, ["a"], ["b"], ["a", "b"]]))
    def claim(self, queues: list[str] | None) -> None:
        expected = self.expected_claim(queues)
        mjob = self.store.claim(OWNER, queues, lease=LEASE)
        assert (mjob.id if mjob else None) == (expected.id if expected else None)
        if mjob is None or expected is None:
            return
        expected.status, expected.attempts = Status.RUNNING, expected.attempts + 1
        expected.started_at, expected.lease_until = self.clock.now, self.clock.now + LEASE
        assert mjob.attempts == expected.attempts
        self.claimed.append(mjob)

    def pick_claimed(self, data: st.DataObject) -> tuple[liteq.ManagedJob, Model | None, bool]:
        mjob = self.claimed.pop(data.draw(st.integers(0, len(self.claimed) - 1)))
        m = self.model.get(mjob.id)
        owned = m is not None and m.status is Status.RUNNING and m.attempts == mjob.attempts
        return mjob, m, owned

    @precondition(lambda self: self.claimed)
    @rule(data=st.data(), outcome=st.sampled_from(["complete", "fail", "wait_async", "mulligan"]))
    def acknowledge(self, data: st.DataObject, outcome: str) -> None:
        mjob, m, owned = self.pick_claimed(data)
        if not owned:  # rescued meanwhile: the stale worker's word must be refused
            stale = self.store.complete if outcome == "complete" else self.store.wait_async
            with pytest.raises(liteq.LeaseLost):
                stale(mjob)
            return
        assert m is not None
        if outcome == "complete":
            self.store.complete(mjob)
            self.finish(m, Status.COMPLETED)
        elif outcome == "wait_async":
            self.store.wait_async(mjob)
            m.status, m.lease_until = Status.WAIT_ASYNC, None
        elif outcome == "mulligan":
            self.requeue_or_fail(m, mulligan=True)
            assert mjob.retry(mulligan=True) is (m.status is Status.QUEUED)
        else:
            status = self.store.fail(mjob, "boom", "tb")
            if m.attempts < m.max_attempts:
                assert status is Status.QUEUED
                wait = mjob.run_at.timestamp() - self.clock.now
                assert 0.75 * 2**m.attempts - 1e-6 <= wait <= 1.25 * 2**m.attempts + 1e-6
                m.status, m.run_at, m.lease_until = Status.QUEUED, mjob.run_at.timestamp(), None
            else:
                assert status is Status.FAILED
                m.status, m.lease_until = Status.FAILED, None

    @precondition(lambda self: self.in_status(Status.FAILED, Status.WAIT_ASYNC))
    @rule(data=st.data(), mulligan=st.booleans())
    def retry(self, data: st.DataObject, mulligan: bool) -> None:
        job_id = data.draw(st.sampled_from(self.in_status(Status.FAILED, Status.WAIT_ASYNC)))
        m = self.model[job_id]
        if m.locked:
            with pytest.raises(liteq.JobLocked):
                self.store.get(job_id).retry(mulligan=mulligan)
            return
        if m.status is Status.FAILED and m.attempts >= m.max_attempts and not mulligan:
            assert self.store.get(job_id).retry() is False
            return
        requeued = self.store.get(job_id).retry(mulligan=mulligan)
        if m.status is Status.FAILED:  # an operator's retry forgives its worker deaths
            m.crashes = 0
        self.requeue_or_fail(m, mulligan=mulligan)
        assert requeued == (m.status is Status.QUEUED)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.model)))
        m = self.model[job_id]
        other = self.holder(m.coalesce_id) if m.coalesce_id else None
        if m.locked:
            with pytest.raises(liteq.JobLocked):
                self.store.get(job_id).restart()
        elif m.status is Status.RUNNING:
            with pytest.raises(liteq.InvalidState, match="run it twice"):
                self.store.get(job_id).restart()
        elif other is not None and other.id != job_id:
            with pytest.raises(liteq.InvalidState, match="holds its coalesce id"):
                self.store.get(job_id).restart()
        else:
            self.store.get(job_id).restart()
            m.status, m.attempts, m.run_at, m.lease_until = Status.QUEUED, 0, DUE_AT_ONCE, None
            m.crashes = 0

    @precondition(lambda self: self.in_status(Status.WAIT_ASYNC))
    @rule(data=st.data(), result=st.sampled_from(["completed", "failed", "queued", "raise"]))
    def resolve(self, data: st.DataObject, result: str) -> None:
        job_id = data.draw(st.sampled_from(self.in_status(Status.WAIT_ASYNC)))
        m = self.model[job_id]
        if m.locked:
            with pytest.raises(liteq.JobLocked):
                liteq.resolve_wait_async(self.store, job_id, result)
            return
        if result == "raise":
            with pytest.raises(ValueError, match="callback data was bad"):
                liteq.resolve_wait_async(self.store, job_id, "raise")
            return
        status = liteq.resolve_wait_async(self.store, job_id, result)
        if result == "completed":
            self.finish(m, Status.COMPLETED)
        elif result == "failed":
            m.status = Status.FAILED
        else:
            self.requeue_or_fail(m, mulligan=False)
        assert status is m.status

    @precondition(lambda self: [i for i in self.model if i not in self.locks])
    @rule(data=st.data())
    def lock(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(i for i in self.model if i not in self.locks)))
        holder = self.store.locked(job_id, lease=10_000)
        holder.__enter__()
        with pytest.raises(liteq.JobLocked), self.store.locked(job_id):
            pass
        self.locks[job_id] = holder
        self.model[job_id].locked = True

    @precondition(lambda self: self.locks)
    @rule(data=st.data())
    def unlock(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.locks)))
        self.locks.pop(job_id).__exit__(None, None, None)
        if job_id in self.model:
            self.model[job_id].locked = False

    @precondition(lambda self: [i for i in self.model if i not in self.locks])
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(i for i in self.model if i not in self.locks)))
        self.store.delete(job_id)
        del self.model[job_id]

    @rule(seconds=st.sampled_from([1.0, 10.0, 31.0, 101.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(seconds=st.sampled_from([-3600.0, -30.0]))
    def step_clock_back(self, seconds: float) -> None:
        """A wall clock set back: jobs due at once stay due, in FIFO order. (Forward steps
        are advance_clock's, small enough to keep the model's locks.)"""
        self.clock.advance(seconds)

    @rule()
    def detect_hung_jobs(self) -> None:
        now = self.clock.now
        hung = []
        for m in self.model.values():
            overdue = (
                m.max_runtime is not None
                and m.started_at is not None
                and now > m.started_at + m.max_runtime
            )
            if (
                m.status is Status.RUNNING and m.lease_until is not None and m.lease_until < now
            ) or (m.status is Status.WAIT_ASYNC and overdue):
                hung.append(m)
        running = sum(1 for m in self.model.values() if m.status is Status.RUNNING)
        rescued = self.store.detect_hung_jobs()
        assert sorted(r.id for r in rescued) == sorted(m.id for m in hung)
        for m in hung:
            # An expired lease is a death of the job its worker held, if it held only that
            # one (every claim here is one owner's): at DEFAULT_MAX_CRASHES it fails for good.
            if m.status is Status.RUNNING and running == 1:
                m.crashes += 1
                if m.crashes >= DEFAULT_MAX_CRASHES:
                    m.status, m.lease_until = Status.FAILED, None
                    continue
            self.requeue_or_fail(m, mulligan=True)

    # -- invariants ----------------------------------------------------------------
    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.store.count() == len(self.model)
        for status in Status:
            for queue in QUEUES:
                expected = sum(
                    1 for m in self.model.values() if m.status is status and m.queue == queue
                )
                assert self.store.count(queue=queue, status=status) == expected, (status, queue)
        for mjob in self.store.jobs():
            m = self.model[mjob.id]
            assert (mjob.status, mjob.attempts, mjob.max_attempts) == (
                m.status,
                m.attempts,
                m.max_attempts,
            ), m
            assert mjob.queue == m.queue and mjob.priority == m.priority
            assert mjob.record.crashes == m.crashes, m
        for cid in ("x", "y"):
            held = self.store.get_by_coalesce_id(cid)
            holder = self.holder(cid)
            assert (held.id if held else None) == (holder.id if holder else None)

    @initialize()
    def start_empty(self) -> None:
        assert self.store.count() == 0


def machine_for(kind: str) -> type[StoreMachine]:
    """The state machine on one store kind (each example gets a fresh store and directory)."""

    class Machine(StoreMachine):
        def make_store(self, clock: Clock) -> liteq.stores.BaseStore:
            self._dir = tempfile.TemporaryDirectory()
            return open_store(kind, Path(self._dir.name), clock=clock)

        def teardown(self) -> None:
            super().teardown()
            self._dir.cleanup()

    Machine.__name__ = Machine.__qualname__ = f"{kind.capitalize()}StoreMachine"
    return Machine


# One test per store kind of the shared contract fixture. (PostgreSQL, whose every step is a
# round trip, runs half the examples of the profile: 30 by default, 1,000 in the soak.)
for _kind in STORES:
    _case = machine_for(_kind).TestCase
    if _kind == "postgres":
        _case.settings = settings(_case.settings, max_examples=settings.default.max_examples // 2)
    globals()[f"Test{_kind.capitalize()}StoreModel"] = _case
del _case  # (else collected a second time under this name)
