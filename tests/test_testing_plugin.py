"""The pytest plugin as a user meets it: sample applications and their own tests, run by a
real pytest process that finds the plugin through the installed `pytest11` entry point.

Each sample (tests/sample_app, tests/sample_web) is laid out as a user's project: its
pytest.ini, its package, and a tests/ directory beside it. Its test files are named
check_*.py so that liteq's own suite does not collect them; `run_pytest` copies the sample
and names them test_*.py, as the user's are (and as docs/testing.md shows them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def run_pytest(sample: str, tmp_path: Path, *args: str) -> tuple[dict[str, str], str]:
    """Run pytest in a copy of tests/<sample> (its own pytest.ini), its check_*.py files
    named test_*.py; each test's outcome, and stdout."""
    project = tmp_path / sample
    shutil.copytree(HERE / sample, project, ignore=shutil.ignore_patterns("__pycache__"))
    for check in project.rglob("check_*.py"):
        check.rename(check.with_name(_user_name(check.name)))
    report = tmp_path / "report.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITEQ_", "PYTEST_"))}
    env.pop("PYTHONPATH", None)  # the plugin comes from the installed package, not a path
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    if not report.exists():
        pytest.fail(f"pytest wrote no report:\n{result.stdout}\n{result.stderr}")
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):  # noqa: S314 - pytest's own report, just written
        failure = case.find("failure")
        if failure is not None:
            outcomes[case.attrib["name"]] = "failed: " + (failure.attrib.get("message") or "")
        elif case.find("error") is not None or case.find("skipped") is not None:
            outcomes[case.attrib["name"]] = "error or skipped"
        else:
            outcomes[case.attrib["name"]] = "passed"
    return outcomes, result.stdout


def _user_name(name: str) -> str:
    """A sample's check file's name as a user's test file (check_shop.py: test_shop.py)."""
    return "test_" + name.removeprefix("check_")


def test_the_sample_apps_tests_pass_and_its_broken_jobs_fail_their_tests(tmp_path: Path) -> None:
    outcomes, stdout = run_pytest("sample_app", tmp_path)
    assert re.search(r"^plugins: .*liteq-jobs", stdout, re.M)  # found through the entry point
    meant_to_fail = {"test_a_broken_job_fails", "test_a_broken_job_fails_eagerly"}
    assert {name for name, outcome in outcomes.items() if outcome == "passed"} == {
        "test_the_store_is_the_apps",
        "test_signup_sends_a_welcome_mail",
        "test_enqueued_finds_the_mail_without_sending_it",
        "test_a_delayed_job_runs_only_after_advance",
        "test_a_retry_with_backoff_is_reached_by_advance",
        "test_the_daily_report_runs_at_midnight[12]",
        "test_the_daily_report_runs_at_midnight[23]",
        "test_the_apps_store_runs_a_schedule",
        "test_drain_follows_jobs_enqueued_by_jobs",
        "test_a_coroutine_job_is_drained",
        "test_eager_runs_at_once_and_refuses_what_enqueue_refuses",
        "test_a_job_that_enqueues_itself_forever_stops_at_max_jobs",
        "test_a_sqlite_file_of_its_own",
    }, outcomes
    for name in meant_to_fail:
        assert outcomes[name].startswith("failed: RuntimeError: no template for order 104")
    # The failure names the job, and says its failure was recorded.
    assert "liteq: raised by job" in stdout and "send_invoice(1042)" in stdout
    assert "recorded as failed" in stdout


def test_without_the_plugin_the_apps_store_has_no_url(tmp_path: Path) -> None:
    outcomes, stdout = run_pytest("sample_app", tmp_path, "-p", "no:liteq")
    assert "no store URL" in stdout  # liteq_url came from the plugin, and is off with it
    assert "passed" not in outcomes.values()


def test_the_starlette_recipe_runs(tmp_path: Path) -> None:
    outcomes, stdout = run_pytest("sample_web", tmp_path)
    assert outcomes == {
        "test_signup_enqueues_a_welcome_mail": "passed",
        "test_signup_sends_it_at_once_in_eager_mode": "passed",
        "test_a_bad_address_fails_the_test": "passed",
    }, stdout


def test_the_recipes_in_the_docs_are_the_samples_these_tests_run() -> None:
    """Each file a recipe shows (`# path` on its first line) is the sample's file at that
    path, whole (or a part of it, marked `(excerpt)`), test_*.py being check_*.py here."""
    docs = (HERE.parent / "docs" / "testing.md").read_text()
    starts = ["## Recipe: plain pytest", "## Recipe: a Starlette", "## Recipe: a Django"]
    plain, web, django = (docs.index(start) for start in starts)
    for sample, recipe, least in (
        ("sample_app", docs[plain:web], 4),
        ("sample_web", docs[web:django], 3),
    ):
        blocks = re.findall(
            r"```(?:python|ini)\n# (\S+)( \(excerpt\))?\n(.*?)```", recipe, flags=re.DOTALL
        )
        assert len(blocks) >= least, sample
        for path, excerpt, code in blocks:
            here = Path(path)
            if here.name.startswith("test_"):
                here = here.with_name("check_" + here.name.removeprefix("test_"))
            text = (HERE / sample / here).read_text()
            if excerpt:
                assert code.strip() in text, f"docs/testing.md: {path} ({sample})"
            else:
                assert code.strip() == text.strip(), f"docs/testing.md: {path} ({sample})"
