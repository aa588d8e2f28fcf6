"""Bad values: every store refuses the same ones with the same clear error, writing nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

import liteq
from liteq.codec import MAX_DEPTH
from liteq.options import LATEST
from tests.conftest import OWNER
from tests.jobs import Noop, Pickled

BAD_OPTIONS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"delay": 1e300}, ValueError, "9999-12-31"),
    ({"run_at": -1e12}, ValueError, "1970-01-01"),
    ({"run_at": 1e300}, ValueError, "9999-12-31"),
    ({"run_at": datetime(1, 1, 1, tzinfo=UTC)}, ValueError, "1970-01-01"),
    ({"priority": 2**70}, ValueError, "64 bits"),
    ({"priority": -(2**63) - 1}, ValueError, "64 bits"),
    ({"max_attempts": 2**63}, ValueError, "64 bits"),
    ({"max_runtime": 1e300}, ValueError, "max_runtime must be at most"),
    ({"queue": "mail\ud800"}, ValueError, "lone surrogate"),
    ({"coalesce_id": "nightly\udfff"}, ValueError, "lone surrogate"),
    ({"queue": "mail\x00"}, ValueError, "NUL character"),
    ({"coalesce_id": "a\x00b"}, ValueError, "NUL character"),
    ({"queue": ""}, ValueError, "not the empty string"),
    ({"queue": "  "}, ValueError, "not the empty string or spaces"),
    ({"queue": b"mail"}, TypeError, "queue must be a string"),
]


@pytest.mark.parametrize(("options", "error", "words"), BAD_OPTIONS)
def test_a_bad_option_is_refused_alike_by_every_store(
    store: liteq.stores.BaseStore, options: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        store.enqueue(Noop(), **options)
    with pytest.raises(error, match=words):
        store.enqueue_many([Noop(1), Noop(2)], **options)
    assert store.count() == 0


def test_the_extremes_of_every_range_are_stored_and_read_back(
    store: liteq.stores.BaseStore,
) -> None:
    top = store.enqueue(Noop(1), priority=2**63 - 1, max_attempts=2**63 - 1)
    bottom = store.enqueue(Noop(2), priority=-(2**63), run_at=0)
    late = store.enqueue(Noop(3), run_at=LATEST, queue="\U0001f600 ☃")
    assert store.get(top.id).priority == 2**63 - 1
    assert store.get(bottom.id).run_at == datetime(1970, 1, 1, tzinfo=UTC)
    assert store.get(late.id).run_at.year == 9999
    assert store.count(queue="\U0001f600 ☃") == 1
    claimed = store.claim_many(OWNER, limit=3)
    assert [m.id for m in claimed] == [top.id, bottom.id]  # the late one is not due


def test_an_error_message_no_store_could_hold_is_recorded_readably(
    store: liteq.stores.BaseStore,
) -> None:
    # An exception about a file name decoded with surrogateescape, or holding a NUL,
    # used to make the worker's write of the failure itself fail.
    store.enqueue(Noop(1))
    (mjob,) = store.claim_many(OWNER)
    bad = "OSError: no such file 'caf\udce9' (\x00)"
    assert store.fail(mjob, bad, f"Traceback\n{bad}", retry=False) is liteq.Status.FAILED
    failed = store.get(mjob.id)
    assert failed.error == "OSError: no such file 'caf\\udce9' (\\x00)"
    assert failed.traceback is not None and "caf\\udce9" in failed.traceback


@pytest.mark.parametrize(
    ("job_id", "error"),
    [
        *[("1", TypeError), (1.0, TypeError), (True, TypeError), (None, TypeError)],
        *[(2**64, ValueError), (2**63, ValueError), (0, ValueError), (-1, ValueError)],
    ],
)
def test_a_bad_job_id_is_refused_alike_by_every_store(
    store: liteq.stores.BaseStore, job_id: Any, error: type[Exception]
) -> None:
    store.enqueue(Noop())
    with pytest.raises(error, match="job id"):
        store.get(job_id)
    with pytest.raises(error, match="job id"):
        store.delete(job_id)
    with pytest.raises(error, match="job id"), store.locked(job_id):
        pass
    with pytest.raises(error, match="job id"):
        liteq.resolve_wait_async(store, job_id, {})
    assert store.count() == 1


def test_bad_filters_are_refused_alike_by_every_store(store: liteq.stores.BaseStore) -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        store.count(queue="\ud800")
    with pytest.raises(ValueError, match="lone surrogate"):
        list(store.jobs(queue="\ud800"))
    with pytest.raises(ValueError, match="lone surrogate"):
        store.get_by_coalesce_id("\ud800")
    with pytest.raises(TypeError, match="coalesce_id must be a string"):
        store.get_by_coalesce_id(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="queues must be a list"):
        liteq.Worker(store, queues="mail")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lone surrogate"):
        liteq.Worker(store, queues=["\ud800"])


def nested(levels: int) -> object:
    """A list `levels` deep."""
    value: object = 0
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 995, 5000])
def test_a_state_nested_too_deeply_is_a_value_error_at_enqueue(
    store: liteq.stores.BaseStore, depth: int
) -> None:
    # The state is a dict (level 1) holding the list (levels 2 and on).
    with pytest.raises(ValueError, match=f"more than {MAX_DEPTH} levels"):
        store.enqueue(Noop(nested(depth - 1)))
    if depth > 1000:  # pickle (opted into) has no limit of liteq's, only Python's own
        with pytest.raises(ValueError, match=f"more than {MAX_DEPTH} levels"):
            store.enqueue(Pickled(nested(depth - 1)))
    assert store.count() == 0


def test_a_state_at_the_depth_limit_is_stored_and_runs(store: liteq.stores.BaseStore) -> None:
    deep = nested(MAX_DEPTH - 1)
    mjob = store.enqueue(Noop(deep))
    assert store.get(mjob.id).job.n == deep  # type: ignore[union-attr]
    assert liteq.Worker(store, exit_if_no_jobs=True, jitter=False).start() == 0
    assert store.count() == 0
