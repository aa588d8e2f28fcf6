"""`liteq dashboard`: a real server process on a free loopback port, a real queue (a file,
and PostgreSQL), and a real headless browser (Debian's chromium, driven by Selenium)."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import psycopg
import pytest

import liteq
from liteq import admin
from liteq.stores import BaseStore
from liteq.stores.contract import WorkerInfo
from tests import pg
from tests.helpers import ROOT, liteq_work, wait_until
from tests.jobs import Described, Fails, Noop, Sleeps, Waits

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: Where screenshots go: $LITEQ_SCREENSHOTS (docs/img to refresh the README's), else a
#: directory of the test run.
SHOTS_ENV = "LITEQ_SCREENSHOTS"
OWNER = "test-owner"


# -- the parts --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        reason = "no chromium and chromedriver: apt-get install chromium chromium-driver"
        if os.environ.get("LITEQ_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (LITEQ_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


class Server:
    """A `liteq dashboard` process and how to reach it."""

    def __init__(self, db: str, *args: str, cwd: Path = ROOT) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "liteq", "dashboard", "--db", db, "--port", "0", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},  # tests.jobs, from any directory
        )
        assert self.proc.stdout is not None
        self.said: list[str] = []
        while not any(line.startswith("open ") for line in self.said):
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"the dashboard did not start: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            self.said.append(line.rstrip("\n"))
        opened = next(line for line in self.said if line.startswith("open "))
        self.url = opened.split()[1]  # http://127.0.0.1:PORT/[?token=…]
        parts = urlsplit(self.url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.port = parts.port

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        body = None if form is None else urlencode(form)
        sent = dict(headers or {})
        if form is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, text

    def stop(self) -> str:
        """Stop it as an operator would (SIGTERM); what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err
        return err


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(db: str, *args: str, **kwargs: Any) -> Server:
        server = Server(db, *args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        err = server.stop()
        assert "Traceback" not in err, err


@pytest.fixture(params=["sqlite", "postgres"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, BaseStore]]:
    """(URL, store) of a new queue: a file, or a schema on the PostgreSQL test server."""
    if request.param == "sqlite":
        path = tmp_path / "jobs.sqlite"
        store: BaseStore = liteq.SQLiteStore(path)
        yield str(path), store
        store.close()
    else:
        schema = pg.new_schema()
        url = pg.url(schema)
        store = liteq.connect(url)
        yield url, store
        store.close()
        pg.drop_schema(schema)


@pytest.fixture
def file_queue(tmp_path: Path) -> Iterator[tuple[str, BaseStore]]:
    path = tmp_path / "jobs.sqlite"
    store = liteq.SQLiteStore(path)
    yield str(path), store
    store.close()


def shot(browser: WebDriver, name: str, tmp_path: Path) -> Path:
    """Save a screenshot of the page as NAME.png; its path."""
    folder = Path(os.environ.get(SHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a page, not a blank
    return path


def fill(store: BaseStore) -> dict[str, list[int]]:
    """Jobs in every status, through the store's own API as workers would leave them."""
    ids: dict[str, list[int]] = {}
    ids["completed"] = [
        store.enqueue(Noop(n), queue="mail", delete_on_complete=False).id for n in range(3)
    ]
    for _ in ids["completed"]:
        claimed = store.claim(OWNER, ["mail"])
        assert claimed is not None
        store.complete(claimed)
    failed = store.enqueue(Fails("card declined"), queue="payments", max_attempts=1)
    claimed = store.claim(OWNER, ["payments"])
    assert claimed is not None and claimed.id == failed.id
    store.fail(claimed, "RuntimeError: card declined", "Traceback (most recent call last):\n…")
    ids["failed"] = [failed.id]
    waiting = store.enqueue(Waits("transcode"), queue="video", max_attempts=3)
    claimed = store.claim(OWNER, ["video"])
    assert claimed is not None
    store.wait_async(claimed)
    ids["wait_async"] = [waiting.id]
    ids["running"] = [store.enqueue(Noop(9), queue="images").id]
    assert store.claim(OWNER, ["images"]) is not None
    ids["queued"] = [store.enqueue(Noop(n), queue="images").id for n in range(4)]
    ids["queued"].append(store.enqueue(Noop(5), queue="mail", delay=3600).id)
    return ids


def cell(browser: WebDriver, queue: str, status: str) -> str:
    selector = f'#queues tr[data-queue="{queue}"] td[data-status="{status}"]'
    for _ in range(50):
        try:
            return str(browser.find_element(By.CSS_SELECTOR, selector).text)
        except StaleElementReferenceException:  # refreshed between finding and reading
            time.sleep(0.02)
    raise AssertionError(f"{selector} never held still")


def notice_of(browser: WebDriver) -> str:
    """What the page's banner says ("" if it has none)."""
    for _ in range(50):
        try:
            found = browser.find_elements(By.ID, "notice")
            return str(found[0].text) if found else ""
        except StaleElementReferenceException:  # refreshed between finding and reading
            time.sleep(0.02)
    raise AssertionError("#notice never held still")


def listed(browser: WebDriver) -> list[int]:
    """The ids of the jobs table's rows, in order."""
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
    return [int(row.get_attribute("data-id") or 0) for row in rows]


def click(browser: WebDriver, selector: str) -> None:
    """Click and wait for the page it leads to."""
    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, selector).click()
    wait_until(lambda: _stale(old), 10, f"a new page after clicking {selector}")


def _stale(element: Any) -> bool:
    try:
        element.tag_name  # noqa: B018 - raises once the page it was on is gone
    except Exception:
        return True
    return False


def present(browser: WebDriver, selector: str) -> bool:
    try:
        browser.find_element(By.CSS_SELECTOR, selector)
    except NoSuchElementException:
        return False
    return True


# -- looking --------------------------------------------------------------------------------
def test_the_overview_shows_the_counts_the_store_holds(
    browser: WebDriver,
    serve: Callable[..., Server],
    queue: tuple[str, BaseStore],
    tmp_path: Path,
) -> None:
    url, store = queue
    fill(store)
    server = serve(url)
    browser.get(server.url)
    for q in admin.queues(store):
        for status in ("queued", "running", "wait_async", "failed", "completed"):
            held = q.counts.get(liteq.Status(status), 0)
            assert cell(browser, q.queue, status) == str(held), (q.queue, status)
        assert cell(browser, q.queue, "due") == str(q.due)
    assert cell(browser, "mail", "queued") == "1" and cell(browser, "mail", "due") == "0"
    assert browser.find_element(By.ID, "workers-alive").text == "0"
    shot(browser, f"overview-{'file' if '://' not in url else 'postgres'}", tmp_path)


def test_the_overview_refreshes_itself_without_a_reload(
    browser: WebDriver, serve: Callable[..., Server], file_queue: tuple[str, BaseStore]
) -> None:
    url, store = file_queue
    store.enqueue(Noop(1), queue="mail")
    server = serve(url)
    browser.get(server.url)
    assert cell(browser, "mail", "queued") == "1"
    browser.execute_script("window.notReloaded = true")
    for n in range(4):
        store.enqueue(Noop(n), queue="mail")
    store.enqueue(Noop(9), queue="fresh")
    wait_until(lambda: cell(browser, "mail", "queued") == "5", 15, "the counts to refresh")
    wait_until(lambda: present(browser, 'tr[data-queue="fresh"]'), 15, "a new queue to show")
    assert browser.execute_script("return window.notReloaded") is True


def test_only_failures_there_are_show_in_red(
    browser: WebDriver, serve: Callable[..., Server], file_queue: tuple[str, BaseStore]
) -> None:
    url, store = file_queue
    fill(store)  # one failed job, in payments; none in the other queues
    server = serve(url)
    browser.get(server.url)
    red = "rgba(196, 55, 47, 1)"  # --bad, #c4372f

    def colour(queue: str) -> str:
        selector = f'#queues tr[data-queue="{queue}"] td[data-status="failed"]'
        found = browser.find_element(By.CSS_SELECTOR, selector)
        shown = found.find_elements(By.TAG_NAME, "a") or [found]
        return str(shown[0].value_of_css_property("color"))

    assert cell(browser, "payments", "failed") == "1" and colour("payments") == red
    for zero in ("mail", "images", "video"):
        assert cell(browser, zero, "failed") == "0"
        assert colour(zero) != red, zero


@pytest.mark.soak  # (a browser through two file swaps: ~14 s; `pytest -m soak`)
def test_a_replaced_or_deleted_queue_file_is_noticed_within_a_refresh(
    browser: WebDriver, serve: Callable[..., Server], tmp_path: Path
) -> None:
    path = tmp_path / "jobs.sqlite"
    old = liteq.SQLiteStore(path)
    old_ids = [old.enqueue(Noop(n), queue="old").id for n in range(3)]
    old.close()
    restored = tmp_path / "backup.sqlite"  # another queue, moved over it as a restore would
    new = liteq.SQLiteStore(restored)
    new_ids = [new.enqueue(Described(f"new {n}"), queue="new").id for n in range(5)]
    new.close()
    assert old_ids == new_ids[:3]  # job 1 of one file is another job than job 1 of the other
    server = serve(str(path), "--import", "tests.jobs")
    browser.get(server.url)
    assert cell(browser, "old", "queued") == "3" and not present(browser, "#notice")
    csrf = _csrf(server)
    browser.execute_script("window.notReloaded = true")

    os.replace(restored, path)
    wait_until(lambda: present(browser, 'tr[data-queue="new"]'), 15, "the new file's queues")
    assert not present(browser, 'tr[data-queue="old"]')
    assert cell(browser, "new", "queued") == "5"
    notice = notice_of(browser)
    assert f"The queue file {path} was replaced" in notice and "showing the new file" in notice
    assert browser.execute_script("return window.notReloaded") is True  # within a refresh
    shot(browser, "replaced", tmp_path)
    for page in ("/jobs", "/workers", f"/jobs/{new_ids[0]}"):
        browser.get(server.base + page)
        assert "showing the new file" in notice_of(browser), page
    assert "new 0" in browser.find_element(By.TAG_NAME, "h2").text
    # An action from a page of the old file does nothing: job 1 here is another job.
    status, _, body = server.request(
        "POST", f"/jobs/{old_ids[0]}/delete", {"csrf": csrf, "file": "0"}
    )
    assert status == 409 and "replaced since that page was shown" in body
    status, _, _ = server.request("POST", "/queues/new/pause", {"csrf": csrf, "file": "0"})
    assert status == 409
    readable = liteq.SQLiteStore(path, readonly=True)
    assert readable.count() == 5 and readable.paused() == set()
    readable.close()
    # A page of the new file acts on it.
    browser.get(server.url)
    click(browser, 'tr[data-queue="new"] button.pause')
    readable = liteq.SQLiteStore(path, readonly=True)
    assert readable.paused() == {"new"}
    readable.close()

    browser.get(server.url)
    browser.execute_script("window.notReloaded = true")
    for name in os.listdir(tmp_path):
        if name.startswith("jobs.sqlite"):
            os.remove(tmp_path / name)
    wait_until(lambda: not present(browser, "#queues"), 15, "the figures to go")
    notice = notice_of(browser)
    assert f"No queue at {path} any more" in notice
    assert browser.execute_script("return window.notReloaded") is True
    shot(browser, "deleted", tmp_path)
    for page in ("/", "/jobs", f"/jobs/{new_ids[0]}", "/workers", "/metrics"):
        status, _, body = server.request("GET", page)
        assert status == 503 and "No queue at" in body and "new 0" not in body, page
    status, _, _ = server.request("POST", "/queues/new/resume", {"csrf": csrf, "file": "1"})
    assert status == 503
    assert not path.exists()  # nothing made a file there, to show or to act on

    # Something that is no queue: said, and left as it was.
    (tmp_path / "notes.txt").write_text("not a queue\n")
    os.replace(tmp_path / "notes.txt", path)

    wait_until(lambda: "cannot be shown" in notice_of(browser), 15, "the file to be refused")
    assert "is not an SQLite file, so not a liteq queue" in notice_of(browser)
    assert not present(browser, "#queues")
    assert path.read_text() == "not a queue\n"

    put_back = liteq.SQLiteStore(tmp_path / "other.sqlite")
    put_back.enqueue(Noop(1), queue="back")
    put_back.close()
    os.replace(tmp_path / "other.sqlite", path)
    wait_until(lambda: present(browser, 'tr[data-queue="back"]'), 15, "the file put back")
    assert "showing the new file" in notice_of(browser)


def test_the_workers_page_and_the_overview_show_a_working_queue(
    browser: WebDriver,
    serve: Callable[..., Server],
    file_queue: tuple[str, BaseStore],
    tmp_path: Path,
) -> None:
    url, store = file_queue
    job = store.enqueue(Sleeps(60), queue="reports")
    for n in range(40):
        store.enqueue(Noop(n), queue=("mail", "images")[n % 2], delete_on_complete=n % 3 == 0)
    for n in range(3):
        store.enqueue(Fails(f"card {n} declined"), queue="payments", max_attempts=2)
    store.enqueue(Noop(99), queue="mail", delay=3600)
    worker = liteq_work(url, "--processes", "2", "--lease", "3")
    try:
        wait_until(lambda: store.get(job.id).status is liteq.Status.RUNNING, 30, "the job to run")
        wait_until(
            lambda: (
                store.count(status=liteq.Status.FAILED) == 3
                and sum(done for done, _ in store.finished(since=0).values()) >= 40
                # (every failed attempt told by a beat, not only the jobs' final status)
                and sum(failed for _, failed in store.finished(since=0).values()) == 6
                and all(w.rss for w in store.workers())
            ),
            60,
            "the jobs to finish and the workers to beat",
        )
        server = serve("jobs.sqlite", "--import", "tests.jobs", cwd=tmp_path)
        browser.get(server.base + "/workers")
        rows = browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr")
        workers = store.workers()
        assert len(rows) == len(workers) == 2
        for row, info in zip(rows, workers, strict=True):
            cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
            assert cells[0] == info.host and cells[1] == str(info.pid)
            assert cells[4] == str(info.in_flight)
            assert cells[5] == (str(job.id) if info.current_job == job.id else "-")
            assert re.fullmatch(r"[\d,]+\.\d MiB", cells[7]) and float(cells[7].split()[0]) > 5
        assert sum(w.current_job == job.id for w in workers) == 1
        assert [w.in_flight for w in workers if w.current_job == job.id] == [1]
        shot(browser, "workers", tmp_path)

        browser.get(server.url)
        assert browser.find_element(By.ID, "workers-alive").text == "2"
        assert cell(browser, "payments", "failed") == "3"
        chart = browser.find_element(By.CSS_SELECTOR, "svg.chart.big").get_attribute("aria-label")
        assert chart is not None and chart.startswith("40 completed, 6 failed")
        shot(browser, "dashboard", tmp_path)  # the README's
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)


def test_a_filter_narrows_the_table_and_pages_keep_it(
    browser: WebDriver,
    serve: Callable[..., Server],
    file_queue: tuple[str, BaseStore],
    tmp_path: Path,
) -> None:
    url, store = file_queue
    ids = fill(store)
    for n in range(60):  # more than a page of images
        store.enqueue(Noop(n), queue="images")
    server = serve(url, "--import", "tests.jobs")
    browser.get(server.base + "/jobs")
    shown = listed(browser)
    assert len(shown) == 50 and shown == sorted(shown, reverse=True)  # newest first

    Select(browser.find_element(By.NAME, "status")).select_by_value("failed")
    click(browser, "#filters button[type=submit]")
    assert listed(browser) == ids["failed"]
    assert "RuntimeError: card declined" in browser.find_element(By.ID, "jobs").text
    shot(browser, "jobs-failed", tmp_path)

    browser.get(server.base + "/jobs")
    browser.find_element(By.NAME, "queue").send_keys("images")
    Select(browser.find_element(By.NAME, "status")).select_by_value("queued")
    Select(browser.find_element(By.NAME, "order")).select_by_value("oldest")
    click(browser, "#filters button[type=submit]")
    first = listed(browser)
    click(browser, "#next")
    second = listed(browser)
    expected = [m.id for m in store.jobs(queue="images", status=liteq.Status.QUEUED)]
    assert first + second == sorted(expected) and len(first) == 50
    assert not present(browser, "#next")

    for bad in ("before=99999999999999999999", "after=-1", "before=ten", "status=lost"):
        status, _, body = server.request("GET", f"/jobs?{bad}")
        assert status == 400 and "bad filter" in body, bad
    browser.get(server.base + "/jobs?" + urlencode({"error": "declined"}))
    assert listed(browser) == ids["failed"]


def test_a_job_page_shows_every_field_its_state_error_and_traceback(
    browser: WebDriver,
    serve: Callable[..., Server],
    file_queue: tuple[str, BaseStore],
    tmp_path: Path,
) -> None:
    url, store = file_queue
    ids = fill(store)
    server = serve(url, "--import", "tests.jobs")
    browser.get(f"{server.base}/jobs/{ids['failed'][0]}")
    assert browser.find_element(By.ID, "status").text == "failed"
    assert '"message": "card declined"' in browser.find_element(By.ID, "state").text
    assert browser.find_element(By.ID, "error").text == "RuntimeError: card declined"
    assert browser.find_element(By.ID, "traceback").text.startswith("Traceback")
    fields = browser.find_element(By.ID, "fields").text
    assert "tests.jobs.Fails" in fields and "payments" in fields and "1 of 1" in fields
    timeline = browser.find_element(By.ID, "timeline").text
    assert "created" in timeline and "finished: failed" in timeline
    shot(browser, "job", tmp_path)
    for missing in ("/jobs/999999", "/jobs/99999999999999999999", "/jobs/0"):
        status, _, body = server.request("GET", missing)
        assert status == 404 and "no job with id" in body, missing


def test_the_job_timeline_lines_up_its_times(
    browser: WebDriver, serve: Callable[..., Server], file_queue: tuple[str, BaseStore]
) -> None:
    url, store = file_queue
    ids = fill(store)
    server = serve(url)
    for job_id in (ids["failed"][0], ids["completed"][0], ids["queued"][-1]):
        browser.get(f"{server.base}/jobs/{job_id}")
        # Where each row's time starts: its last piece of text, wherever the markup puts it.
        lefts = browser.execute_script(
            "return [...document.querySelectorAll('#timeline li')].map(li => {"
            "  const range = document.createRange();"
            "  range.selectNodeContents(li.lastChild);"
            "  return range.getBoundingClientRect().left; })"
        )
        labels = browser.find_elements(By.CSS_SELECTOR, "#timeline .what")
        assert len(lefts) == len(labels) >= 2
        assert max(lefts) - min(lefts) < 1, (job_id, lefts)
        xs = {label.rect["x"] for label in labels}
        ys = [label.rect["y"] for label in labels]
        assert len(xs) == 1 and ys == sorted(ys) and len(set(ys)) == len(ys)
        assert max(label.rect["x"] + label.rect["width"] for label in labels) < min(lefts)


# -- acting ---------------------------------------------------------------------------------
def test_retry_puts_a_failed_job_back_in_the_queue(
    browser: WebDriver, serve: Callable[..., Server], queue: tuple[str, BaseStore]
) -> None:
    url, store = queue
    (failed,) = fill(store)["failed"]
    server = serve(url)
    browser.get(f"{server.base}/jobs/{failed}")
    click(browser, "#retry")
    assert store.get(failed).status is liteq.Status.QUEUED
    assert "Re-queued" in browser.find_element(By.ID, "said").text
    assert browser.find_element(By.ID, "status").text == "queued"


def test_a_delete_asks_first(
    browser: WebDriver, serve: Callable[..., Server], file_queue: tuple[str, BaseStore]
) -> None:
    url, store = file_queue
    (failed,) = fill(store)["failed"]
    server = serve(url)
    browser.get(f"{server.base}/jobs/{failed}")
    click(browser, "#delete")
    assert f"Delete job {failed}" in browser.find_element(By.ID, "confirm").text
    assert store.get(failed).status is liteq.Status.FAILED  # asking deleted nothing
    click(browser, "#cancel")
    assert browser.current_url.endswith(f"/jobs/{failed}")
    click(browser, "#delete")
    click(browser, "#confirm-button")
    assert f"Job {failed} deleted" in browser.find_element(By.ID, "message").text
    with pytest.raises(liteq.JobNotFound):
        store.get(failed)


def test_queue_actions_pause_resume_retry_all_failed_and_purge(
    browser: WebDriver, serve: Callable[..., Server], queue: tuple[str, BaseStore]
) -> None:
    url, store = queue
    ids = fill(store)
    more = store.enqueue(Fails("again"), queue="payments", max_attempts=1)
    claimed = store.claim(OWNER, ["payments"])
    assert claimed is not None
    store.fail(claimed, "RuntimeError: again")
    server = serve(url)
    browser.get(server.url)

    click(browser, 'tr[data-queue="images"] button.pause')
    assert store.paused() == {"images"}
    assert "paused" in browser.find_element(By.CSS_SELECTOR, 'tr[data-queue="images"]').text
    click(browser, 'tr[data-queue="images"] button.pause')
    assert store.paused() == set()

    click(browser, 'tr[data-queue="payments"] button.retry-failed')
    assert (
        "Re-queued 2 failed jobs of queue payments" in browser.find_element(By.ID, "message").text
    )
    assert {store.get(i).status for i in (*ids["failed"], more.id)} == {liteq.Status.QUEUED}

    browser.get(server.url)
    click(browser, 'tr[data-queue="mail"] form.purge button')
    browser.find_element(By.NAME, "older_than_hours").clear()
    browser.find_element(By.NAME, "older_than_hours").send_keys("0")
    click(browser, "#purge-count")
    assert "Delete 3 completed jobs of queue mail" in browser.find_element(By.ID, "confirm").text
    assert store.count(queue="mail", status=liteq.Status.COMPLETED) == 3
    click(browser, "#confirm-button")
    assert "Deleted 3 completed jobs" in browser.find_element(By.ID, "message").text
    assert store.count(queue="mail", status=liteq.Status.COMPLETED) == 0
    assert store.count(queue="mail", status=liteq.Status.QUEUED) == 1  # the rest is safe


def test_an_async_job_is_resolved_with_data_from_the_page(
    browser: WebDriver, serve: Callable[..., Server], file_queue: tuple[str, BaseStore]
) -> None:
    url, store = file_queue
    (waiting,) = fill(store)["wait_async"]
    server = serve(url, "--import", "tests.jobs")

    def resolve(data: str) -> None:
        browser.get(f"{server.base}/jobs/{waiting}")
        box = browser.find_element(By.CSS_SELECTOR, "#resolve textarea")
        box.clear()
        box.send_keys(data)
        click(browser, "#resolve button")

    resolve('"nonsense')
    assert "not JSON" in browser.find_element(By.ID, "message").text
    assert store.get(waiting).status is liteq.Status.WAIT_ASYNC
    resolve('"raise"')  # its resolve_wait_async raises ValueError
    said = browser.find_element(By.ID, "message").text
    assert "raised ValueError: the callback data was bad (it still waits)" in said
    assert store.get(waiting).status is liteq.Status.WAIT_ASYNC
    resolve('"queued"')  # its resolve_wait_async: run it again
    assert store.get(waiting).status is liteq.Status.QUEUED
    assert browser.find_element(By.ID, "status").text == "queued"
    assert browser.find_element(By.ID, "said").text == "Resolved."
    # A job deleted on completion (the default) is gone once resolved: the page says so.
    claimed = store.claim(OWNER, ["video"])
    assert claimed is not None and claimed.id == waiting
    store.wait_async(claimed)
    resolve('"completed"')
    assert f"Job {waiting} resolved: completed" in browser.find_element(By.ID, "message").text
    with pytest.raises(liteq.JobNotFound):
        store.get(waiting)
    # Counted where it completed, though no worker ran it: the first screen agrees.
    assert store.totals()["video"] == (1, 0) and store.finished(since=0)["video"] == (1, 0)
    browser.get(server.url)
    tile = "//div[contains(@class, 'tile')][contains(., 'completed in the last hour')]/span"
    assert browser.find_element(By.XPATH, tile).text == "1"


# -- security -------------------------------------------------------------------------------
XSS_DESCRIPTION = "<script>window.pwned = 'description'</script>"
XSS_ERROR = "<img src=x onerror=\"window.pwned = 'error'\">"
XSS_QUEUE = "<b onmouseover=\"window.pwned = 'queue'\">q</b>"


def test_job_text_shows_as_text_and_never_runs(
    browser: WebDriver,
    serve: Callable[..., Server],
    file_queue: tuple[str, BaseStore],
    tmp_path: Path,
) -> None:
    url, store = file_queue
    hostile = store.enqueue(Described(XSS_DESCRIPTION), queue=XSS_QUEUE, max_attempts=1)
    claimed = store.claim(OWNER)
    assert claimed is not None
    store.fail(claimed, XSS_ERROR, f"Traceback: {XSS_ERROR}</pre><script>window.pwned=1</script>")
    server = serve(url, "--import", "tests.jobs")
    for page in ("/", "/jobs", f"/jobs/{hostile.id}", "/jobs?" + urlencode({"queue": XSS_QUEUE})):
        browser.get(server.base + page)
        assert browser.execute_script("return window.pwned") is None, page
        assert not browser.find_elements(By.CSS_SELECTOR, "main img, main b, main script")
        text = browser.find_element(By.TAG_NAME, "main").text
        if page != "/":
            assert XSS_DESCRIPTION in text and XSS_ERROR in text, page
        assert XSS_QUEUE in text, page
    shot(browser, "xss", tmp_path)


def _csrf(server: Server) -> str:
    _, _, body = server.request("GET", "/")
    found = re.search(r'name="csrf" value="([^"]+)"', body)
    assert found is not None
    return found.group(1)


def test_a_post_without_the_csrf_token_is_refused(
    serve: Callable[..., Server], file_queue: tuple[str, BaseStore]
) -> None:
    url, store = file_queue
    (failed,) = fill(store)["failed"]
    server = serve(url)
    csrf = _csrf(server)
    for form, headers in (
        ({}, {}),
        ({"csrf": "guessed"}, {}),
        ({"csrf": csrf}, {"Origin": "http://evil.example"}),
    ):
        status, _, body = server.request("POST", f"/jobs/{failed}/retry", form, headers)
        assert status == 403, body
        assert store.get(failed).status is liteq.Status.FAILED
    status, _, _ = server.request("POST", "/queues/images/pause", {})
    assert status == 403 and store.paused() == set()
    # A page of another site whose name resolves to 127.0.0.1 (DNS rebinding) reads nothing.
    for path, host in (("/", "evil.example:1"), ("/jobs", "[bad"), ("/metrics", "")):
        status, _, body = server.request("GET", path, headers={"Host": host})
        assert status == 421 and "failed" not in body and csrf not in body, path
    status, _, _ = server.request(
        "POST", f"/jobs/{failed}/retry", {"csrf": csrf}, {"Host": "evil.example"}
    )
    assert status == 421 and store.get(failed).status is liteq.Status.FAILED
    status, _, body = server.request("POST", "/queues/a%00b/pause", {"csrf": csrf})
    assert status == 400 and "NUL" in body and store.paused() == set()
    status, headers, _ = server.request("POST", f"/jobs/{failed}/retry", {"csrf": csrf})
    assert status == 303 and store.get(failed).status is liteq.Status.QUEUED


def test_every_response_carries_the_security_headers(
    serve: Callable[..., Server], file_queue: tuple[str, BaseStore]
) -> None:
    url, store = file_queue
    ids = fill(store)
    server = serve(url)
    for path in (
        "/",
        "/live/overview",
        "/workers",
        "/jobs",
        f"/jobs/{ids['failed'][0]}",
        "/metrics",
        "/jobs/424242",
    ):
        _, headers, body = server.request("GET", path)
        assert "script-src 'self'" in headers["content-security-policy"], path
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store", path
        assert "<script>" not in body and " style=" not in body, path  # no inline script or style


def test_a_bind_beyond_loopback_needs_a_token_checked_on_every_request(
    browser: WebDriver,
    serve: Callable[..., Server],
    file_queue: tuple[str, BaseStore],
    tmp_path: Path,
) -> None:
    url, store = file_queue
    (failed,) = fill(store)["failed"]
    refused = subprocess.run(
        [sys.executable, "-m", "liteq", "dashboard", "--db", url, "--host", "0.0.0.0"],  # noqa: S104
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "LITEQ_DASHBOARD_TOKEN"},
    )
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "give a token" in refused.stderr

    server = serve(url, "--host", "0.0.0.0", "--token", "generate")  # noqa: S104
    token = urlsplit(server.url).query.removeprefix("token=")
    assert len(token) >= 32 and sum(token in line for line in server.said) == 1
    # An address one can open (no one can open http://0.0.0.0/), and where it listens.
    assert server.url.startswith(f"http://127.0.0.1:{server.port}/?token=")
    said = "\n".join(server.said)
    assert "0.0.0.0:" not in said and "listening on all addresses" in said
    assert f"http://{socket.gethostname()}:{server.port}/" in said
    for path in ("/", "/jobs", f"/jobs/{failed}", "/metrics", "/static/liteq.css", "/?token=wrong"):
        status, _, body = server.request("GET", path)
        assert status == 401 and "failed" not in body, path
    status, _, _ = server.request("POST", f"/jobs/{failed}/retry", {"csrf": "x"})
    assert status == 401
    status, _, body = server.request(
        "GET", "/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200 and "liteq_jobs{" in body

    browser.get(server.url)  # ?token=… becomes a cookie, and leaves the address bar
    assert "token" not in browser.current_url
    assert cell(browser, "payments", "failed") == "1"
    browser.get(f"{server.base}/jobs/{failed}")
    click(browser, "#retry")
    assert store.get(failed).status is liteq.Status.QUEUED
    browser.delete_all_cookies()


def test_read_only_shows_no_action_and_refuses_every_one(
    browser: WebDriver, serve: Callable[..., Server], queue: tuple[str, BaseStore]
) -> None:
    url, store = queue
    ids = fill(store)
    (failed,) = ids["failed"]
    server = serve(url, "--read-only")
    for page in ("/", "/jobs", f"/jobs/{failed}", f"/jobs/{ids['wait_async'][0]}", "/workers"):
        browser.get(server.base + page)
        assert browser.find_elements(By.ID, "read-only")
        assert not browser.find_elements(
            By.CSS_SELECTOR, "main form:not(#filters), main button:not(#filters button)"
        ), page
    assert "csrf" not in server.request("GET", f"/jobs/{failed}")[2]
    for method, path in (
        ("POST", f"/jobs/{failed}/retry"),
        ("POST", f"/jobs/{failed}/delete"),
        ("GET", f"/jobs/{failed}/delete"),
        ("POST", "/queues/payments/retry-failed"),
        ("POST", "/queues/mail/pause"),
        ("GET", "/queues/mail/purge?status=completed"),
    ):
        status, _, _ = server.request(method, path, {"csrf": "x"} if method == "POST" else None)
        assert status == 403, (method, path)
    assert store.get(failed).status is liteq.Status.FAILED and store.paused() == set()
    assert store.count(status=liteq.Status.COMPLETED) == 3


# -- metrics, and the command ------------------------------------------------------------------
def _metrics(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_are_in_prometheus_text_format(
    serve: Callable[..., Server], queue: tuple[str, BaseStore]
) -> None:
    url, store = queue
    for n in range(5):
        store.enqueue(Noop(n), queue="mail", delete_on_complete=False)
    store.enqueue(Fails(), queue='say "hi"\\', max_attempts=1)
    worker = liteq_work(url, "--burst", "--processes", "1", stderr=subprocess.DEVNULL)
    assert worker.wait(60) == 0
    store.enqueue(Noop(6), queue="mail")
    # A long-lived queue's counter, as a worker's beat adds to it: every digit must show.
    now = store.clock()
    store.register_worker(WorkerInfo("big", "host", 1, None, now, now, 0.001))
    store.beat("big", jobs_done=1, current_job=None, finished={"bulk": (12_345_679, 3)})
    server = serve(url)
    status, headers, text = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _metrics(text)
    assert samples['liteq_jobs{queue="mail",status="queued"}'] == 1
    assert samples['liteq_jobs{queue="mail",status="completed"}'] == 5
    assert samples['liteq_jobs_completed_total{queue="mail"}'] == 5
    assert samples['liteq_attempts_failed_total{queue="say \\"hi\\"\\\\"}'] == 1
    assert samples['liteq_jobs{queue="say \\"hi\\"\\\\",status="failed"}'] == 1
    assert samples["liteq_workers_alive"] == 0
    assert 0 <= samples['liteq_oldest_due_job_age_seconds{queue="mail"}'] < 60
    assert "# TYPE liteq_jobs_completed_total counter" in text
    assert 'liteq_jobs_completed_total{queue="bulk"} 12345679\n' in text


def test_metrics_give_each_live_workers_jobs_in_flight(
    serve: Callable[..., Server], queue: tuple[str, BaseStore]
) -> None:
    url, store = queue
    now = store.clock()
    for owner, pid in (("one", 7), ("two", 8)):
        store.register_worker(WorkerInfo(owner, 'far "away"', pid, None, now, now, 600))
    store.beat("one", jobs_done=1, current_job=None, finished={}, in_flight=3)
    server = serve(url)
    status, _, text = server.request("GET", "/metrics")
    assert status == 200
    samples = _metrics(text)
    assert samples["liteq_workers_alive"] == 2
    assert samples['liteq_worker_jobs_in_flight{worker="far \\"away\\"/7"}'] == 3
    assert samples['liteq_worker_jobs_in_flight{worker="far \\"away\\"/8"}'] == 0
    assert "# TYPE liteq_worker_jobs_in_flight gauge" in text


def test_the_command_refuses_bad_input_in_one_line_and_makes_no_file(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "liteq", "dashboard", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    for args, says in (
        (["--db", "typo.sqlite"], "no queue at typo.sqlite"),
        (["--db", "typo.sqlite", "--read-only"], "no queue at"),
        (["--db", "q.sqlite", "--port", "http"], "expected a port number"),
        (["--db", "q.sqlite", "--token", ""], "the token is empty"),
    ):
        done = run(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert says in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert list(tmp_path.iterdir()) == []
    schema = pg.new_schema()  # nor a schema on PostgreSQL
    done = run("--db", pg.url(schema))
    assert done.returncode == 2 and f"no liteq queue in schema {schema}" in done.stderr
    with psycopg.connect(pg.dsn_or_skip()) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        assert found.fetchone() is None
    # A port another program holds.
    liteq.SQLiteStore(tmp_path / "q.sqlite").close()
    server = Server(str(tmp_path / "q.sqlite"), cwd=tmp_path)
    try:
        done = run("--db", "q.sqlite", "--port", str(server.port))
        assert done.returncode == 2 and "cannot listen on" in done.stderr
    finally:
        server.stop()
    # Without its extra installed: how to install it.
    blocked = (
        "import sys; sys.modules['starlette'] = None; from liteq.cli import main; "
        "sys.exit(main(['dashboard', '--db', 'q.sqlite']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "pip install 'liteq-jobs[dashboard]'" in done.stderr


def test_the_core_never_imports_the_web_stack() -> None:
    code = (
        "import sys, liteq, liteq.cli, liteq.admin; "
        "liteq.cli.build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('starlette', 'uvicorn', 'jinja2', 'multipart', 'liteq.web')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.stdout.strip() == "[]", done.stderr
    assert "liteq.web" not in done.stdout
