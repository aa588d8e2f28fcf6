"""Periodic jobs (`@store.periodic`): slots, catch-up, DST, the registry's refusals, the
slot's job, and one job per slot across real `liteq work` supervisors (SQLite and
PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import liteq
from liteq import periodic
from liteq.status import Status
from liteq.testing import Clock, drain
from liteq.worker.schedule import Scheduler
from tests import periodic_jobs, pg
from tests.conftest import StoreFactory
from tests.helpers import ROOT, liteq_work, wait_until

BERLIN = ZoneInfo("Europe/Berlin")
BADCRON = ("--import", "badcron")


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    """Each test's schedules and calls are its own."""
    before = {p.name for p in periodic.registered()[1]}
    periodic_jobs.CALLS.clear()
    yield
    for p in periodic.registered()[1]:
        if p.name not in before:
            periodic.unregister(p.name)
    periodic_jobs.CALLS.clear()


def _slots(store: liteq.stores.BaseStore) -> list[datetime]:
    return [m.job.call_kwargs()["scheduled_at"] for m in store.jobs()]  # type: ignore[union-attr]


# -- catch-up ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("catch_up", "runs"), [(0, 0), (1, 1), (3, 3)])
def test_after_downtime_the_latest_catch_up_slots_run_in_order_each_once(
    make_store: StoreFactory, catch_up: int, runs: int
) -> None:
    slot = 1_750_000_200  # a slot of every ten minutes
    clock = Clock(slot + 30.5)
    store = make_store(clock=clock)
    store.periodic(every=600, name="c", catch_up=catch_up)(periodic_jobs.at_slot)
    first = Scheduler(store, None)
    assert first.run_due() == 0  # first seen: it starts from now, its last slot not run
    (row,) = store.schedules()
    assert (row.name, row.spec, row.last_slot, row.last_job) == ("c", "every 600s", slot, None)
    clock.advance(600)
    assert first.run_due() == 1  # on time: every catch_up runs it
    drain(store)
    assert [d.timestamp() for d in periodic_jobs.CALLS] == [slot + 600]
    # Stopped for five slots and a half; a restarted worker (and a second one) look.
    clock.advance(5 * 600 + 300)
    again, other = Scheduler(store, None), Scheduler(store, None)
    assert again.run_due() + other.run_due() == runs
    (row,) = store.schedules()
    assert row.last_slot == slot + 6 * 600  # the latest missed, run or skipped
    slots = [int(d.timestamp()) for d in _slots(store)]
    assert slots == [slot + 600 + k * 600 for k in range(6 - runs, 6)]
    assert (row.last_job is None) == (runs == 0)
    drain(store)
    assert len(periodic_jobs.CALLS) == 1 + runs


def test_a_paused_queues_slots_are_skipped_and_recorded(make_store: StoreFactory) -> None:
    clock = Clock(1_749_996_000.5)
    store = make_store(clock=clock)
    store.periodic(every=60, name="p", queue="reports")(periodic_jobs.plain)
    scheduler = Scheduler(store, None)
    scheduler.run_due()
    store.pause("reports")
    clock.advance(60)
    assert scheduler.run_due() == 0 and store.count() == 0
    (row,) = store.schedules()
    assert (row.last_slot, row.last_job) == (1_749_996_060, None)  # skipped, not owed
    store.resume("reports")
    clock.advance(60)
    assert scheduler.run_due() == 1
    (mjob,) = store.jobs()
    assert (mjob.queue, mjob.run_at.timestamp()) == ("reports", 1_749_996_120)


def test_a_worker_schedules_only_its_queues(make_store: StoreFactory) -> None:
    clock = Clock(1_749_996_000.5)
    store = make_store(clock=clock)
    store.periodic(every=60, name="mail", queue="mail")(periodic_jobs.plain)
    scheduler = Scheduler(store, ["other"])
    clock.advance(120)
    assert scheduler.run_due() == 0 and store.schedules() == []
    assert scheduler.wait() == float("inf")


# -- the slot's job -------------------------------------------------------------------------
def test_scheduled_at_is_an_aware_datetime_in_the_zone(make_store: StoreFactory) -> None:
    clock = Clock(datetime(2025, 6, 1, 2, 59, 30, tzinfo=BERLIN))
    store = make_store(clock=clock)
    store.periodic("0 3 * * *", tz="Europe/Berlin", name="sync")(periodic_jobs.at_slot)
    store.periodic("0 3 * * *", tz="Europe/Berlin", name="async")(periodic_jobs.at_slot_async)
    scheduler = Scheduler(store, None)
    scheduler.run_due()
    assert 29 < scheduler.wait() <= 30  # an idle worker wakes for 03:00:00
    clock.advance(30)
    assert scheduler.run_due() == 2
    drain(store)
    plain, (tag, awaited) = sorted(periodic_jobs.CALLS, key=lambda c: isinstance(c, tuple))
    assert tag == "async"
    for when in (plain, awaited):
        assert isinstance(when, datetime) and when.tzinfo is BERLIN
        assert when == datetime(2025, 6, 1, 3, tzinfo=BERLIN)


