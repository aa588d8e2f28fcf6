"""Django's tasks framework on liteq: a real Django project (tests/django_project) in a
Python 3.12+ environment of its own (tests/django_project/venv.py), its real manage.py
commands as separate processes, on PostgreSQL (the queue in the site's database: the
outbox) and on SQLite (the queue in the site's file, the outbox too, or in a file of its own).

Without a Python 3.12+ these tests are skipped, saying why; under LITEQ_REQUIRE_DJANGO=1
(CI sets it) that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests import pg
from tests.django_project import venv

PROJECT = Path(__file__).parent / "django_project"

pytestmark = pytest.mark.timeout(300)  # (a first run builds the environment: about 30 s)


@pytest.fixture(scope="module")
def python() -> Path:
    """The Django environment's python, built once and reused."""
    built = venv.ensure_venv()
    if built is None:
        reason = (
            "no Python 3.12+ for Django 6 (pyenv, PATH or uv): see tests/django_project/venv.py"
        )
        if os.environ.get("LITEQ_REQUIRE_DJANGO") == "1":
            pytest.fail(reason + " (LITEQ_REQUIRE_DJANGO=1)")
        pytest.skip(reason)
    return built


def manage(python: Path, env: dict[str, str], *args: str, check: bool = True) -> str:
    """Run the project's manage.py; its stdout."""
    result = subprocess.run(
        [str(python), "manage.py", *args],
        cwd=PROJECT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stderr[-3000:]}"
    return result.stdout if check else result.stdout + result.stderr


@pytest.fixture
def postgres_site() -> Iterator[dict[str, str]]:
    """The site on PostgreSQL, in a database of the test's own (dropped after)."""
    dsn = pg.dsn_or_skip()
    name = f"liteq_dj_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    params = conninfo_to_dict(dsn)
    try:
        yield {
            "SHOP_DB": "postgresql",
            "SHOP_PG_NAME": name,
            "SHOP_PG_HOST": str(params.get("host", "127.0.0.1")),
            "SHOP_PG_PORT": str(params.get("port", "5432")),
            "SHOP_PG_USER": str(params.get("user", "postgres")),
        }
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            # (and the one Django's test runner makes, should a failed run leave it)
            conn.execute(f"DROP DATABASE IF EXISTS test_{name} WITH (FORCE)")


