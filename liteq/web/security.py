"""Who may use the dashboard, and what a browser is told: the access token, the CSRF
token of every form, and the security headers of every response."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

#: The cookie that carries the access token once a browser has given it in ?token=.
TOKEN_COOKIE: Final = "liteq_token"  # noqa: S105 - a name, not a password

#: No inline script or style, nothing from another origin, never inside a frame.
HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A token for `--token generate`: 32 random URL-safe characters."""
    return secrets.token_urlsafe(24)


class Refused(Exception):
    """A request the dashboard will not act on; its message is shown to the user."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class Guard:
    """The access token (None: none needed, on a loopback address) and the CSRF token of
    this server's forms."""

    def __init__(self, token: str | None, *, read_only: bool) -> None:
        self.token = token
        self.read_only = read_only
        # One per server run: a page from another site cannot read it, so cannot post it.
        self.csrf = secrets.token_urlsafe(24)

    def _matches(self, given: str | None) -> bool:
        return (
            self.token is not None
            and given is not None
            and hmac.compare_digest(given.encode(), self.token.encode())
        )

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Check the token on every request; add the security headers to every response."""
        response = self._admit(request)
        if response is None:
            response = await call_next(request)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    def _admit(self, request: Request) -> Response | None:
        if self.token is None:
            # Only loopback names: a page on another site whose name is made to resolve to
            # 127.0.0.1 (DNS rebinding) would otherwise be this page's origin, and act.
            try:
                host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
            except ValueError:  # not even a host name
                host = ""
            if is_loopback(host):
                return None
            return PlainTextResponse(
                f"This liteq dashboard answers to 127.0.0.1 or localhost, not {host!r}: "
                "start it with a token to reach it by another name.\n",
                status_code=421,
            )
        given = request.query_params.get("token")
        if given is not None:
            if not self._matches(given):
                return _unauthorized()
            # Swap the token in the URL for a cookie, so that it leaves the address bar.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            redirect = RedirectResponse(target, status_code=303)
            redirect.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict", path="/")
            return redirect
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer ") and self._matches(bearer[7:].strip()):
            return None
        if self._matches(request.cookies.get(TOKEN_COOKIE)):
            return None
        return _unauthorized()

    def check_may_act(self) -> None:
        """Refused if this server was started read-only."""
        if self.read_only:
            raise Refused("this dashboard is read-only (started with --read-only)")

    def check_form(self, request: Request, form: FormData) -> None:
        """Refused unless this server may act and the form carries its CSRF token."""
        self.check_may_act()
        given = form.get("csrf")
        if not isinstance(given, str) or not hmac.compare_digest(
            given.encode(), self.csrf.encode()
        ):
            raise Refused("this form has no valid CSRF token: reload the page and try again", 403)
        origin = request.headers.get("origin")
        if origin is not None and origin != "null":
            expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if origin != expected:
                raise Refused(f"a form from {origin} may not act on this dashboard", 403)


def _unauthorized() -> Response:
    return PlainTextResponse(
        "This liteq dashboard needs its token: open the address it printed when it started "
        "(…/?token=…), or send the header Authorization: Bearer <token>.\n",
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="liteq"'},
    )
