"""The `liteq` command as a new user meets it: the real command, in real processes, on real
files, in an application's own directory. Every mistake is one line and an exit status."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import liteq
from tests.helpers import ROOT, wait_until

LITEQ = str(Path(sys.executable).parent / "liteq")  # the console script, as installed

JOBS_MODULE = """
import os, time
import liteq

store = liteq.connect()  # the worker's own queue: liteq work sets LITEQ_URL

class Touch(liteq.Job):
    def __init__(self, name, then=None):
        self.name = name
        self.then = then
    def run(self, job):
        open(self.name, "a").write("ran\\n")
        if self.then:
            store.enqueue(Touch(self.then))
    def description(self):
        return f"touch {self.name}"

class Waiting(liteq.Job):
    def run(self, job):
        return liteq.Status.WAIT_ASYNC
    def resolve_wait_async(self, data):
        if data == "bad":
            raise ValueError("no such delivery")
        return liteq.Status.COMPLETED if data == "done" else liteq.Status.FAILED

class Boom(liteq.Job):
    def run(self, job):
        raise ValueError("a long and precise reason why this job could not do its work, "
                         "longer than any table cut it at before")

@store.task(queue="mail")
def send(to, subject="hi"):
    open(f"sent-{to}", "w").write(subject)
"""


def make_app(directory: Path) -> Path:
    """An application's directory: a package of jobs, not installed, and its queue file."""
    (directory / "myapp").mkdir()
    (directory / "myapp" / "__init__.py").write_text("")
    (directory / "myapp" / "jobs.py").write_text(JOBS_MODULE)
    return directory


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return make_app(tmp_path)


def liteq_cmd(
    app: Path, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("LITEQ_URL", "PYTHONPATH")}
    return subprocess.run(
        [LITEQ, *args],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environment, **env},
        stdin=subprocess.DEVNULL,
    )


