"""Autoscaling: the policy's properties (Hypothesis), the driver seam with a test double,
`liteq work --autoscale/--pool` with real processes, and its flags' mistakes."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import apsw
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import liteq
from liteq import Status, admin
from liteq.cli import main
from liteq.stores.contract import PoolInfo
from liteq.stores.sqlite.schema import SCHEMA_VERSION
from liteq.worker.autoscale import Autoscaler, Changes, Limits, Pool, Sample, cap, decide
from tests import pg
from tests.helpers import ROOT, liteq_work, wait_until
from tests.jobs import Hog, Sleeps, Traced
from tests.test_dashboard import Server
from tests.test_supervisor import Work, db, work  # noqa: F401 - fixtures
from tests.traces import runs_by_job

COOL = {"LITEQ_AUTOSCALE_COOLDOWN": "1"}


# -- the policy -----------------------------------------------------------------------
class FakeDriver:
    """A test double of a `Scalable` driver, as one for a container platform would be: it
    records what it is asked and reaches it at once."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.asked: list[int] = []

    def current(self) -> int:
        return self.n

    def scale_to(self, n: int) -> None:
        self.asked.append(n)
        self.n = n


limits_st = st.builds(
    lambda low, extra, target, cool: Limits(low, max(1, low + extra), target, cool),
    st.integers(0, 4),
    st.integers(0, 6),
    st.floats(0.5, 10),
    st.floats(0, 30),
)
load_st = st.lists(
    st.tuples(st.integers(0, 500), st.one_of(st.none(), st.floats(0, 100))), min_size=1
)


@settings(max_examples=200, deadline=None)
@given(limits_st, load_st, st.integers(0, 12))
def test_policy_stays_within_limits_and_steps_down_once_per_cooldown(
    limits: Limits, load: list[tuple[int, float | None]], start: int
) -> None:
    driver = FakeDriver(start)
    scaler = Autoscaler([Pool("p", limits, driver)])
    downs: list[float] = []
    now = 0.0
    for due, wait in load * 3:
        before = driver.n
        scaler.tick({"p": Sample(now, due, wait if due else None, busy=0)}, now)
        if before >= limits.minimum and before <= limits.maximum:
            assert limits.minimum <= driver.n <= limits.maximum
            if driver.n < before:
                assert driver.n == before - 1  # one step down at a time
                downs.append(now)
        now += 1.0
    assert limits.minimum <= driver.n <= limits.maximum
    for a, b in itertools.pairwise(downs):
        assert b - a >= limits.cooldown


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(1, 50))
def test_policy_converges_on_steady_load(high: int, due: int) -> None:
    # A steady backlog whose oldest job waits past the target: it grows to the maximum and
    # stays there.
    limits = Limits(1, high, 1.0, 5.0)
    driver = FakeDriver(1)
    scaler = Autoscaler([Pool("p", limits, driver)])
    for t in range(40):
        scaler.tick({"p": Sample(float(t), due, 3.0, busy=driver.n)}, float(t))
    assert driver.n == high
    settled = list(driver.asked)
    for t in range(40, 80):
        scaler.tick({"p": Sample(float(t), due, 3.0, busy=driver.n)}, float(t))
    assert driver.asked == settled


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3), st.integers(1, 8), st.floats(0, 10))
def test_policy_scales_to_its_minimum_when_idle(low: int, extra: int, cool: float) -> None:
    limits = Limits(low, low + extra, 2.0, cool)
    driver = FakeDriver(low + extra)
    scaler = Autoscaler([Pool("p", limits, driver)])
    for t in range(int((extra + 2) * (cool + 2)) + 2):
        scaler.tick({"p": Sample(float(t), 0, None)}, float(t))
    assert driver.n == low  # zero, when the minimum is