def test_a_slot_job_retries_like_any_other(make_store: StoreFactory) -> None:
    clock = Clock(1_749_996_000.5)
    store = make_store(clock=clock)
    store.periodic(every=3600, name="r", max_attempts=2)(periodic_jobs.fails_once)
    scheduler = Scheduler(store, None)
    scheduler.run_due()
    clock.advance(3600)
    assert scheduler.run_due() == 1
    drain(store, raise_errors=False)
    (mjob,) = store.jobs()
    assert (mjob.status, mjob.attempts, mjob.max_attempts) == (Status.QUEUED, 1, 2)
    assert "the first attempt fails" in (mjob.error or "")
    clock.advance(60)  # past its backoff
    drain(store)
    assert store.count() == 0  # completed (and deleted, as jobs are by default)
    assert periodic_jobs.CALLS[0] == periodic_jobs.CALLS[1]  # the same slot, twice tried


def test_a_job_instance_is_scheduled_its_run_at_the_slot(make_store: StoreFactory) -> None:
    clock = Clock(1_749_996_000.5)
    store = make_store(clock=clock)
    nightly = store.periodic(every=60, name="report", priority=5)(periodic_jobs.Report("daily"))
    with pytest.raises(TypeError, match="not callable"):
        nightly()
    scheduler = Scheduler(store, None)
    scheduler.run_due()
    clock.advance(60)
    scheduler.run_due()
    (mjob,) = store.jobs()
    assert mjob.priority == 5
    drain(store)
    assert [
        ("daily", datetime.fromtimestamp(1_749_996_060, tz=mjob.run_at.tzinfo))
    ] == periodic_jobs.CALLS


def test_the_decorated_function_stays_callable() -> None:
    store = liteq.MemoryStore()
    at = datetime(2025, 1, 1, tzinfo=BERLIN)
    store.periodic(every=60, name="f")(periodic_jobs.at_slot)(at)
    assert [at] == periodic_jobs.CALLS


# -- DST ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "start", "expected"),
    [
        # Spring (30 March 2025: 02:00 becomes 03:00): the skipped 02:30 runs at 03:00.
        (
            "30 2 * * *",
            datetime(2025, 3, 29, 12),
            ["2025-03-30T03:00:00+02:00", "2025-03-31T02:30:00+02:00"],
        ),
        # Autumn (26 October 2025: 03:00 becomes 02:00 again): 02:30 runs once, not twice.
        (
            "30 2 * * *",
            datetime(2025, 10, 25, 12),
            ["2025-10-26T02:30:00+02:00", "2025-10-27T02:30:00+01:00"],
        ),
        # Hourly jobs follow real time: the repeated hour runs twice (25 that day), the
        # skipped one never (23).
        ("0 * * * *", datetime(2025, 10, 25, 22, 30), 25),
        ("0 * * * *", datetime(2025, 3, 29, 22, 30), 23),
    ],
)
def test_slots_follow_the_zones_wall_clock_across_dst(
    spec: str, start: datetime, expected: list[str] | int
) -> None:
    clock = Clock(start.replace(tzinfo=BERLIN))
    store = liteq.MemoryStore(clock=clock)
    store.periodic(spec, tz="Europe/Berlin", name="dst")(periodic_jobs.at_slot)
    scheduler = Scheduler(store, None)
    end = clock() + 2 * 86400
    while clock() < end:
        scheduler.run_due()
        clock.advance(min(max(scheduler.wait(), 1), 900))  # as an idle worker wakes
    drain(store)
    runs = periodic_jobs.CALLS
    assert len({d.timestamp() for d in runs}) == len(runs)  # each slot once
    if isinstance(expected, int):  # the slots of the day of the change
        assert len([d for d in runs if d.day == start.day + 1]) == expected
    else:
        assert [d.isoformat() for d in runs] == expected


# -- refused at import ---------------------------------------------------------------------
def test_bad_schedules_are_refused_when_decorated() -> None:
    store = liteq.MemoryStore()
    refusals: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"cron": "61 * * * *"}, ValueError, "bad cron string"),
        ({"cron": "* * *"}, ValueError, "give five"),
        ({"cron": "0 0 * * * *"}, ValueError, "give five"),
        ({"cron": "0 3 * * *", "tz": "Mars/Olympus"}, ValueError, "unknown time zone"),
        ({"every": 0}, ValueError, "at least 1"),
        ({"every": 1.5}, ValueError, "whole number"),
        ({"every": timedelta(milliseconds=10)}, ValueError, "at least 1"),
        ({"every": "5"}, TypeError, "seconds"),
        ({}, TypeError, "one of them"),
        ({"cron": "* * * * *", "every": 5}, TypeError, "one of them"),
        ({"every": 5, "catch_up": -1}, ValueError, "catch_up"),
        ({"every": 5, "queue": ""}, ValueError, "queue"),
    ]
    for kwargs, error, match in refusals:
        with pytest.raises(error, match=match):
            store.periodic(**kwargs)(periodic_jobs.plain)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Job instance"):
        store.periodic(every=5)(periodic_jobs.Report)
    assert periodic.registered()[1] == [] or all(
        p.name != "tests.periodic_jobs.plain" for p in periodic.registered()[1]
    )


