"""Enqueue options, validation and reading the queue: every store."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import liteq
from liteq import Status
from liteq.codec import MAX_DEPTH, decode, encode_all, how_to_encode
from tests.conftest import Clock
from tests.helpers import encode
from tests.jobs import Noop, Record, WithOptions


def test_enqueue_defaults(store: liteq.stores.BaseStore, clock: Clock) -> None:
    mjob = store.enqueue(Noop(1))
    assert mjob.status is Status.QUEUED
    assert (mjob.queue, mjob.priority, mjob.attempts, mjob.max_attempts) == ("default", 0, 0, 1)
    assert mjob.coalesce_id is None and mjob.max_runtime is None and mjob.delete_on_complete
    assert mjob.created_at == mjob.run_at == datetime.fromtimestamp(clock.now, UTC)
    assert mjob.created_at.tzinfo is not None
    assert mjob.started_at is None and mjob.finished_at is None
    assert mjob.job_type == "tests.jobs.Noop"
    again = store.get(mjob.id)
    assert again.job is not None and again.job.n == 1  # type: ignore[attr-defined]
    assert again.created_at == mjob.created_at


def test_explicit_options_win_over_job_options_over_defaults(store: liteq.stores.BaseStore) -> None:
    from_job = store.enqueue(WithOptions())
    assert (from_job.queue, from_job.priority, from_job.max_attempts) == ("from-job", 7, 4)
    explicit = store.enqueue(WithOptions(), priority=1, queue="q")
    assert (explicit.queue, explicit.priority, explicit.max_attempts) == ("q", 1, 4)


def test_run_at_and_delay(store: liteq.stores.BaseStore, clock: Clock) -> None:
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert store.enqueue(Noop(), run_at=at).run_at == at
    assert store.enqueue(Noop(), run_at=at.timestamp()).run_at == at
    delayed = store.enqueue(Noop(), delay=timedelta(minutes=2))
    assert delayed.run_at.timestamp() == pytest.approx(clock.now + 120)
    assert store.enqueue(Noop(), delay=30).run_at.timestamp() == pytest.approx(clock.now + 30)


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"run_at": datetime(2030, 1, 1)}, ValueError, "timezone-aware"),
        ({"run_at": "tomorrow"}, TypeError, "aware datetime or epoch"),
        ({"run_at": 1.0, "delay": 1.0}, ValueError, "not both"),
        ({"delay": -1}, ValueError, "zero or more"),
        ({"delay": math.inf}, TypeError, "number of seconds"),
        ({"priority": "high"}, TypeError, "priority"),
        ({"priority": True}, TypeError, "priority"),
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"max_runtime": 0}, ValueError, "positive"),
        ({"delete_on_complete": "yes"}, TypeError, "delete_on_complete"),
        ({"coalesce_id": 5}, TypeError, "coalesce_id"),
        ({"queue": 5}, TypeError, "queue"),
        ({"priorty": 1}, TypeError, "unknown enqueue option"),
    ],
)
def test_bad_options_are_clear_errors_and_write_nothing(
    store: liteq.stores.BaseStore, options: dict[str, object], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        store.enqueue(Noop(), **options)  # type: ignore[arg-type]
    assert store.count() == 0


class Unencodable(liteq.Job):
    def __init__(self, value: object) -> None:
        self.value = value

    def run(self, job: liteq.ManagedJob) -> None:
        pass


@pytest.mark.parametrize("value", [datetime.now(UTC), {1, 2}, object(), math.nan, b"bytes"])
def test_unencodable_state_is_a_type_error_before_anything_is_written(
    store: liteq.stores.BaseStore, value: object
) -> None:
    with pytest.raises(TypeError, match=r"attribute 'value' holds a"):
        store.enqueue(Unencodable(value))
    with pytest.raises(TypeError):
        store.enqueue_many([Noop(1), Unencodable(value), Noop(2)])
    assert store.count() == 0


def _circular() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


def _first_refusal(jobs: list[liteq.Job]) -> tuple[type[Exception], str]:
    """The error enqueueing `jobs` one at a time would stop at (their encoding's)."""
    for job in jobs:
        try:
            encode(job)
        except (TypeError, ValueError) as exc:
            return type(exc), str(exc)
    raise AssertionError("every job encodes")


@pytest.mark.parametrize(
    "bad",
    [
        {"n": object()},
        {"n": math.nan},
        {"n": _circular()},
        {"n": functools.reduce(lambda inner, _: [inner], range(MAX_DEPTH), 0)},
        {"n": 1, "run": None},
    ],
    ids=["unencodable", "nan", "circular", "too-deep", "hides-a-method"],
)
def test_a_batch_of_one_class_refuses_a_job_as_one_enqueue_would(
    store: liteq.stores.BaseStore, bad: dict[str, Any]
) -> None:
    # Jobs of one class are encoded together (codec.encode_all): the same error, the
    # first job's in order, as one at a time; nothing written.
    jobs = [Noop(1), Noop.from_state(bad), Noop(2)]
    kind, message = _first_refusal(jobs)
    with pytest.raises(kind) as refused:
        store.enqueue_many(jobs)
    assert str(refused.value) == message
    hides, unencodable = Noop.from_state({"n": 1, "run": None}), Noop(object())
    for order in ([hides, unencodable], [unencodable, hides]):
        kind, message = _first_refusal(order)
        with pytest.raises(kind) as refused:
            store.enqueue_many(order)
        assert str(refused.value) == message
    assert store.count() == 0


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=5))
def test_a_payload_is_exactly_the_json_of_its_state(state: dict[str, Any]) -> None:
    assume(not any(callable(getattr(Noop, key, None)) for key in state))  # (refused: below)
    name, payload = encode(Noop.from_state(state))
    expected = {"type": name, "state": state}
    assert payload == json.dumps(expected, separators=(",", ":"), allow_nan=False)
    assert decode(payload).to_state() == state