def test_policy_reasons() -> None:
    limits = Limits(0, 8, 5.0, 60.0)
    assert decide([Sample(0, 3, 1.0)], 0, limits, Changes(), 0) == decide(
        [Sample(0, 3, 1.0)], 0, limits, Changes(), 0
    )
    assert decide([Sample(0, 3, 1.0)], 0, limits, Changes(), 0).count == 1
    grow = decide([Sample(0, 30, 12.3)], 2, limits, Changes(), 0)
    assert (grow.count, grow.reason) == (8, "oldest due waited 12.3 s")  # (GROWTH times)
    assert decide([Sample(0, 30, 12.3)], 1, limits, Changes(), 0).count == 4
    # 100 due at 2/s take 50 s: more than the 5 s target, so grow (needed: 10, at most 8).
    fast = decide([Sample(0, 100, 0.1, rate=2.0)], 2, limits, Changes(), 0)
    assert fast.count == 8 and "100 due" in fast.reason
    # 12 due at 2/s take 6 s: 3 workers clear them within 5 s.
    assert decide([Sample(0, 12, 0.1, rate=2.0)], 2, limits, Changes(), 0).count == 3
    # Just grown: it waits for the new workers to settle first.
    assert decide([Sample(0, 30, 12.3)], 2, limits, Changes(up=-0.5), 0).count == 2


def test_cap_holds_the_sum_and_memory() -> None:
    assert cap({"a": 4, "b": 4}, {"a": 1, "b": 1}, 3) == {"a": 2, "b": 1}
    assert cap({"a": 4, "b": 0}, {"a": 1, "b": 2}, 3) == {"a": 3, "b": 0}
    assert cap({"a": 4}, {"a": 1}, None, 150, {"a": 100}) == {"a": 2}
    assert cap({"a": 4}, {"a": 3}, None, 99, {"a": 100}) == {"a": 3}
    assert cap({"a": 4}, {"a": 3}, None, -5, {"a": 100}) == {"a": 3}
    # Each pool's new workers cost what its own workers use: the small pool still grows
    # where the big one cannot, and memory granted to one is gone for the next.
    assert cap(
        {"big": 3, "small": 3}, {"big": 1, "small": 1}, None, 250, {"big": 300, "small": 50}
    ) == {
        "big": 1,
        "small": 3,
    }
    assert cap({"a": 3, "b": 3}, {"a": 1, "b": 1}, None, 250, {"a": 200, "b": 20}) == {
        "a": 2,
        "b": 3,
    }


# -- real processes ---------------------------------------------------------------------
def count(w: Work) -> int:
    return len(w.children())


@pytest.mark.slow
def test_ramp_grows_drains_once_each_and_shrinks_back(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    w = work("--autoscale", "1:4", "--target-wait", "0.5", env=COOL)
    w.wait_for_workers(1)
    ids = [j.id for j in store.enqueue_many([Traced(str(trace), 0.1) for _ in range(200)])]
    started = time.monotonic()
    wait_until(lambda: count(w) == 4, timeout=8, what="4 workers")
    grew_in = time.monotonic() - started
    wait_until(lambda: store.count() == 0, timeout=20, what="drained")
    wait_until(lambda: count(w) == 1, timeout=10, what="back to 1 worker")
    assert w.stop() == 0
    runs = runs_by_job(trace)
    assert sorted(runs) == sorted(ids)
    assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values())
    log = w.log()
    assert re.search(r"all: \d -> 4, oldest due waited \d+\.\d s", log), log
    assert "all: 2 -> 1, idle for 1 s" in log
    assert "scaled down" in log and "starting a new one" not in log
    assert grew_in < 8