def test_a_name_used_twice_is_refused_the_same_definition_again_is_not() -> None:
    store = liteq.MemoryStore()
    store.periodic("0 3 * * *", name="nightly")(periodic_jobs.plain)
    store.periodic("0 3 * * *", name="nightly")(periodic_jobs.plain)  # a module imported twice
    with pytest.raises(ValueError, match="'nightly' is used twice"):
        store.periodic("0 4 * * *", name="nightly")(periodic_jobs.plain)
    with pytest.raises(ValueError, match="used twice"):
        store.periodic("0 3 * * *", name="nightly")(periodic_jobs.at_slot)


def test_a_cron_string_without_cronsim_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cronsim", None)
    store = liteq.MemoryStore()
    with pytest.raises(ImportError, match=r"pip install 'liteq-jobs\[cron\]'"):
        store.periodic("0 3 * * *")(periodic_jobs.plain)
    store.periodic(every=60, name="needs-nothing")(periodic_jobs.plain)


def test_a_bad_schedule_stops_liteq_work_at_once(tmp_path: Path) -> None:
    (tmp_path / "badcron.py").write_text(
        "import liteq\nstore = liteq.connect()\n"
        "@store.periodic('0 25 * * *')\ndef f() -> None: ...\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "liteq", "work", "--db", str(tmp_path / "q.sqlite"), *BADCRON],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode != 0
    assert "bad cron string '0 25 * * *'" in done.stderr


# -- operating it ---------------------------------------------------------------------------
def test_liteq_schedules_json_and_table(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    clock = Clock(time.time() - 300)
    store = liteq.SQLiteStore(path, clock=clock)
    p = store.periodic("*/5 * * * *", tz="Europe/Berlin", name="five")(periodic_jobs.plain)
    store.declare_schedules([p])
    clock.advance(300)
    (mjob,) = store.run_schedule(p)
    store.close()
    command = [sys.executable, "-m", "liteq", "schedules", "--db", str(path)]
    done = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, timeout=30, check=True
    )
    (row,) = json.loads(done.stdout)["schedules"]
    assert row["name"] == "five" and row["spec"] == "*/5 * * * *" and row["tz"] == "Europe/Berlin"
    assert (row["queue"], row["last_job"], row["last_status"]) == ("default", mjob.id, "queued")
    last = datetime.fromisoformat(row["last_slot"])
    assert last.tzinfo is not None and last.minute % 5 == 0
    assert datetime.fromisoformat(row["next_slot"]) > last and row["stale"] is False
    shown = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    assert "five" in shown.stdout and "*/5 * * * *" in shown.stdout and "queued" in shown.stdout


def test_the_dashboard_shows_the_schedules(tmp_path: Path) -> None:
    from tests.test_dashboard import Server

    path = tmp_path / "q.sqlite"
    store = liteq.SQLiteStore(path)
    p = store.periodic(every=3600, name="hourly-<b>")(periodic_jobs.plain)
    store.declare_schedules([p])
    store.close()
    server = Server(str(path))
    try:
        status, _, body = server.request("GET", "/schedules")
        assert status == 200
        assert "hourly-&lt;b&gt;" in body and "every 3600s" in body
        assert 'href="/schedules"' in server.request("GET", "/")[2]
    finally:
        server.stop()


# -- one job per slot, real processes -------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "q.sqlite")
        return
    pg.dsn_or_skip()
    schema = pg.new_schema()
    try:
        yield pg.url(schema)
    finally:
        pg.drop_schema(schema)


@pytest.mark.timeout(90)
def test_two_supervisors_run_every_slot_exactly_once(queue_url: str, tmp_path: Path) -> None:
    trace = tmp_path / "slots.trace"
    env = {**os.environ, "LITEQ_TEST_TRACE": str(trace)}
    args = ("--import", "tests.periodic_app", "--processes", "2")
    supervisors = [
        liteq_work(queue_url, *args, env=env, stderr=subprocess.DEVNULL) for _ in range(2)
    ]
    try:
        store = liteq.connect(queue_url)
        wait_until(lambda: len(store.workers()) == 4, 30, "four workers to register")
        time.sleep(5)
    finally:
        for supervisor in supervisors:
            supervisor.send_signal(signal.SIGTERM)
        assert [s.wait(30) for s in supervisors] == [0, 0]
    runs = [line.split() for line in trace.read_text().splitlines()]
    slots = sorted(int(slot) for slot, _ in runs)
    assert len(slots) == len(set(slots)), "a slot ran twice"
    assert slots == list(range(slots[0], slots[-1] + 1)), "a slot was skipped"
    assert len(slots) >= 4
    (row,) = store.schedules()
    assert (row.name, row.spec) == ("tick", "every 1s") and row.last_slot >= slots[-1]
    store.close()
