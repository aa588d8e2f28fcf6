from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from webapp.jobs import send_welcome


async def signup(request: Request) -> JSONResponse:
    email = (await request.json())["email"]
    mjob = await send_welcome.aenqueue(email)
    return JSONResponse({"job": mjob.id}, status_code=201)


app = Starlette(routes=[Route("/signup", signup, methods=["POST"])])