@given(st.lists(st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=5), max_size=6))
def test_a_batch_encodes_each_job_as_one_at_a_time(states: list[dict[str, Any]]) -> None:
    assume(not any(callable(getattr(Noop, key, None)) for state in states for key in state))
    jobs = [Noop.from_state(state) for state in states]
    assert encode_all(jobs, how_to_encode(Noop)) == [encode(job)[1] for job in jobs]


@pytest.mark.parametrize("key", ["to_state", "run", "retry_delay"])
def test_a_state_key_that_would_hide_a_method_is_refused(
    store: liteq.stores.BaseStore, key: str
) -> None:
    # Decoded, the job would have the value where its method was: it could never run.
    with pytest.raises(TypeError, match=f"key '{key}' would hide the method {key}"):
        store.enqueue(Noop.from_state({"n": 1, key: None}))
    assert store.count() == 0


def test_after_a_refused_state_the_same_objects_still_encode() -> None:
    inner: dict[str, object] = {"ok": 1, "bad": object()}
    first = Noop()
    first.inner = inner  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="attribute 'inner'"):
        encode(first)
    del inner["bad"]
    second = Noop()
    second.inner = inner  # type: ignore[attr-defined]
    assert encode(second)[1].endswith('"state":{"n":0,"inner":{"ok":1}}}')


def test_only_jobs_can_be_enqueued(store: liteq.stores.BaseStore) -> None:
    with pytest.raises(TypeError, match=r"liteq\.Job"):
        store.enqueue(print)  # type: ignore[arg-type]
    # In a batch, one that is not a job refuses the whole batch, wherever it is.
    with pytest.raises(TypeError, match=r"can only enqueue liteq\.Job instances, not int"):
        store.enqueue_many([Noop(1), Noop(2), 3, Noop(4)])  # type: ignore[list-item]
    assert store.count() == 0


def test_a_redefined_job_class_is_refused(store: liteq.stores.BaseStore) -> None:
    old = Noop(1)
    # As a module reloaded in a long-lived process would: a new class under the same name.
    redefined = type("Noop", (Noop,), {"__module__": Noop.__module__, "__qualname__": "Noop"})
    try:
        with pytest.raises(TypeError, match=r"tests\.jobs\.Noop is not a registered Job class"):
            store.enqueue_many([redefined(), redefined(), old])  # the old one, after the new
        assert store.count() == 0
    finally:
        liteq.job._REGISTRY["tests.jobs.Noop"] = Noop