def run_the_shop(python: Path, env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Migrate and enqueue (a view, an atomic block rolled back, ...), run one burst
    worker, and read every result back: (the ids, what get_result says of them)."""
    ids = json.loads(manage(python, env, "shop_enqueue", "--migrate"))
    manage(python, env, "liteq_work", "--burst", "--processes", "1", "-q")
    wanted = [v for k, v in ids.items() if k not in ("later_status", "refused")]
    return ids, json.loads(manage(python, env, "shop_results", *wanted))


def check_the_runs(ids: dict[str, Any], seen: dict[str, Any]) -> None:
    """What every place the queue may live shows alike."""
    runs = seen["runs"]
    assert runs.count("receipt book") == 1  # exactly once
    done = seen[ids["committed"]]
    assert done["status"] == "SUCCESSFUL"
    assert done["value"] == {"order": 1, "item": "book"}
    assert done["attempts"] == 1 and done["times"] == [True, True, True]
    assert done["same_async"]

    failed = seen[ids["failing"]]
    assert failed["status"] == "FAILED"
    assert failed["errors"] == [["shop.tasks.Refused", "shop.tasks.Refused: no stock", "Refused"]]
    assert runs.count("refuse no stock") == 1

    assert ids["later_status"] == "READY"
    later = seen[ids["later"]]  # run_after an hour from now: not run by a burst
    assert later["status"] == "READY" and "later" not in runs
    assert later["times"] == [True, False, False]

    assert seen[ids["high"]]["priority"] == 50 and seen[ids["low"]]["priority"] == -5
    assert runs.index("high") < runs.index("receipt book") < runs.index("low")

    mail = seen[ids["async"]]  # an async def task, on the mail queue
    assert mail["status"] == "SUCCESSFUL" and mail["value"] == "sent to ann@example.com"
    assert mail["queue"] == "mail" and runs.count("mail ann@example.com") == 1

    assert seen[ids["context"]]["value"] == 1 and "attempt 1" in runs  # takes_context
    assert seen[ids["aenqueued"]]["value"] == "from async"

    module_level, importable = ids["refused"]  # (Django's InvalidTask, both)
    assert "module level" in module_level and "__main__" in importable


def test_postgresql_the_queue_in_the_sites_database(
    python: Path, postgres_site: dict[str, str]
) -> None:
    ids, seen = run_the_shop(python, postgres_site)
    check_the_runs(ids, seen)
    # The outbox: the job enqueued in the block that rolled back never existed.
    assert seen[ids["rolled_back"]] is None
    assert not any(r.startswith("receipt lost") for r in seen["runs"])
    assert seen["held"] == 0  # (results read on Django's connection: liteq opened none)
    with psycopg.connect(_site_dsn(postgres_site)) as conn:
        count = conn.execute("SELECT count(*) FROM shop_jobs.jobs").fetchone()
    assert count is not None and count[0] >= 8  # liteq's tables, in the site's database


def test_postgresql_the_sites_own_tests_pass_and_drop_their_database(
    python: Path, postgres_site: dict[str, str]
) -> None:
    # Django's test runner makes test_<name> and drops it after: no session of liteq's
    # may hold it then; and a task enqueued in a test's transaction is found in it.
    said = manage(python, postgres_site, "test", "shop", "--noinput", check=False)
    assert "OK" in said and "Traceback" not in said, said[-3000:]
    with psycopg.connect(pg.dsn_or_skip()) as conn:
        left = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s",
            (f"test_{postgres_site['SHOP_PG_NAME']}",),
        ).fetchone()
    assert left is None


def _site_dsn(env: dict[str, str]) -> str:
    return (
        f"host={env['SHOP_PG_HOST']} port={env['SHOP_PG_PORT']} "
        f"user={env['SHOP_PG_USER']} dbname={env['SHOP_PG_NAME']}"
    )


def test_sqlite_site_with_a_queue_file_of_its_own(python: Path, tmp_path: Path) -> None:
    env = {
        "SHOP_SQLITE": str(tmp_path / "site.sqlite3"),
        "SHOP_QUEUE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite'}",
    }
    ids, seen = run_the_shop(python, env)
    check_the_runs(ids, seen)
    # A queue of its own shares no transaction: the rolled-back order's job was written,
    # and ran (and failed: its order is gone).
    assert seen[ids["rolled_back"]]["status"] == "FAILED"
    # liteq's tools on the same queue, through manage.py.
    status = manage(python, env, "liteq", "jobs", "--json", "--import", "shop.tasks")
    assert {job["id"] for job in json.loads(status)["jobs"]} >= {int(ids["committed"])}


def test_sqlite_the_queue_in_the_sites_database(python: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.sqlite3"
    env = {"SHOP_SQLITE": str(site), "SHOP_QUEUE_URL": ""}
    ids, seen = run_the_shop(python, env)
    check_the_runs(ids, seen)
    # The outbox: the job enqueued in the block that rolled back never existed. (SQLite
    # has no sequence outside a transaction: its id went to the next task enqueued.)
    assert seen[ids["rolled_back"]]["task"] == "shop.tasks.refuse"
    assert not any(r.startswith("receipt lost") for r in seen["runs"])
    assert seen["held"] == 0  # (results read on Django's connection: liteq opened none)
    with contextlib.closing(sqlite3.connect(site)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"shop_order", "liteq_jobs"} <= tables  # the site's and liteq's, one file
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    # liteq's tools on it, through manage.py, and the site's own tests.
    said = manage(python, env, "liteq", "jobs", "--json", "--import", "shop.tasks")
    assert {job["id"] for job in json.loads(said)["jobs"]} >= {int(ids["committed"])}
    said = manage(python, env, "test", "shop", "--noinput", check=False)
    assert "OK" in said and "Traceback" not in said, said[-3000:]


def test_sqlite_the_outbox_holds_under_load_and_worker_kills(python: Path, tmp_path: Path) -> None:
    """Two processes place orders (one in three rolled back) while two workers run the
    receipts, each task reading and writing the site's tables through Django, the queue
    through liteq, on one file in one process; workers are killed (-9) meanwhile. After:
    the file is intact, every committed order's receipt ran, no rolled-back order's did."""
    site = tmp_path / "site.sqlite3"
    env = {**os.environ, "SHOP_SQLITE": str(site), "SHOP_QUEUE_URL": ""}
    manage(python, env, "migrate", "-v", "0")
    log = (tmp_path / "work.log").open("w")
    work = subprocess.Popen(
        [str(python), "manage.py", "liteq_work", "--processes", "2"],
        cwd=PROJECT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    started = tmp_path / "work.log"
    deadline = time.monotonic() + 60
    while started.read_text().count(" started (queues") < 2:  # (then its children: workers)
        assert work.poll() is None and time.monotonic() < deadline, started.read_text()[-2000:]
        time.sleep(0.1)
    storm = [str(python), "manage.py", "shop_storm", "--count", "200", "--pause", "0.015"]
    storm += ["--read-first"]
    storms = [
        subprocess.Popen(
            [*storm, "--label", label],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for label in ("a", "b")
    ]
    killed = 0
    try:
        while any(p.poll() is None for p in storms):
            time.sleep(0.7)
            workers = psutil.Process(work.pid).children()
            if workers and killed < 4:
                workers[killed % len(workers)].kill()
                killed += 1
        outs = [p.communicate(timeout=60) for p in storms]
        assert all(p.returncode == 0 for p in storms), [err[-2000:] for _, err in outs]
        said = [json.loads(out) for out, _ in outs]
        committed = [pk for one in said for pk in one["committed"]]
        assert [one["locked"] for one in said] == [0, 0]  # (transaction_mode IMMEDIATE)
        with contextlib.closing(sqlite3.connect(site, timeout=10)) as conn:
            deadline = time.monotonic() + 90
            left = "SELECT count(*) FROM liteq_jobs WHERE status IN ('queued', 'running')"
            while conn.execute(left).fetchone()[0] > 0:
                assert time.monotonic() < deadline, "the receipts were not all run"
                time.sleep(0.2)
    finally:
        work.terminate()
        work.wait(timeout=60)
        log.close()
    assert killed >= 2
    with contextlib.closing(sqlite3.connect(site)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        items = dict(conn.execute("SELECT id, item FROM shop_order").fetchall())
        runs = [r[0] for r in conn.execute("SELECT label FROM shop_run")]
    assert sorted(items) == sorted(committed) and len(committed) == 2 * (200 - 200 // 3)
    assert "lost" not in items.values() and not any("lost" in r for r in runs)
    for item in items.values():  # each at least once; again only after a kill of its run
        assert 1 <= runs.count(f"receipt {item}") <= 2
    assert len(runs) <= len(items) + killed
    said = (tmp_path / "work.log").read_text()
    assert "Traceback" not in said and "malformed" not in said, said[-3000:]


def test_a_url_naming_the_sites_sqlite_file_is_refused(python: Path, tmp_path: Path) -> None:
    """A URL would open the site's file with liteq's own copy of SQLite beside Django's:
    two copies on one file in one process break each other's locks. The settings say
    DATABASE for it instead."""
    site = tmp_path / "site.sqlite3"
    sqlite3.connect(site).close()  # (the site's file, there)
    env = {"SHOP_SQLITE": str(site), "SHOP_QUEUE_URL": f"sqlite:///{site}"}
    said = manage(python, env, "check", check=False)
    assert "liteq.E001" in said and "leave URL out" in said
    said = manage(python, env, "liteq_work", "--burst", check=False)
    assert "leave URL out" in said and "Traceback" not in said


def test_task_lines_follow_liteq_works_level_and_show_once(python: Path, tmp_path: Path) -> None:
    # Django's default logging has a level and, with DEBUG, a console handler of its own
    # for its `django` loggers: the worker's -q must quiet its task lines, and DEBUG must
    # not print each twice.
    env = {"SHOP_SQLITE": str(tmp_path / "site.sqlite3"), "SHOP_QUEUE_URL": "", "SHOP_DEBUG": "1"}
    manage(python, env, "migrate", "-v", "0")
    code = "from shop.tasks import note; note.enqueue('a')"
    manage(python, env, "shell", "-c", code)
    said = manage(python, env, "liteq_work", "--burst", "--processes", "1", check=False)
    assert said.count("state=RUNNING") == 1 and said.count("state=SUCCESSFUL") == 1, said
    manage(python, env, "shell", "-c", code)
    said = manage(python, env, "liteq_work", "--burst", "--processes", "1", "-q", check=False)
    assert "state=" not in said and "Traceback" not in said, said


def test_liteq_work_help_says_how_it_differs_from_liteq_work(python: Path, tmp_path: Path) -> None:
    env = {"SHOP_SQLITE": str(tmp_path / "site.sqlite3"), "SHOP_QUEUE_URL": ""}
    said = manage(python, env, "liteq_work", "--help")
    assert said.startswith("manage.py liteq_work [--backend ALIAS]")
    assert "but for --db" in said.replace("\n", " ")
    assert "--processes N" in said  # liteq work's own options follow


def test_check_warns_of_a_sqlite_site_without_immediate_transactions_or_a_test_file(
    python: Path, tmp_path: Path
) -> None:
    # Measured (bench/django_locks.py): with the queue in the site's file, transactions
    # that read and then write fail with "database is locked" thousands of times under
    # load unless Django begins them IMMEDIATE.
    env = {"SHOP_SQLITE": str(tmp_path / "site.sqlite3"), "SHOP_QUEUE_URL": ""}
    said = manage(python, {**env, "SHOP_TXMODE": "DEFERRED"}, "check", check=False)
    assert "liteq.W001" in said and "'transaction_mode'] = 'IMMEDIATE'" in said
    assert "liteq.W002" not in said
    # Nor can the queue live in a test database in memory (Django's default for SQLite).
    said = manage(python, {**env, "SHOP_TEST_IN_MEMORY": "1"}, "check", check=False)
    assert "liteq.W002" in said and "['TEST'] = {'NAME'" in said and "liteq.W001" not in said
    assert "no issues" in manage(python, env, "check")
