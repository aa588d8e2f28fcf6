"""The dashboard's pages and actions, over any store (through liteq.admin)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from liteq import admin
from liteq.errors import JobNotFound, LiteqError, StoreUnavailable
from liteq.status import Status
from liteq.stores.contract import JobQuery, Store
from liteq.timeformat import ago, when
from liteq.waitasync import resolve_wait_async
from liteq.web import charts
from liteq.web.metrics import exposition
from liteq.web.security import Guard, Refused
from liteq.web.snapshot import Snapshot
from liteq.web.source import Source

HERE: Final = Path(__file__).parent
PAGE: Final = 50
#: What an action did, shown on the page it returns to (a fixed text: a link cannot forge one).
SAID: Final = {
    "retried": "Re-queued: it runs again as soon as a worker is free.",
    "restarted": "Restarted: re-queued as new, attempts back to 0.",
    "resolved": "Resolved.",
    "paused": "Paused: workers take no job from this queue until it is resumed.",
    "resumed": "Resumed: workers take its jobs again.",
}


def _when(value: datetime | float | None) -> str:
    """when(), for the store's epoch seconds too."""
    if isinstance(value, float | int):
        value = datetime.fromtimestamp(value)
    return when(value)


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / (1 << 20):,.1f} MiB"


class Dashboard:
    """One store, shown and acted on through a Starlette app (`self.app`); a file's
    replacement is followed (see source)."""

    def __init__(
        self,
        store: Store,
        guard: Guard,
        label: str,
        reopen: Callable[[], Store] | None = None,
    ) -> None:
        self.source = Source(store, reopen)
        self.guard = guard
        self.label = label
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every template, whatever its name: job text is never markup
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters.update(when=_when, ago=ago, mib=_mib)
        self.templates.globals.update(
            label=label, read_only=guard.read_only, csrf=guard.csrf, statuses=list(Status)
        )
        routes = [
            Route("/", self.overview),
            Route("/live/overview", self.overview_part),
            Route("/workers", self.workers),
            Route("/live/workers", self.workers_part),
            Route("/schedules", self.schedules),
            Route("/jobs", self.jobs),
            Route("/jobs/{id:int}", self.job),
            Route("/jobs/{id:int}/{action:str}", self.job_action, methods=["GET", "POST"]),
            Route("/queues/{name:path}/{action:str}", self.queue_action, methods=["GET", "POST"]),
            Route("/metrics", self.metrics),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        self.app = Starlette(
            routes=routes,
            middleware=[
                Middleware(BaseHTTPMiddleware, dispatch=guard.middleware),
                Middleware(BaseHTTPMiddleware, dispatch=self._follow),
            ],
            exception_handlers={
                Refused: self._refused,
                LiteqError: self._failed,
                ValueError: self._refused,  # a value the store refuses (a NUL in a name, say)
            },
        )

    @property
    def store(self) -> Store:
        """The store shown now (another after its file was replaced)."""
        return self.source.store

    @property
    def snapshot(self) -> Snapshot:
        return self.source.snapshot

    def render(self, name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        values.setdefault("notice", self.source.notice)
        values.setdefault("gone", False)
        html = self.templates.get_template(name).render(generation=self.source.generation, **values)
        return HTMLResponse(html, status_code=status_code)

    # -- the file behind the store ------------------------------------------------------------
    async def _follow(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Before each request: notice a queue file replaced or deleted since the last one.
        With no queue to show, every page says so instead of showing the old file's jobs."""
        if request.url.path.startswith("/static/"):
            return await call_next(request)
        gone = await run_in_threadpool(self.source.check)
        if gone is None:
            return await call_next(request)
        path = request.url.path
        if path == "/metrics":  # (a failed scrape: up == 0, not old figures)
            return PlainTextResponse(gone, status_code=503)
        if path.startswith("/live/"):  # a refresh: the banner replaces the figures
            return self.render("_notice.html", notice=gone, gone=True)
        return self.render(
            "message.html",
            503,
            page="",
            title="No queue to show",
            detail="",
            back="/",
            notice=gone,
            gone=True,
        )

    # -- looking ------------------------------------------------------------------------
    def _overview_values(self) -> dict[str, Any]:
        report = self.snapshot.get()
        now = self.store.clock()
        rows = self.store.throughput(since=now - 3600)
        return {
            "report": report,
            "chart": charts.chart(charts.per_minute(rows, now)),
            "queue_charts": {
                q["queue"]: charts.chart(charts.per_minute(rows, now, queue=q["queue"]), 120, 24)
                for q in report["queues"]
            },
        }

    def overview(self, request: Request) -> Response:
        return self.render("overview.html", page="overview", **self._overview_values())

    def overview_part(self, request: Request) -> Response:
        return self.render("_overview.html", **self._overview_values())

    def _workers_values(self) -> dict[str, Any]:
        return {"workers": admin.live_workers(self.store), "now": self.store.clock()}

    def workers(self, request: Request) -> Response:
        return self.render("workers.html", page="workers", **self._workers_values())

    def workers_part(self, request: Request) -> Response:
        return self.render("_workers.html", **self._workers_values())

    def schedules(self, request: Request) -> Response:
        return self.render(
            "schedules.html",
            page="schedules",
            schedules=admin.schedules(self.store),
            now=self.store.clock(),
        )

    def jobs(self, request: Request) -> Response:
        params = request.query_params
        status_text = params.get("status") or None
        try:
            status = None if status_text is None else Status(status_text)
            after = _page_id(params.get("after") or "0")
            before = _page_id(params["before"]) if params.get("before") else None
        except ValueError as exc:
            raise Refused(f"bad filter: {exc}", 400) from None
        oldest_first = params.get("order") == "oldest"
        query = JobQuery(
            queue=params.get("queue") or None,
            status=status,
            job_type=params.get("type") or None,
            error_contains=params.get("error") or None,
            after=after,
            before=None if oldest_first else (before or 2**63 - 1),
            limit=PAGE + 1,  # one more, to know whether there is a next page
        )
        found = self.store.search(query)
        page, more = found[:PAGE], len(found) > PAGE
        shown = {
            "queue": query.queue or "",
            "status": status_text or "",
            "type": query.job_type or "",
            "error": query.error_contains or "",
            "order": "oldest" if oldest_first else "newest",
        }
        key = "after" if oldest_first else "before"
        next_page = {**shown, key: str(page[-1].id)} if more and page else None
        rows = [(m, admin.describe(m), admin.problem(m)) for m in page]
        return self.render(
            "jobs.html",
            page="jobs",
            rows=rows,
            shown=shown,
            next_page=next_page,
            first=not (after or before),
            queues=self.snapshot.queue_names(),
        )

    def job(self, request: Request) -> Response:
        mjob = self.store.get(_job_id(request))
        timeline = [
            (what, at)
            for what, at in (
                ("created", mjob.created_at),
                ("due", None if mjob.waiting else mjob.run_at),
                ("started", mjob.started_at),
                (f"finished: {mjob.status.value}", mjob.finished_at),
            )
            if at is not None
        ]
        timeline.sort(key=lambda pair: pair[1])
        return self.render(
            "job.html",
            page="jobs",
            mjob=mjob,
            description=admin.describe(mjob),
            problem=admin.problem(mjob),
            state=json.dumps(admin.state_of(mjob), indent=2, ensure_ascii=False),
            after=admin.runs_after(self.store, mjob),
            result=json.dumps(
                admin.result_of(mjob, self.store.clock()), indent=2, ensure_ascii=False
            ),
            timeline=timeline,
            said=SAID.get(request.query_params.get("said", "")),
        )

    def metrics(self, request: Request) -> Response:
        text = exposition(self.snapshot.get(), self.store.totals())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    # -- acting -------------------------------------------------------------------------
    async def _form(self, request: Request) -> dict[str, str]:
        form = await request.form()
        self.guard.check_form(request, form)
        made_from = form.get("file")
        if made_from is not None and made_from != str(self.source.generation):
            # The page showed the old file's jobs: job 7 there is another job here.
            raise Refused(
                "nothing was done: the queue file was replaced since that page was shown "
                "(a job or queue there may be another one here); look at it again",
                409,
            )
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def job_action(self, request: Request) -> Response:
        try:
            return await self._job_action(request)
        finally:
            self.snapshot.forget()  # what changed shows at the next refresh

    async def _job_action(self, request: Request) -> Response:
        job_id = _job_id(request)
        action: str = request.path_params["action"]
        if action not in ("retry", "restart", "delete", "resolve"):
            return PlainTextResponse("no such page", status_code=404)
        if request.method == "GET":
            if action != "delete":
                return RedirectResponse(f"/jobs/{job_id}", status_code=303)
            self.guard.check_may_act()
            mjob = await run_in_threadpool(self.store.get, job_id)
            return self.render(
                "confirm.html",
                page="jobs",
                question=f"Delete job {job_id} ({admin.describe(mjob)})?",
                detail="It is gone for good: its state, error and history with it.",
                action=f"/jobs/{job_id}/delete",
                fields={},
                button="Delete the job",
                back=f"/jobs/{job_id}",
            )
        form = await self._form(request)
        if action == "delete":
            outcome = await run_in_threadpool(admin.delete, self.store, [job_id])
            self._check(outcome, job_id)
            return self.render(
                "message.html", page="jobs", title=f"Job {job_id} deleted", back="/jobs"
            )
        if action == "resolve":
            try:
                data = json.loads(form.get("data") or "null")
            except (ValueError, RecursionError) as exc:
                raise Refused(f"the data is not JSON: {exc}", 400) from None
            try:
                status = await run_in_threadpool(resolve_wait_async, self.store, job_id, data)
            except LiteqError:
                raise
            except Exception as exc:  # the job's own resolve_wait_async: it stays waiting
                raise Refused(
                    f"job {job_id}'s resolve_wait_async raised {type(exc).__name__}: {exc} "
                    "(it still waits)",
                    409,
                ) from None
            if not await run_in_threadpool(self._exists, job_id):
                return self.render(
                    "message.html",
                    page="jobs",
                    title=f"Job {job_id} resolved: {status.value}",
                    detail="It was deleted on completion (its delete_on_complete).",
                    back="/jobs",
                )
            said = "resolved"
        else:
            do: Callable[[Store, list[int]], admin.Outcome] = (
                admin.retry if action == "retry" else admin.restart
            )
            self._check(await run_in_threadpool(do, self.store, [job_id]), job_id)
            said = "retried" if action == "retry" else "restarted"
        return RedirectResponse(f"/jobs/{job_id}?said={said}", status_code=303)

    def _exists(self, job_id: int) -> bool:
        try:
            self.store.get(job_id)
        except JobNotFound:
            return False
        return True

    def _check(self, outcome: admin.Outcome, job_id: int) -> None:
        if job_id in outcome.refused:
            raise Refused(outcome.refused[job_id], 409)

    async def queue_action(self, request: Request) -> Response:
        try:
            return await self._queue_action(request)
        finally:
            self.snapshot.forget()

    async def _queue_action(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        action: str = request.path_params["action"]
        if action not in ("pause", "resume", "retry-failed", "purge"):
            return PlainTextResponse("no such page", status_code=404)
        if request.method == "GET":
            return (
                await self._confirm_purge(request, name)
                if action == "purge"
                else (RedirectResponse("/", status_code=303))
            )
        form = await self._form(request)
        if action == "purge":
            status, older_than = _purge_args(form)
            deleted = await run_in_threadpool(
                lambda: admin.purge(self.store, status, queue=name, older_than=older_than)
            )
            return self.render(
                "message.html",
                page="overview",
                title=f"Deleted {deleted:,} {status.value} job{'' if deleted == 1 else 's'} "
                f"of queue {name}",
                back="/",
            )
        if action == "retry-failed":
            outcome = await run_in_threadpool(admin.retry_failed, self.store, name)
            refused = "; ".join(f"job {k}: {v}" for k, v in list(outcome.refused.items())[:5])
            return self.render(
                "message.html",
                page="overview",
                title=f"Re-queued {len(outcome.done):,} failed job"
                f"{'' if len(outcome.done) == 1 else 's'} of queue {name}",
                detail=f"Left alone: {refused}" if refused else "",
                back="/",
            )
        await run_in_threadpool(self.store.pause if action == "pause" else self.store.resume, name)
        return RedirectResponse("/", status_code=303)

    async def _confirm_purge(self, request: Request, name: str) -> Response:
        self.guard.check_may_act()
        if "status" not in request.query_params:
            return self.render("purge.html", page="overview", queue=name)
        status, older_than = _purge_args(dict(request.query_params))
        count = await run_in_threadpool(
            lambda: admin.purgeable(self.store, status, queue=name, older_than=older_than)
        )
        age = "" if older_than is None else f" that finished more than {ago(older_than)} ago"
        return self.render(
            "confirm.html",
            page="overview",
            question=f"Delete {count:,} {status.value} job{'' if count == 1 else 's'} "
            f"of queue {name}{age}?",
            detail="They are gone for good. Jobs that finish meanwhile may be deleted too.",
            action=f"/queues/{name}/purge",
            fields={"status": status.value, "older_than_hours": _hours(older_than)},
            button="Delete them",
            back="/",
        )

    # -- errors -------------------------------------------------------------------------
    def _refused(self, request: Request, exc: Exception) -> Response:
        status = exc.status if isinstance(exc, Refused) else 400
        return self.render(
            "message.html", status, page="", title="Not done", detail=str(exc), back="/"
        )

    def _failed(self, request: Request, exc: Exception) -> Response:
        # A job not found, locked, in the wrong status, a store that cannot be read: one
        # line for the operator, as the command line gives.
        status = 404 if isinstance(exc, JobNotFound) else 409
        if isinstance(exc, StoreUnavailable):
            status = 503
        return self.render(
            "message.html", status, page="", title="Not done", detail=str(exc), back="/"
        )


def _page_id(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:
        raise ValueError(f"{text} is no job id")
    return value


def _job_id(request: Request) -> int:
    job_id: int = request.path_params["id"]
    if not 0 < job_id < 2**63:  # no store holds it (and SQLite could not even look)
        raise JobNotFound(f"no job with id {job_id}")
    return job_id


def _purge_args(values: dict[str, str]) -> tuple[Status, float | None]:
    try:
        status = Status(values.get("status", ""))
        hours = values.get("older_than_hours", "").strip()
        older_than = float(hours) * 3600 if hours else None
    except ValueError:
        raise Refused("purge needs status completed or failed and an age in hours", 400) from None
    if status not in (Status.COMPLETED, Status.FAILED):
        raise Refused("only completed or failed jobs are purged", 400)
    if older_than is not None and not 0 <= older_than < float("inf"):
        raise Refused("the age must be a number of hours, 0 or more", 400)
    return status, older_than


def _hours(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 3600:g}"


def create_app(
    store: Store,
    *,
    token: str | None,
    read_only: bool,
    label: str,
    reopen: Callable[[], Store] | None = None,
) -> Starlette:
    """The dashboard of `store` as an ASGI app (`label` names the store in its header).
    `reopen` opens the queue file at the store's path again, never creating one: the
    dashboard then follows a file that is replaced there."""
    return Dashboard(store, Guard(token, read_only=read_only), label, reopen).app
