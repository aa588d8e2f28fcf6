"""End to end: a real Starlette app under uvicorn enqueues from `async def` endpoints
(`await task.aenqueue`, `await store.aget`) while a real `liteq work` runs the jobs; each
request's job runs exactly once. SQLite and PostgreSQL (the stores other processes share)."""

from __future__ import annotations

import collections
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import liteq
from tests import pg
from tests.helpers import ROOT, liteq_work, wait_until

N = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int, method: str, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return response.status, json.loads(body) if body.startswith(b"{") else body


def _answers(port: int) -> bool:
    try:
        return _request(port, "GET", "/ready")[0] == 200
    except OSError:
        return False


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.sqlite'}"
        return
    schema = pg.new_schema()
    try:
        yield pg.url(schema)
    finally:
        pg.drop_schema(schema)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_an_asgi_app_enqueues_from_async_endpoints_while_a_worker_runs_the_jobs(
    url: str, tmp_path: Path
) -> None:
    liteq.connect(url).close()  # the queue made before two processes open it at once
    out = tmp_path / "effects.txt"
    port = _free_port()
    env = {**os.environ, "LITEQ_URL": url, "LITEQ_TEST_OUT": str(out)}
    log = (tmp_path / "uvicorn.log").open("w")
    serve = ["tests.asgi_app:app", "--port", str(port), "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [sys.executable, "-X", "dev", "-m", "uvicorn", *serve, "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    work = liteq_work(url, "--import", "tests.asgi_tasks", "--processes", "2", env=env)
    try:
        wait_until(lambda: _answers(port), 30, "uvicorn to answer")
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda n: _request(port, "POST", f"/enqueue/{n}"), range(N)))
        assert [status for status, _ in answers] == [200] * N
        ids = [body["id"] for _, body in answers]
        assert len(set(ids)) == N
        assert {body["status"] for _, body in answers} == {"queued"}

        def effects() -> list[int]:
            text = out.read_text() if out.exists() else ""
            return [int(line.split()[0]) for line in text.splitlines()]

        wait_until(lambda: len(effects()) >= N, 60, f"{N} jobs to run")
        # A job done is deleted (delete_on_complete): aget says so, as get does.
        wait_until(lambda: liteq_count(url) == 0, 30, "every job to be done")
        status, body = _request(port, "GET", f"/jobs/{ids[-1]}")
        assert (status, body) == (404, {"error": f"no job with id {ids[-1]}"})
    finally:
        _stop(work)
        _stop(server)
        log.close()
    counts = collections.Counter(effects())
    assert sorted(counts) == list(range(N)) and set(counts.values()) == {1}
    # It shut down cleanly (its lifespan closes the store), with nothing for Python's
    # development mode to warn of.
    assert server.returncode in (0, -signal.SIGTERM)
    said = (tmp_path / "uvicorn.log").read_text()
    assert "Traceback" not in said and "Warning" not in said, said


def liteq_count(url: str) -> int:
    with liteq.connect(url) as store:
        return store.count()