def in_app(app: Path, code: str) -> str:
    """Run Python in the application's directory (as its own code would), with LITEQ_URL."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LITEQ_URL": str(app / "app.sqlite")},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a mistake prints on stderr (no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "__pycache__")


# -- the traps a newcomer met ---------------------------------------------------------------
def test_the_working_directory_is_importable_and_workers_get_the_queues_url(app: Path) -> None:
    in_app(app, "import myapp.jobs as j; j.store.enqueue(j.Touch('a', then='b'))")
    result = liteq_cmd(app, "work", "--db", "app.sqlite", "--import", "myapp.jobs", "--burst")
    assert result.returncode == 0, result.stderr
    # The job enqueued from inside a job went to the worker's queue, and ran there too.
    assert (app / "a").read_text() == "ran\n" and (app / "b").read_text() == "ran\n"
    assert "opened the queue" not in result.stderr
    shown = liteq_cmd(app, "jobs", "--db", "app.sqlite", "--import", "myapp.jobs")
    assert shown.returncode == 0 and "no jobs" in shown.stdout


def test_a_jobs_module_with_a_queue_of_its_own_is_pointed_out(app: Path) -> None:
    (app / "myapp" / "own.py").write_text(
        "import liteq\nstore = liteq.SQLiteStore('stray.sqlite')\n"
    )
    result = liteq_cmd(
        app, "work", "--db", "app.sqlite", "--import", "myapp.own", "--burst", "--no-jitter"
    )
    assert result.returncode == 0, result.stderr
    assert "opened the queue" in result.stderr and "liteq.connect()" in result.stderr


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("import nowhere_to_be_found\n", "ModuleNotFoundError"),
        ("def broken(:\n", "SyntaxError"),
        ("raise RuntimeError('no config')\n", "RuntimeError: no config"),
    ],
)
def test_a_module_that_cannot_be_imported_stops_liteq_work_at_once(
    app: Path, source: str, words: str
) -> None:
    (app / "myapp" / "bad.py").write_text(source)
    for burst in (["--burst"], []):
        began = time.monotonic()
        result = liteq_cmd(
            app, "work", "--db", "app.sqlite", "--import", "myapp.bad", *burst, timeout=30
        )
        assert result.returncode == 70 and time.monotonic() - began < 15
        line = one_line(result)
        assert "could not import myapp.bad" in line and words in line


@pytest.mark.timeout(60)
def test_a_deploy_that_breaks_the_import_backs_off_and_says_why(app: Path) -> None:
    in_app(app, "import myapp.jobs as j; j.store.enqueue_many([j.Touch(str(n)) for n in range(3)])")
    with (app / "work.log").open("w") as log:
        work = subprocess.Popen(
            [LITEQ, "work", "--db", "app.sqlite", "--import", "myapp.jobs", *["--max-jobs", "1"]],
            cwd=app,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: (app / "0").exists(), 20, "the first job")
        (app / "myapp" / "jobs.py").write_text("raise RuntimeError('half deployed')\n")
        time.sleep(6)  # workers recycled after each job now fail to start
        said = (app / "work.log").read_text()
        starts = said.count("could not start")
        assert "RuntimeError: half deployed" in said and "cannot start" in said
        assert starts < 15, f"{starts} start-up failures in 6 s: a crash loop"
        assert "Traceback" not in said
    finally:
        work.terminate()
        assert work.wait(30) == 0


def test_liteq_work_without_import_refuses_and_jobs_of_unknown_types_wait(app: Path) -> None:
    in_app(app, "import myapp.jobs as j; j.store.enqueue(j.Touch('x'))")
    before = (app / "app.sqlite").read_bytes()
    result = liteq_cmd(app, "work", "--db", "app.sqlite", "--burst")
    assert result.returncode == 2 and "needs --import" in one_line(result)
    assert (app / "app.sqlite").read_bytes() == before
    # A worker that imports other jobs: the Touch job waits, uses no attempt, is not failed.
    (app / "other.py").write_text("import liteq\nclass Other(liteq.Job):\n    pass\n")
    result = liteq_cmd(app, "work", "--db", "app.sqlite", "--import", "other", "--burst")
    assert result.returncode == 0, result.stderr
    assert "its jobs wait for a worker that knows their type" in result.stderr
    job = liteq.SQLiteStore(app / "app.sqlite").get(1)
    assert (job.status, job.attempts, job.max_attempts) == (liteq.Status.QUEUED, 0, 1)
    status = json.loads(liteq_cmd(app, "status", "--db", "app.sqlite", "--json").stdout)
    assert status["queues"][0]["unknown_type"] == 1


def test_another_applications_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    django = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(django)
    conn.execute("CREATE TABLE auth_user (id INTEGER PRIMARY KEY, username TEXT)")
    conn.commit()
    conn.close()
    before = django.read_bytes()
    for command in (["jobs"], ["status"], ["work", "--import", "json", "--burst"], ["pause", "x"]):
        result = liteq_cmd(tmp_path, *command, "--db", str(django))
        assert result.returncode == 2, (command, result.stderr)
        assert "another application's database" in one_line(result)
    assert django.read_bytes() == before and files(tmp_path) == ["db.sqlite3"]


def test_the_demo_replaces_only_a_demo_queue(tmp_path: Path) -> None:
    precious = tmp_path / "precious.db"
    precious.write_text("my thesis")
    result = liteq_cmd(tmp_path, "demo", "--db", "precious.db")
    assert result.returncode == 2 and "not a liteq demo queue" in one_line(result)
    assert precious.read_text() == "my thesis"


@pytest.mark.parametrize(
    ("args", "words", "code"),
    [
        (["jobs", "--db", "redis://localhost"], "unsupported store URL", 2),
        (["jobs", "--db", "missing-dir/q.sqlite"], "no queue at missing-dir/q.sqlite", 2),
        (["jobs", "--db", "typo.sqlite"], "no queue at typo.sqlite", 2),
        (["jobs", "--db", "notes.txt"], "notes.txt is not an SQLite file, so not a liteq queue", 2),
        (["enqueue", "myapp.jobs.Touch", "--db", "notes.txt"], "is not an SQLite file", 2),
        (["enqueue", "myapp.jobs.Touch", "--db", "a-directory"], "is a directory, not a queue", 2),
        (["jobs", "--db", "a-directory"], "no queue at a-directory", 2),
        (["jobs", "--db", "app.sqlite", "--import", "myapp.nope"], "cannot import myapp.nope", 2),
        (["work", "--db", "app.sqlite", "--processes", "two"], "expected a whole number", 2),
        (["jobs"], "give --db URL", 2),
        (["show", "999", "--db", "app.sqlite"], "no job with id 999", 1),
        (["show", "x", "--db", "app.sqlite"], "expected a job id", 2),
        (["purge", "--status", "running", "--db", "app.sqlite"], "invalid choice", 2),
        (["enqueue", "myapp.jobs.Nope", "--db", "app.sqlite"], "defines no Job class", 2),
        (["enqueue", "myapp.jobs.Touch", "--state", "{not", "--db", "app.sqlite"], "not JSON", 2),
        (["resolve", "1", "--data", "1", "--db", "app.sqlite"], "no job with id 1", 1),
        (["frobnicate"], "invalid choice", 2),
    ],
)
def test_every_mistake_is_one_line_and_an_exit_status(
    app: Path, args: list[str], words: str, code: int
) -> None:
    in_app(app, "import liteq; liteq.connect()")  # an empty queue at app.sqlite
    (app / "notes.txt").write_text("not a database" * 100)
    (app / "a-directory").mkdir()
    before = files(app)
    result = liteq_cmd(app, *args)
    assert result.returncode == code, result.stderr
    assert words in one_line(result)
    assert files(app) == before, "a mistake left a file behind"
    if not any(w in words for w in ("invalid choice", "expected a", "not JSON")):
        # (argparse's own mistakes come before there is anything to trace back)
        assert "Traceback" in liteq_cmd(app, *args, "-v").stderr


def test_a_task_in_a_script_is_a_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import liteq\nstore = liteq.SQLiteStore('q.sqlite')\n@store.task\ndef hello():\n    pass\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "no worker process can import that" in result.stderr


# -- looking at a queue -------------------------------------------------------------------
def test_jobs_shows_a_screenful_with_dates_and_whole_errors_and_show_the_traceback(
    app: Path,
) -> None:
    in_app(
        app,
        """
        import myapp.jobs as j
        j.store.enqueue_many([j.Touch(str(n)) for n in range(30)], queue="bulk")
        j.store.enqueue(j.Boom())
        """,
    )
    worked = liteq_cmd(
        app, "work", "--db", "app.sqlite", "--import", "myapp.jobs", "--burst", "--queue", "default"
    )
    assert worked.returncode == 0, worked.stderr
    assert "started (queues: default)" in worked.stderr  # (not a Python tuple)
    listed = liteq_cmd(app, "jobs", "--db", "app.sqlite")
    assert listed.returncode == 0
    rows = [line for line in listed.stdout.splitlines() if re.match(r"\d+ ", line)]
    assert len(rows) == 18 and "more: liteq jobs ... --before" in listed.stdout  # a screenful
    assert "myapp.jobs.Touch" in listed.stdout and "unknown job type" not in listed.stdout
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", listed.stdout)
    failed = liteq_cmd(app, "jobs", "--db", "app.sqlite", "--status", "failed")
    assert "longer than any table cut it at before" in failed.stdout
    since = liteq_cmd(app, "jobs", "--db", "app.sqlite", "--failed-since", "1h", "--json")
    (boom,) = json.loads(since.stdout)["jobs"]
    shown = liteq_cmd(app, "show", str(boom["id"]), "--db", "app.sqlite")
    assert shown.returncode == 0
    assert "Traceback (most recent call last)" in shown.stdout and "ValueError" in shown.stdout
    described = liteq_cmd(app, "jobs", "--db", "app.sqlite", "--import", "myapp.jobs")
    assert "touch 29" in described.stdout
    one = json.loads(liteq_cmd(app, "show", "1", "--db", "app.sqlite", "--json").stdout)
    assert one["state"] == {"name": "0", "then": None} and one["queue"] == "bulk"


@pytest.mark.timeout(60)
def test_status_shows_queues_throughput_and_live_workers(app: Path) -> None:
    in_app(app, "import myapp.jobs as j; j.store.enqueue_many([j.Touch(str(n)) for n in range(5)])")
    work = subprocess.Popen(
        [LITEQ, "work", "--db", "app.sqlite", "--import", "myapp.jobs", "--lease", "3", "-n", "2"],
        cwd=app,
        stderr=subprocess.DEVNULL,
    )
    try:

        def report() -> dict[str, object]:
            out = liteq_cmd(app, "status", "--db", "app.sqlite", "--json").stdout
            return json.loads(out)  # type: ignore[no-any-return]

        def settled() -> bool:
            now = report()
            queues: list[dict[str, dict[str, int]]] = now["queues"]  # type: ignore[assignment]
            return len(now["workers"]) == 2 and bool(queues)  # type: ignore[arg-type]

        wait_until(settled, 30, "two workers, and jobs done")

        def completed() -> int:
            # Workers report what they finished with their beat, a moment after the jobs
            # leave the queue: until then the queue may not show at all.
            queues: list[dict[str, dict[str, int]]] = report()["queues"]  # type: ignore[assignment]
            return sum(q["completed"]["1m"] for q in queues)

        wait_until(lambda: completed() == 5, 30, "five jobs done")
        text = liteq_cmd(app, "status", "--db", "app.sqlite").stdout
        assert "2 live workers" in text and "5/5/5" in text and "write-ahead log" in text
    finally:
        work.terminate()
        assert work.wait(30) == 0
    assert report()["workers"] == []  # they unregistered on the way out


# -- changing a queue ---------------------------------------------------------------------
def test_retry_restart_delete_and_purge(app: Path) -> None:
    in_app(
        app,
        """
        import myapp.jobs as j
        for n in range(3):
            j.store.enqueue(j.Boom(), queue="q")
        j.store.enqueue(j.Boom(), queue="other")
        """,
    )
    liteq_cmd(app, "work", "--db", "app.sqlite", "--import", "myapp.jobs", "--burst")
    db = ("--db", "app.sqlite")
    retried = liteq_cmd(app, "retry", "--all-failed", "--queue", "q", *db)
    assert retried.returncode == 0 and "re-queued: 1, 2, 3" in retried.stdout
    store = liteq.SQLiteStore(app / "app.sqlite")
    assert store.count(status=liteq.Status.QUEUED) == 3
    assert liteq_cmd(app, "restart", "4", *db).returncode == 0
    assert store.get(4).attempts == 0
    refused = liteq_cmd(app, "delete", "1", "999", *db)
    assert refused.returncode == 1 and "no job with id 999" in refused.stderr
    liteq_cmd(app, "work", "--db", "app.sqlite", "--import", "myapp.jobs", "--burst")
    dry = liteq_cmd(app, "purge", "--status", "failed", "--dry-run", *db)
    assert "would delete 3 failed jobs" in dry.stdout
    unasked = liteq_cmd(app, "purge", "--status", "failed", *db)
    assert unasked.returncode == 2 and "pass --yes" in one_line(unasked)
    old = liteq_cmd(app, "purge", "--status", "failed", "--older-than", "1d", "--yes", *db)
    assert "nothing to delete" in old.stdout
    purged = liteq_cmd(app, "purge", "--status", "failed", "--yes", *db)
    assert purged.returncode == 0 and "deleted 3 jobs" in purged.stdout
    assert store.count() == 0


def test_enqueue_resolve_pause_resume_and_detect_hung(app: Path) -> None:
    db = ("--db", "app.sqlite")
    in_app(app, "import liteq; liteq.connect()")
    made = liteq_cmd(
        app, "enqueue", "myapp.jobs.Touch", "--state", '{"name": "t", "then": null}', *db
    )
    assert made.returncode == 0 and "job 1" in made.stdout
    sent = liteq_cmd(app, "enqueue", "myapp.jobs.send", "--args", '["ann"]', *db)
    assert sent.returncode == 0 and "queue mail" in sent.stdout
    waiting = liteq_cmd(app, "enqueue", "myapp.jobs.Waiting", "--state", "{}", "--json", *db)
    wait_id = json.loads(waiting.stdout)["id"]
    assert liteq_cmd(app, "pause", "mail", *db).returncode == 0
    liteq_cmd(app, "work", "--db", "app.sqlite", "--import", "myapp.jobs", "--burst")
    assert (app / "t").exists() and not (app / "sent-ann").exists()  # mail is paused
    assert liteq_cmd(app, "resume", "mail", *db).returncode == 0
    liteq_cmd(app, "work", "--db", "app.sqlite", "--import", "myapp.jobs", "--burst")
    assert (app / "sent-ann").read_text() == "hi"
    refused = liteq_cmd(app, "resolve", str(wait_id), "--data", '"bad"', *db)
    assert refused.returncode == 1
    assert one_line(refused) == (
        f"liteq: job {wait_id}: its resolve_wait_async raised ValueError: no such delivery; "
        "it is still waiting (-v shows the traceback)"
    )
    verbose = liteq_cmd(app, "resolve", str(wait_id), "--data", '"bad"', "-v", *db)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
    resolved = liteq_cmd(app, "resolve", str(wait_id), "--data", '"done"', *db)
    assert resolved.returncode == 0 and "completed" in resolved.stdout
    hung = liteq_cmd(app, "detect-hung", *db)
    assert hung.returncode == 0 and "no hung jobs" in hung.stdout


# -- the file -------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_db_vacuum_checkpoint_and_page_size(app: Path) -> None:
    db = ("--db", "app.sqlite")
    in_app(
        app, "import myapp.jobs as j; j.store.enqueue_many([j.Touch(str(n)) for n in range(500)])"
    )
    assert liteq_cmd(app, "db", "check", *db).returncode == 0
    checkpoint = liteq_cmd(app, "db", "checkpoint", *db)
    assert checkpoint.returncode == 0 and "checkpointed" in checkpoint.stdout
    work = subprocess.Popen(
        [LITEQ, "work", "--db", "app.sqlite", "--import", "myapp.jobs", "--queue", "none"],
        cwd=app,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: json.loads(liteq_cmd(app, "status", "--json", *db).stdout)["workers"], 20
        )
        refused = liteq_cmd(app, "db", "page-size", "4096", *db)
        assert refused.returncode == 2 and "stop them to convert it" in one_line(refused)
    finally:
        work.terminate()
        work.wait(30)
    converted = liteq_cmd(app, "db", "page-size", "4096", *db)
    assert converted.returncode == 0 and "-> 4096-byte pages" in converted.stdout
    assert liteq_cmd(app, "db", "vacuum", *db).returncode == 0
    assert liteq.SQLiteStore(app / "app.sqlite").count() == 500


# -- the command itself -----------------------------------------------------------------------
def test_version_license_and_distribution_name() -> None:
    result = subprocess.run([LITEQ, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith(f"liteq {liteq.__version__} (liteq-jobs;")
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    project = (ROOT / "pyproject.toml").read_text()
    assert 'name = "liteq-jobs"' in project and "Operating System :: POSIX" in project
    assert "pip install liteq-jobs" in (ROOT / "README.md").read_text()


def _commands() -> list[tuple[str, ...]]:
    from liteq.cli import build_parser

    found: list[tuple[str, ...]] = []

    def walk(parser: object, path: tuple[str, ...]) -> None:
        for action in parser._actions:  # type: ignore[attr-defined]
            if isinstance(action.choices, dict) and action.choices:
                for name, sub in action.choices.items():
                    found.append((*path, name))
                    walk(sub, (*path, name))

    walk(build_parser(), ())
    return found


def test_every_command_has_help_and_both_docs_name_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    reference = (ROOT / "docs" / "cli.md").read_text()
    commands = _commands()
    for command in commands:
        result = subprocess.run([LITEQ, *command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: liteq" in result.stdout, command
        assert f"`liteq {' '.join(command)}" in reference, f"liteq {command} is not in docs/cli.md"
        assert f"liteq {command[0]}" in readme, f"`liteq {command[0]}` is not in README.md"
    named = set(re.findall(r"(?:`|^ {4})liteq ([a-z][a-z-]*)", readme + reference, re.M))
    known = {c[0] for c in commands}
    assert named <= known, f"the docs name commands that do not exist: {named - known}"