@pytest.mark.slow
def test_pool_from_zero_wakes_on_the_first_job_and_returns_to_zero(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    w = work("--pool", "default=0:2", env=COOL)
    wait_until(lambda: "autoscaling default 0:2" in w.log(), timeout=10, what="start")
    time.sleep(0.5)
    assert count(w) == 0
    store.enqueue(Traced(str(trace), 0.0))
    enqueued = time.monotonic()
    wait_until(lambda: store.count() == 0, timeout=5, what="done")
    assert time.monotonic() - enqueued < 3.0
    wait_until(lambda: count(w) == 0, timeout=8, what="back to zero")
    assert w.stop() == 0


@pytest.mark.slow
def test_max_processes_caps_the_sum_of_pools(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    ids = {
        queue: [j.id for j in store.enqueue_many([Traced(str(trace), 0.1)] * 40, queue=queue)]
        for queue in ("a", "b")
    }
    w = work("--pool", "a=1:4", "--pool", "b=1:4", "--max-processes", "3", "--target-wait", "0.3")
    most = 0
    deadline = time.monotonic() + 20
    while store.count() and time.monotonic() < deadline:
        most = max(most, count(w))
        time.sleep(0.02)
    assert store.count() == 0
    assert most == 3
    assert w.stop() == 0
    # Each pool's workers served only its queue.
    runs = runs_by_job(trace)
    pids = {q: {run["pid"] for i in ids[q] for run in runs[i]} for q in ids}
    assert not pids["a"] & pids["b"]


# -- the flags' mistakes ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--autoscale", "1:4", "--processes", "2"], "not with --autoscale"),
        (["--autoscale", "4:1"], "expected MIN:MAX with 0 <= MIN <= MAX"),
        (["--autoscale", "0:0"], "expected MIN:MAX with 0 <= MIN <= MAX"),
        (["--autoscale", "four"], "expected MIN:MAX"),
        (["--pool", "mail"], "expected QUEUES=MIN:MAX"),
        (["--pool", "mail=1:2", "--pool", "mail,x=0:1"], "'mail' is in two --pool"),
        (["--autoscale", "1:2", "--pool", "mail=1:2"], "use --pool for each"),
        (["--max-processes", "3"], "--max-processes needs --autoscale or --pool"),
        (["--pool", "a=2:4", "--pool", "b=2:4", "--max-processes", "3"], "below the pools'"),
        (["--autoscale", "1:2", "--burst"], "not with autoscaling"),
        (["--pool", "m\udcffil=1:2"], "a queue name must be valid Unicode"),
        (["--pool", "mail=1:2", "--pool", "a,\udcff=0:1"], "a queue name must be valid"),
    ],
)
def test_autoscale_flag_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    argv = ["work", "--db", str(tmp_path / "q.sqlite"), "--import", "tests.jobs", *args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    assert words in err
    assert not (tmp_path / "q.sqlite").exists()


def test_no_orphans_after_stop(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    w = work("--autoscale", "2:3")
    pids = w.wait_for_workers(2)
    assert w.stop() == 0
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


@pytest.mark.slow
def test_scaling_down_under_a_trickle_loses_nothing_and_runs_nothing_twice(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    w = work("--autoscale", "1:4", "--target-wait", "0.3", env=COOL)
    ids = [j.id for j in store.enqueue_many([Traced(str(trace), 0.1) for _ in range(80)])]
    wait_until(lambda: count(w) == 4, timeout=8, what="4 workers")
    # Then a trickle the pool outgrows: it shrinks while jobs still arrive and run.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ids.append(store.enqueue(Traced(str(trace), 0.05)).id)
        time.sleep(0.1)
    wait_until(lambda: store.count() == 0, timeout=10, what="drained")
    assert w.stop() == 0
    assert "scaled down" in w.log()
    runs = runs_by_job(trace)
    assert sorted(runs) == sorted(ids)
    assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values()), runs


@pytest.mark.slow
def test_a_pool_grows_only_while_memory_holds_its_own_workers(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    # LITEQ_AUTOSCALE_RESERVE keeps all but about `big`/2 of the host's available memory
    # out of the autoscaler's reach once a worker of pool "big" holds `big`: a new "big"
    # worker (the size of its pool's) no longer fits, a new "small" one (theirs) still does,
    # with hundreds of MiB to spare either way for what other processes do meanwhile.
    # (Before, every pool was measured by the largest worker of all, and no reserve could
    # be set but --guarantee-memory, which also stops workers before each job.)
    big = 800 << 20
    store = liteq.SQLiteStore(db)
    reserve = psutil.virtual_memory().available - big - big // 2
    w = work(
        "--pool",
        "big=1:3",
        "--pool",
        "small=1:3",
        "--target-wait",
        "0.2",
        env={"LITEQ_AUTOSCALE_RESERVE": str(reserve)},
    )
    w.wait_for_workers(2)
    store.enqueue(Hog(big >> 20), queue="big")
    wait_until(lambda: store.count() == 0, timeout=10, what="the hog to run")
    store.enqueue_many([Sleeps(0.2)] * 8, queue="big")
    store.enqueue_many([Sleeps(0.2)] * 8, queue="small")
    wait_until(lambda: store.count() == 0, timeout=20, what="drained")
    log = w.log()
    assert "big: held at 1 by memory" in log, log
    assert not re.search(r"big: 1 -> ", log), log
    assert re.search(r"small: \d -> 3", log), log
    assert w.stop() == 0


def running(cmdline: list[str]) -> list[psutil.Process]:
    """Processes running this command line: a supervisor's forked workers, even once it is
    gone (its own pid is gone too, or a zombie until reaped)."""
    found = []
    for other in psutil.process_iter(["cmdline", "status"]):
        if other.info["cmdline"] == cmdline and other.info["status"] != "zombie":
            found.append(other)
    return found


@pytest.mark.slow
def test_a_supervisor_killed_while_scaling_leaves_no_orphan_and_no_job_twice(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    w = work("--autoscale", "1:4", "--target-wait", "0.2", env=COOL)
    w.wait_for_workers(1)
    cmdline = psutil.Process(w.proc.pid).cmdline()
    ids = [j.id for j in store.enqueue_many([Traced(str(trace), 0.1) for _ in range(40)])]
    # Killed just after a step up: its new workers are forking and importing.
    wait_until(lambda: re.search(r"all: 1 -> \d", w.log()) is not None, 10, "a step up")
    os.kill(w.proc.pid, signal.SIGKILL)
    assert w.proc.wait(10) == -signal.SIGKILL
    assert admin.autoscaled_pools(store) == []  # (its rows stay a while: its pid is dead)
    wait_until(lambda: not running(cmdline), 10, "every worker to exit")
    assert store.count(status=Status.RUNNING) == 0  # each finished its job before it left
    # A new supervisor runs what is left.
    again = work("--processes", "2")
    wait_until(lambda: store.count() == 0, 30, "drained")
    assert again.stop() == 0
    runs = runs_by_job(trace)
    assert sorted(runs) == sorted(ids)
    assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values()), runs


@pytest.mark.slow
def test_a_rolling_restart_while_autoscaling_restarts_all_and_loses_nothing(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
) -> None:
    trace = db.with_suffix(".trace")
    store = liteq.SQLiteStore(db)
    w = work("--autoscale", "1:3", "--target-wait", "0.2", env=COOL)
    w.wait_for_workers(1)
    ids = [j.id for j in store.enqueue_many([Traced(str(trace), 0.1) for _ in range(60)])]
    wait_until(lambda: count(w) == 3, 10, "3 workers")
    before = set(w.children())
    w.signal(signal.SIGHUP)
    wait_until(lambda: "rolling restart done" in w.log(), 20, "the roll")
    assert not before & set(w.children())  # every worker of before was replaced
    wait_until(lambda: store.count() == 0, 20, "drained")
    # Autoscaling goes on after the roll: idle, the pool gives its workers back.
    wait_until(lambda: count(w) == 1, 10, "back to 1 worker")
    assert w.stop() == 0
    runs = runs_by_job(trace)
    assert sorted(runs) == sorted(ids)
    assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values()), runs


@pytest.mark.slow
def test_autoscaling_on_postgresql(tmp_path: Path) -> None:
    # Two pools on one PostgreSQL queue: one wakes from zero, the other grows, each job
    # runs once, and both go back to their minimum.
    pg.dsn_or_skip()
    schema = pg.new_schema()
    url = pg.url(schema)
    log = tmp_path / "work.log"
    proc = None
    try:
        store = liteq.connect(url)
        trace = tmp_path / "trace"
        ids = [j.id for j in store.enqueue_many([Traced(str(trace), 0.1)] * 24, queue="b")]
        with log.open("w") as out:
            proc = liteq_work(
                url,
                *["--wakeup-every", "0.5", "--pool", "a=0:2", "--pool", "b=1:3"],
                *["--target-wait", "0.2"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **COOL},
            )
        wait_until(lambda: re.search(r"b: \d -> 3", log.read_text()) is not None, 15, "b at 3")
        ids.append(store.enqueue(Traced(str(trace), 0.0), queue="a").id)
        wait_until(lambda: store.count() == 0, 30, "drained")
        wait_until(lambda: "b: 2 -> 1, idle" in log.read_text(), 15, "b back to 1")
        wait_until(lambda: "a: 1 -> 0, idle" in log.read_text(), 15, "a back to 0")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        text = log.read_text()
        assert "a: 0 -> 1, 1 due, none running" in text, text
        runs = runs_by_job(trace)
        assert sorted(runs) == sorted(ids)
        assert all(len(r) == 1 and r[0]["end"] is not None for r in runs.values()), runs
        store.close()
    finally:
        if proc is not None and proc.poll() is None:
            for child in psutil.Process(proc.pid).children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
            proc.kill()
            proc.wait(10)
        pg.drop_schema(schema)


def test_a_version_11_file_gets_the_pools_table(tmp_path: Path) -> None:
    path = tmp_path / "v11.sqlite"
    conn = apsw.Connection(str(path))
    for _ in conn.execute((ROOT / "tests" / "schema_v11.sql").read_text()):
        pass
    conn.close()
    store = liteq.SQLiteStore(path)
    store.report_pools("h/1/1", [PoolInfo("", "all", "h", 1, 2, 1, 4, 5.0)])
    assert [(p.name, p.processes) for p in store.pools()] == [("all", 2)]
    store.close()
    conn = apsw.Connection(str(path))
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


@pytest.mark.slow
def test_status_the_dashboard_and_metrics_show_each_pool(
    db: Path,  # noqa: F811
    work: Callable[..., Work],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = liteq.SQLiteStore(db)
    w = work("--pool", "mail=1:3", "--pool", "default=0:2", "--target-wait", "0.3", env=COOL)
    w.wait_for_workers(1)
    store.enqueue_many([Sleeps(0.2)] * 20, queue="mail")

    def status() -> dict[str, dict[str, object]]:
        assert main(["status", "--db", str(db), "--json"]) == 0
        return {p["pool"]: p for p in json.loads(capsys.readouterr().out)["pools"]}

    wait_until(lambda: status().get("mail", {}).get("last_decision") is not None, 10, "a step")
    pools = status()
    mail, default = pools["mail"], pools["default"]
    assert (mail["min"], mail["max"], mail["target_wait"]) == (1, 3, 0.3)
    assert re.fullmatch(r"mail: 1 -> [23], oldest due waited \d+\.\d s", str(mail["last_decision"]))
    assert mail["processes"] in (2, 3)
    assert str(mail["decided_at"]).endswith("Z") or "+00:00" in str(mail["decided_at"])
    assert (default["processes"], default["last_decision"]) == (0, None)
    assert main(["status", "--db", str(db)]) == 0
    text = capsys.readouterr().out
    assert "2 autoscaled pools" in text
    assert re.search(r"mail +\d +1:3 +0\.3 s +\S+ ago: mail: \d -> \d", text), text
    server = Server(str(db))
    try:
        _, _, page = server.request("GET", "/")
        assert 'id="pools"' in page
        assert re.search(r"mail: \d -&gt; \d, oldest due waited", page), page
        _, _, metrics = server.request("GET", "/metrics")
    finally:
        server.stop()
    supervisor = f'supervisor="{mail["host"]}/{w.proc.pid}"'
    assert re.search(rf'liteq_pool_processes{{pool="mail",{supervisor}}} [23]\n', metrics)
    assert f'liteq_pool_max_processes{{pool="default",{supervisor}}} 2\n' in metrics
    assert f'liteq_pool_target_wait_seconds{{pool="mail",{supervisor}}} 0.3\n' in metrics
    assert re.search(
        rf'liteq_pool_last_decision_timestamp_seconds{{pool="mail",{supervisor}}} ', metrics
    )
    assert w.stop() == 0
    assert status() == {}  # a supervisor that stops takes its pools with it
