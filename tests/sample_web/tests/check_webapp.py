"""The web application's tests: the recipe of liteq's docs/testing.md."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from webapp.app import app
from webapp.jobs import OUTBOX, send_welcome

import liteq
from liteq.testing import drain, eager, enqueued

try:  # Starlette's TestClient needs httpx (httpx2 from Starlette 1.x); else an ASGI client stands in
    from starlette.testclient import TestClient
except (ImportError, RuntimeError):  # (Starlette 1.x raises RuntimeError)
    TestClient = None


@pytest.fixture
def client() -> Any:
    OUTBOX.clear()
    return TestClient(app) if TestClient is not None else ASGIClient(app)


def test_signup_enqueues_a_welcome_mail(client: Any, liteq_store: liteq.Store) -> None:
    response = client.post("/signup", json={"email": "ann@example.com"})
    assert response.status_code == 201
    [mail] = enqueued(liteq_store, send_welcome)
    assert mail.id == response.json()["job"]
    assert drain(liteq_store) == 1
    assert OUTBOX == ["ann@example.com"]


def test_signup_sends_it_at_once_in_eager_mode(client: Any, liteq_store: liteq.Store) -> None:
    with eager(liteq_store):
        client.post("/signup", json={"email": "ann@example.com"})
    assert OUTBOX == ["ann@example.com"]


def test_a_bad_address_fails_the_test(client: Any, liteq_store: liteq.Store) -> None:
    client.post("/signup", json={"email": "ann.example.com"})
    with pytest.raises(ValueError, match="not an address"):
        drain(liteq_store)


class ASGIClient:
    """What this recipe needs of Starlette's TestClient (`post(path, json=...)`), over the
    ASGI interface: for a machine without httpx."""

    def __init__(self, asgi_app: Any) -> None:
        self.app = asgi_app

    def post(self, path: str, json: Any) -> Response:
        return asyncio.run(self._call("POST", path, _dumps(json)))

    async def _call(self, method: str, path: str, body: bytes) -> Response:
        sent: list[dict[str, Any]] = []
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", b"testserver")],
            "client": ("testclient", 50000),
            "server": ("testserver", 80),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return Response(start["status"], content)


class Response:
    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()