def test_enqueue_many_in_one_go(store: liteq.stores.BaseStore) -> None:
    mjobs = store.enqueue_many([Noop(i) for i in range(5)], queue="bulk", priority=3)
    assert [m.job.n for m in mjobs] == list(range(5))  # type: ignore[union-attr]
    assert len({m.id for m in mjobs}) == 5
    assert store.count(queue="bulk", status=Status.QUEUED) == 5
    assert all(m.priority == 3 for m in store.jobs(queue="bulk"))


def test_enqueue_many_returns_what_enqueue_would(store: liteq.stores.BaseStore) -> None:
    jobs = [Noop(i) for i in range(3)]
    batch = store.enqueue_many(jobs)
    alone = store.enqueue(Noop(3))
    for mjob, job in zip(batch, jobs, strict=True):
        assert mjob.job is job
        assert mjob.store is store
        assert (mjob.claimed, mjob.lock_token, mjob.decode_error, mjob.unknown_type) == (
            alone.claimed,
            alone.lock_token,
            alone.decode_error,
            alone.unknown_type,
        )
        assert mjob.record == store.get(mjob.id).record
        differs = {"id": alone.id, "payload": alone.record.payload}
        differs["created_at"] = alone.record.created_at
        assert dataclasses.replace(mjob.record, **differs) == alone.record


def test_ids_are_never_reused(store: liteq.stores.BaseStore) -> None:
    first = store.enqueue(Noop())
    first.delete()
    assert store.enqueue(Noop()).id > first.id
    # Batches too, of one job type and of several (a store may insert each in one statement).
    for jobs in ([Noop(0), Noop(1), Noop(2)], [Noop(0), Record(1), Noop(2)]):
        batch = store.enqueue_many(jobs)
        for mjob in batch:
            mjob.delete()
        again = store.enqueue_many(jobs)
        assert min(m.id for m in again) > max(m.id for m in batch)
        assert [m.id for m in again] == list(range(again[0].id, again[0].id + 3))
        stored = [store.get(m.id).job for m in again]
        assert [(type(j), vars(j)) for j in stored] == [(type(j), vars(j)) for j in jobs]


def test_get_missing_raises(store: liteq.stores.BaseStore) -> None:
    with pytest.raises(liteq.JobNotFound, match="no job with id 999"):
        store.get(999)
    with pytest.raises(liteq.JobNotFound):
        store.delete(999)


def test_count_and_jobs_filter_and_stream_oldest_first(store: liteq.stores.BaseStore) -> None:
    ids = [store.enqueue(Noop(i), queue="a" if i % 3 else "b").id for i in range(1203)]
    assert store.count() == 1203
    assert store.count(queue="b") == 401
    assert store.count(status=Status.RUNNING) == 0
    streamed = store.jobs()
    first = next(streamed)
    assert first.id == ids[0]
    assert [m.id for m in streamed] == ids[1:]
    assert [m.job.n for m in store.jobs(queue="b")][:3] == [0, 3, 6]  # type: ignore[union-attr]
    assert list(store.jobs(status=Status.FAILED)) == []
    assert store.count(status="queued") == 1203  # type: ignore[arg-type]


def test_task_decorator(store: liteq.stores.BaseStore) -> None:
    Record.ran.clear()
    task = store.task(queue="tasks", priority=2)(record_task)
    assert task(1, tag="direct") == "1:direct"
    mjob = task.enqueue(5, tag="queued")
    assert (mjob.queue, mjob.priority, mjob.job_type) == ("tasks", 2, f"{__name__}.record_task")
    other = task.enqueue_with(args=(6,), priority=9)
    assert other.priority == 9
    liteq.Worker(store, exit_if_no_jobs=True, jitter=False).start()
    assert Record.ran == ["1:direct", "6:x", "5:queued"]  # direct call, then priority 9 first
    with pytest.raises(TypeError, match="JSON"):
        task.enqueue(datetime.now(UTC))


def record_task(n: object, tag: str = "x") -> str:
    Record.ran.append(f"{n}:{tag}")
    return f"{n}:{tag}"


def test_task_must_be_module_level(store: liteq.stores.BaseStore) -> None:
    def nested() -> None:
        pass

    with pytest.raises(TypeError, match="module-level"):
        store.task(nested)
    with pytest.raises(TypeError, match="a function defined with def at module level"):
        store.task(functools.partial(record_task, 1))


def test_every_store_satisfies_the_store_protocol(store: liteq.stores.BaseStore) -> None:
    assert isinstance(store, liteq.Store)
