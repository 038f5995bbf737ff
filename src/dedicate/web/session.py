"""How a browser signs in to the console and calls the public API with the same key.

The key is kept in one HttpOnly, ``SameSite=Strict`` cookie: the page's script never reads it, and
a page of another site never sends it. Page views (GET, read-only) are authenticated by the cookie.
A call to the REST API or the gateway is authenticated by the cookie *only* together with the
header ``X-Dedicate-CSRF``, which carries a token derived from the key; the console's pages hold
that token in a ``<meta>`` tag, and another site cannot read a page to learn it. So the console
calls exactly the API every client calls, and a forged cross-site request has no key.
"""

from __future__ import annotations

import hashlib
import hmac
from http.cookies import CookieError, SimpleCookie

from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "dedicate_key"
CSRF_HEADER = "x-dedicate-csrf"
_CSRF_CONTEXT = b"dedicate console csrf v1\0"


def csrf_token(key: str) -> str:
    """The page token of a key: useless without the cookie, and it does not reveal the key."""
    return hashlib.sha256(_CSRF_CONTEXT + key.encode()).hexdigest()


def cookie_key(cookie_header: str | None) -> str | None:
    """The console's key from a ``Cookie`` header, if one is there."""
    if not cookie_header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


def session_cookie(key: str, *, secure: bool) -> str:
    """The ``Set-Cookie`` value that signs a browser in (for the browser's session only)."""
    return f"{COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def cleared_cookie() -> str:
    return f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"


def same_origin(headers: dict[str, str]) -> bool:
    """A form post came from a page of this server: a browser says so in ``Sec-Fetch-Site`` or ``Origin``."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return origin is None  # no browser context (a script, a test client): nothing cross-site to fear
    host = headers.get("host", "")
    return origin.partition("://")[2] == host


class CookieBearer:
    """In front of the API and the gateway: a request with the console's cookie and its matching CSRF
    header, and no ``Authorization`` of its own, is sent on as ``Authorization: Bearer <key>``.

    Anything else passes untouched, so a cookie alone authenticates no API call.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = with_bearer(scope)
        await self.app(scope, receive, send)


def with_bearer(scope: Scope) -> Scope:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    csrf = cookies = None
    for name, value in headers:
        if name == b"authorization":
            return scope
        if name == CSRF_HEADER.encode():
            csrf = value.decode("latin-1")
        elif name == b"cookie":
            cookies = value.decode("latin-1") if cookies is None else f"{cookies}; {value.decode('latin-1')}"
    if csrf is None:
        return scope
    key = cookie_key(cookies)
    if key is None or not hmac.compare_digest(csrf, csrf_token(key)):
        return scope
    return {**scope, "headers": [*headers, (b"authorization", f"Bearer {key}".encode("latin-1"))]}
