"""Results and dependencies with real `liteq work` processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import liteq
from liteq.status import Status
from tests.helpers import liteq_work, wait_until
from tests.result_jobs import Breaks, Step
from tests.test_coroutine_workers import new_queue

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "postgres"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with new_queue(request.param, tmp_path) as url:
        yield url


@contextlib.contextmanager
def workers(url: str, directory: Path, count: int = 2) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` `liteq work` processes on `url`, stopped (TERM, then KILL) at the end."""
    procs = []
    logs = []
    for i in range(count):
        log = (directory / f"work{i}.log").open("w")
        logs.append(log)
        procs.append(
            liteq_work(
                url,
                "--import",
                "tests.result_jobs",
                "--wakeup-every",
                "5",
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def test_a_result_is_read_from_another_process_while_a_worker_runs_it(
    queue: str, tmp_path: Path
) -> None:
    store = liteq.connect(queue)
    try:
        with workers(queue, tmp_path, 1):
            mjob = store.enqueue(Step("report", seconds=0.5), keep_result=True)
            began = time.monotonic()
            with pytest.raises(liteq.ResultNotReady):
                mjob.result(timeout=0.2)  # (it runs for half a second)
            assert mjob.result(timeout=20) == {"name": "report", "before": {}}
            # Woken by the completion, not by a poll of the row once a second.
            assert time.monotonic() - began < 5
            failed = store.enqueue(Breaks(), keep_result=True)
            with pytest.raises(liteq.JobFailed, match="broken on purpose"):
                failed.result(timeout=20)
    finally:
        store.close()


def test_a_chain_and_a_fan_in_run_in_order_once_each_with_two_workers(
    queue: str, tmp_path: Path
) -> None:
    trace = str(tmp_path / "trace")
    store = liteq.connect(queue)
    try:
        a = store.enqueue(Step("a", trace, 0.2), keep_result=True)
        b = store.enqueue(Step("b", trace, 0.1), keep_result=True, after=[a])
        c = store.enqueue(Step("c", trace), keep_result=True, after=[b])
        x = store.enqueue(Step("x", trace, 0.3), keep_result=True)
        fan = store.enqueue(Step("fan", trace), keep_result=True, after=[x, a])
        bad = store.enqueue(Breaks(trace))
        never = store.enqueue(Step("never", trace), after=[bad])
        never2 = store.enqueue(Step("never2", trace), after=[never, a])
        with workers(queue, tmp_path, 2):
            assert c.result(timeout=30)["before"] == {str(b.id): b.result()}
            assert fan.result(timeout=30)["before"] == {
                str(a.id): a.result(),
                str(x.id): x.result(),
            }
            wait_until(lambda: store.get(never2.id).status is Status.FAILED, 20, "never2")
        lines = Path(trace).read_text().splitlines()
        names = [line.split()[1] for line in lines]
        assert sorted(names) == sorted(
            ["a", "a", "b", "b", "c", "c", "x", "x", "fan", "fan", "breaks"]
        ), lines  # each once (a start and an end), the failing dependents never
        for before, after in (("a", "b"), ("b", "c"), ("a", "fan"), ("x", "fan")):
            assert lines.index(f"end {before}") < next(
                i for i, line in enumerate(lines) if line.startswith(f"start {after} ")
            ), lines
        assert store.get(never.id).error == f"dependency {bad.id} failed"
        assert store.get(never2.id).error == f"dependency {never.id} failed"
    finally:
        store.close()
