"""The `liteq` command in an operator's hands (issue 24): typos that must not make a queue,
payloads that could never run, what scripts read in `--json`, pipes that close early."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

import liteq
from liteq.stores.contract import WorkerInfo
from tests import pg
from tests.test_cli import LITEQ, files, in_app, liteq_cmd, make_app, one_line

#: Commands that change a queue and are not meant to make one (docs/cli.md).
WRITES = [
    ["retry", "--all-failed"],
    ["retry", "1"],
    ["restart", "1"],
    ["delete", "1"],
    ["purge", "--status", "failed", "--yes"],
    ["resolve", "1", "--data", "1"],
    ["detect-hung"],
    ["pause", "mail"],
    ["pause", "mail", "--create"],
    ["resume", "mail"],
    ["db", "vacuum"],
    ["db", "checkpoint"],
    ["db", "page-size", "4096"],
]


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return make_app(tmp_path)


def queue(app: Path) -> liteq.SQLiteStore:
    return liteq.SQLiteStore(app / "app.sqlite")


# -- 2: a mistyped path or schema is no new queue -----------------------------------------------
@pytest.mark.parametrize("command", WRITES, ids=" ".join)
def test_a_write_command_refuses_a_path_with_no_queue_and_makes_none(
    tmp_path: Path, command: list[str]
) -> None:
    result = liteq_cmd(tmp_path, *command, "--db", "typo.sqlite")
    assert result.returncode == 2, result.stderr
    assert one_line(result) == "liteq: no queue at typo.sqlite"
    assert files(tmp_path) == []
    (tmp_path / "empty.sqlite").touch()  # an empty file is no queue either, and stays empty
    result = liteq_cmd(tmp_path, *command, "--db", "empty.sqlite")
    assert result.returncode == 2 and "no queue at empty.sqlite" in one_line(result)
    assert (tmp_path / "empty.sqlite").stat().st_size == 0
    assert files(tmp_path) == ["empty.sqlite"]


def test_a_write_command_refuses_a_schema_with_no_queue_and_makes_none(tmp_path: Path) -> None:
    schema = pg.new_schema()
    url = pg.url(schema)
    try:
        for command in WRITES:
            if command[0] == "db":
                continue  # (liteq db is for files: it says so whatever the schema holds)
            result = liteq_cmd(tmp_path, *command, "--db", url)
            assert result.returncode == 2, (command, result.stderr)
            assert f"no liteq queue in schema {schema}" in one_line(result)
        with psycopg.connect(pg.dsn_or_skip()) as conn:
            found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            assert found.fetchone() is None, "a write command made the schema"
    finally:
        pg.drop_schema(schema)


def test_pause_refuses_a_queue_name_the_queue_never_had_unless_create(app: Path) -> None:
    db = ("--db", "app.sqlite")
    in_app(app, "import myapp.jobs as j; j.send.enqueue('ann')")  # a job in queue mail
    typo = liteq_cmd(app, "pause", "mial", *db)
    assert typo.returncode == 2 and "no queue named mial" in one_line(typo)
    assert "--create" in typo.stderr and queue(app).paused() == set()
    assert liteq_cmd(app, "pause", "mail", *db).returncode == 0
    ahead = liteq_cmd(app, "pause", "reports", "--create", *db)
    assert ahead.returncode == 0 and queue(app).paused() == {"mail", "reports"}
    # Resuming a misspelt name would leave the real one paused while saying it runs.
    wrong = liteq_cmd(app, "resume", "mial", *db)
    assert wrong.returncode == 2 and "no queue named mial" in one_line(wrong)
    assert queue(app).paused() == {"mail", "reports"}


# -- 8: vacuum says what it gave back ------------------------------------------------------------
@pytest.mark.timeout(60)
def test_vacuum_reports_the_sizes_the_file_really_has(app: Path) -> None:
    in_app(
        app,
        """
        import myapp.jobs as j
        jobs = j.store.enqueue_many([j.Touch('x' * 2000) for n in range(1000)])
        for job in jobs:
            j.store.delete(job)
        """,
    )
    path = app / "app.sqlite"
    big = path.stat().st_size
    result = liteq_cmd(app, "db", "vacuum", "--db", "app.sqlite", "--json")
    assert result.returncode == 0, result.stderr
    sizes = json.loads(result.stdout)
    on_disk = path.stat().st_size + (
        Path(f"{path}-wal").stat().st_size if Path(f"{path}-wal").exists() else 0
    )
    assert sizes["bytes_before"] >= big and sizes["bytes_after"] == on_disk
    assert sizes["bytes_after"] < big // 10
    text = liteq_cmd(app, "db", "vacuum", "--db", "app.sqlite")
    assert f"{on_disk:,} bytes -> {on_disk:,} bytes" in text.stdout


# -- 10: enqueue refuses what could never run -----------------------------------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["myapp.jobs.Touch", "--state", '{"nope": 1}'], "'nope', which its __init__ never sets"),
        (["myapp.jobs.Touch", "--state", '{"name": "a"}'], "lacks 'then'"),
        (["myapp.jobs.Touch", "--args", '["a"]'], "--args/--kwargs are a task's"),
        (["myapp.jobs.send", "--args", '["a", "b", "c"]'], "too many positional arguments"),
        (["myapp.jobs.send", "--kwargs", '{"too": "a"}'], "missing a required argument: 'to'"),
        (["myapp.jobs.send", "--state", '{"args": [], "kwargs": {}}'], "is a task"),
    ],
)
def test_enqueue_refuses_a_payload_that_could_never_run(
    app: Path, args: list[str], words: str
) -> None:
    in_app(app, "import liteq; liteq.connect()")
    result = liteq_cmd(app, "enqueue", *args, "--db", "app.sqlite")
    assert result.returncode == 2, result.stderr
    assert words in one_line(result)
    assert queue(app).count() == 0


def test_enqueue_takes_a_payload_that_runs(app: Path) -> None:
    db = ("--db", "app.sqlite")
    state = '{"name": "made", "then": null}'
    assert liteq_cmd(app, "enqueue", "myapp.jobs.Touch", "--state", state, *db).returncode == 0
    called = liteq_cmd(app, "enqueue", "myapp.jobs.send", "--args", '["ann"]', *db)
    assert called.returncode == 0
    assert liteq_cmd(app, "enqueue", "myapp.jobs.Boom", *db).returncode == 0  # no __init__
    worked = liteq_cmd(app, "work", *db, "--import", "myapp.jobs", "--burst")
    assert worked.returncode == 0, worked.stderr
    assert (app / "made").exists() and (app / "sent-ann").exists()


# -- 11: times in JSON ----------------------------------------------------------------------------
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")


def test_json_times_are_iso_8601_in_utc_and_unset_ones_null(app: Path) -> None:
    db = ("--db", "app.sqlite")
    in_app(app, "import myapp.jobs as j; j.store.enqueue(j.Touch('t'))")
    now = time.time()
    queue(app).register_worker(
        WorkerInfo("w@elsewhere", "elsewhere", 7, None, now - 60, now, lease=600)
    )
    shown = json.loads(liteq_cmd(app, "show", "1", "--json", *db).stdout)
    listed = json.loads(liteq_cmd(app, "jobs", "--json", *db).stdout)["jobs"][0]
    for fields in (shown, listed):
        assert ISO_UTC.fullmatch(fields["created"]) and ISO_UTC.fullmatch(fields["run_at"])
        assert fields["started"] is None and fields["finished"] is None
    (worker,) = json.loads(liteq_cmd(app, "status", "--json", *db).stdout)["workers"]
    assert ISO_UTC.fullmatch(worker["since"]) and ISO_UTC.fullmatch(worker["last_beat"])


def test_status_shows_how_many_jobs_each_worker_has_in_flight(app: Path) -> None:
    db = ("--db", "app.sqlite")
    in_app(app, "import liteq; liteq.connect()")
    now = time.time()
    store = queue(app)
    store.register_worker(WorkerInfo("w@elsewhere", "elsewhere", 7, None, now, now, lease=600))
    store.beat("w@elsewhere", jobs_done=2, current_job=None, finished={}, in_flight=3)
    store.close()
    (worker,) = json.loads(liteq_cmd(app, "status", "--json", *db).stdout)["workers"]
    assert worker["in_flight"] == 3
    lines = liteq_cmd(app, "status", *db).stdout.splitlines()
    (head,) = [line for line in lines if line.startswith("host ")]
    (row,) = [line for line in lines if line.startswith("elsewhere ")]
    assert row[head.index("in flight") :].split()[0] == "3"


# -- 12: pipes ------------------------------------------------------------------------------------
def test_a_reader_that_goes_away_ends_the_command_quietly(app: Path) -> None:
    in_app(
        app, "import myapp.jobs as j; j.store.enqueue_many([j.Touch(str(n)) for n in range(300)])"
    )
    read, write = os.pipe()
    os.close(read)  # the reader is gone before a line is written
    try:
        for command in (["jobs", "--limit", "300"], ["show", "1"], ["status", "--json"]):
            result = subprocess.run(
                [LITEQ, *command, "--db", "app.sqlite"],
                cwd=app,
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
            )
            assert (result.returncode, result.stderr) == (141, ""), command
    finally:
        os.close(write)


def test_a_reader_gone_in_the_middle_of_a_long_json_output_is_not_success(app: Path) -> None:
    in_app(
        app, "import myapp.jobs as j; j.store.enqueue_many([j.Touch(str(n)) for n in range(400)])"
    )
    for _ in range(3):  # (the reader goes away mid-write: a race, so more than once)
        listing = subprocess.Popen(
            [LITEQ, "jobs", "--json", "--limit", "400", "--db", "app.sqlite"],
            cwd=app,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert listing.stdout is not None and listing.stderr is not None
        assert len(listing.stdout.read(100)) == 100  # as `| head -c 100` does
        listing.stdout.close()
        said = listing.stderr.read()
        listing.stderr.close()
        assert (listing.wait(30), said) == (141, b"")


@pytest.mark.timeout(60)
def test_status_watch_into_a_pipe_prints_plain_snapshots(app: Path) -> None:
    in_app(app, "import liteq; liteq.connect()")
    watch = subprocess.Popen(
        [LITEQ, "status", "--watch", "0.2", "--db", "app.sqlite"],
        cwd=app,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert watch.stdout is not None and watch.stderr is not None
    seen = b""
    while seen.count(b"no jobs") < 3:
        seen += watch.stdout.read1(4096)
    watch.stdout.close()  # as `| head` does
    said = watch.stderr.read()
    watch.stderr.close()
    assert b"\033" not in seen and b"Ctrl-C" not in seen
    assert watch.wait(30) == 141 and said == b""


# -- 14: the command's own words -------------------------------------------------------------------
def test_show_errors_and_empty_retries_read_alike(app: Path) -> None:
    db = ("--db", "app.sqlite")
    in_app(app, "import myapp.jobs as j; j.store.enqueue(j.Touch('t'))")
    shown = liteq_cmd(app, "show", "1", *db).stdout
    assert re.search(r"^delete_on_complete: +(yes|no)$", shown, re.M), shown
    assert re.search(r"^locked: +no$", shown, re.M)
    for command in (["show", "99999"], ["delete", "99999"], ["retry", "99999"]):
        result = liteq_cmd(app, *command, *db)
        assert result.returncode == 1
        assert one_line(result) == "liteq: no job with id 99999", command
    queued = liteq_cmd(app, "retry", "1", *db)
    assert queued.returncode == 1
    assert one_line(queued) == "liteq: job 1: it is queued: nothing to retry"
    nothing = liteq_cmd(app, "retry", "--all-failed", *db)
    assert nothing.returncode == 0 and nothing.stdout == "no failed jobs to retry\n"
    zero = liteq_cmd(app, "show", "0", *db)
    assert zero.returncode == 2 and "no job has id 0: job ids start at 1" in one_line(zero)
    assert "whole number" not in zero.stderr
    assert one_line(liteq_cmd(app, "show", "x", *db)).startswith("liteq: ")


def test_an_enqueue_that_coalesces_says_nothing_new_was_enqueued(app: Path) -> None:
    db = ("--db", "app.sqlite")
    in_app(app, "import liteq; liteq.connect()")
    args = ("enqueue", "myapp.jobs.Touch", "--coalesce-id", "nightly", *db)
    first = liteq_cmd(app, *args, "--state", '{"name": "a", "then": null}')
    assert first.stdout == "job 1 (queued, queue default)\n"
    again = liteq_cmd(app, *args, "--state", '{"name": "b", "then": null}')
    assert again.returncode == 0
    assert again.stdout == (
        "job 1 (queued, queue default) already holds coalesce id nightly: "
        "nothing new was enqueued\n"
    )
    said = json.loads(
        liteq_cmd(app, *args, "--state", '{"name": "c", "then": null}', "--json").stdout
    )
    assert said == {"id": 1, "status": "queued", "queue": "default", "coalesced": True}
