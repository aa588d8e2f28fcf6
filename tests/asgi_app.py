"""A Starlette app whose `async def` endpoints enqueue and read jobs with the async API:
`uvicorn tests.asgi_app:app`, with LITEQ_URL naming the queue and LITEQ_TEST_OUT the file
its task writes to."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import liteq
from tests.asgi_tasks import store, write_line


async def enqueue(request: Request) -> JSONResponse:
    n = int(request.path_params["n"])
    mjob = await write_line.aenqueue(os.environ["LITEQ_TEST_OUT"], n)
    return JSONResponse({"id": mjob.id, "status": mjob.status.value})


async def job(request: Request) -> JSONResponse:
    try:
        mjob = await store.aget(int(request.path_params["job_id"]))
    except liteq.JobNotFound as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return JSONResponse({"id": mjob.id, "status": mjob.status.value})


async def ready(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    store.close()  # (its async connections too)


app = Starlette(
    routes=[
        Route("/enqueue/{n:int}", enqueue, methods=["POST"]),
        Route("/jobs/{job_id:int}", job),
        Route("/ready", ready),
    ],
    lifespan=lifespan,
)
