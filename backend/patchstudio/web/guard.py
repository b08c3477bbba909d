"""The shared server's guard rails, as plain ASGI middleware (they see every request, static files
included, before any route parses a byte of the body):

- ``RequestContext``: a request id for every request (``X-Request-ID``; errors show it, the log
  keeps the details), the client key for per-client caps (a random session cookie, or the address),
  the security headers on every response, and the catch-all 500: it shows the request id only.
- ``OriginCheck``: state-changing requests (POST, PUT, PATCH, DELETE) from another site are refused
  (403). The rule: a request whose ``Origin`` header names this server (its ``Host``, the public
  URL, or an allowed origin) passes; one naming anything else, or ``null``, is refused; one without
  ``Origin`` is refused only when the browser says it is cross-site (``Sec-Fetch-Site``), so API
  clients such as curl or scripts (which send neither) keep working. Browsers send ``Origin`` on
  every cross-site POST, including plain HTML form posts, so forms and htmx are covered.
- ``BodyLimit``: a body over the limit is refused (413) from its Content-Length alone, or as soon as
  a streamed body passes the limit, without buffering it.
"""

from __future__ import annotations

import html
import json
import logging
import secrets
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request

log = logging.getLogger("patchstudio.web")

CLIENT_COOKIE = "patchstudio_client"

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",  # only the vendored scripts and app.js: no inline script, no eval
        "style-src 'self' 'unsafe-inline'",  # plotly and htmx insert style elements
        "img-src 'self' data: blob:",  # plotly's PNG export, Swagger UI's icons
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _cookie(scope: dict[str, Any], name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


API_PATHS = ("/healthz", "/readyz", "/openapi.json")


def is_api_path(path: str) -> bool:
    """JSON answers (errors included) for the API and the .json/.csv/.ipynb twins; HTML for pages and fragments."""
    return path.startswith("/api/") or path.endswith((".json", ".csv", ".ipynb")) or path in API_PATHS


def wants_json(scope: dict[str, Any]) -> bool:
    return is_api_path(scope.get("path", ""))


async def refuse(scope: dict[str, Any], send: Any, status: int, message: str, **extra: Any) -> None:
    # (the JSON carries the request id; the header X-Request-ID carries it for HTML)
    """A refusal in the shape the client reads: JSON ``{"detail", ...}`` or a line of HTML."""
    request_id = scope.get("state", {}).get("request_id")
    if wants_json(scope):
        body = json.dumps({"detail": message, "request_id": request_id, **extra}).encode()
        content_type = b"application/json"
    else:
        body = f'<p class="error" role="alert">{html.escape(message)}</p>'.encode()
        content_type = b"text/html; charset=utf-8"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def request_id(request: Request) -> str:
    """The id ``RequestContext`` gave this request ('-' outside it)."""
    return getattr(request.state, "request_id", "-")


def client_key(request: Request) -> str:
    """Who is asking, for per-client caps: the session cookie's key, or the address."""
    return getattr(request.state, "client_key", None) or f"a:{request.client.host if request.client else 'unknown'}"


class RequestContext:
    def __init__(self, app: Any, *, client_key: str = "cookie", secure_cookie: bool = False):
        self.app = app
        self.client_key = client_key
        self.secure_cookie = secure_cookie

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = secrets.token_hex(6)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        address = (scope.get("client") or ("unknown", 0))[0]
        cookie = _cookie(scope, CLIENT_COOKIE) if self.client_key == "cookie" else None
        if cookie is not None and not (8 <= len(cookie) <= 64 and cookie.isalnum()):
            cookie = None  # not one of ours
        state["client_key"] = f"c:{cookie}" if cookie else f"a:{address}"
        new_cookie = secrets.token_hex(16) if self.client_key == "cookie" and cookie is None else None

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                headers.append((b"x-request-id", request_id.encode()))
                if new_cookie is not None:
                    flags = "; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000" + ("; Secure" if self.secure_cookie else "")
                    headers.append((b"set-cookie", f"{CLIENT_COOKIE}={new_cookie}{flags}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send_with_headers(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            # Anything unexpected: the details go to the log under the request id; the user sees the id.
            log.exception("request %s: %s %s failed", request_id, scope.get("method"), scope.get("path"))
            if not started:
                await refuse(scope, send_with_headers, 500,
                             f"Something went wrong on the server. Request id {request_id}: the server's log has the details.")


def _netloc(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port
    default = {"http": 80, "https": 443}[parts.scheme]
    return parts.hostname.lower() + (f":{port}" if port and port != default else "")


class OriginCheck:
    def __init__(self, app: Any, *, public_url: str | None = None, allowed_origins: list[str] | None = None):
        self.app = app
        self.allowed = {n for n in (_netloc(u) for u in [*(allowed_origins or []), *([public_url] if public_url else [])]) if n}

    def _same_site(self, scope: dict[str, Any], origin: str) -> bool:
        netloc = _netloc(origin)
        if netloc is None:
            return False  # "null" (sandboxed frames, file: pages) and anything malformed
        if netloc in self.allowed:
            return True
        host = (_header(scope, b"host") or "").lower()
        scheme = "https" if scope.get("scheme") == "https" else "http"
        own = _netloc(f"{scheme}://{host}") if host else None
        # compare host and port, not the scheme: behind a TLS proxy the app sees http, the browser https
        other_scheme = _netloc(f"{'http' if scheme == 'https' else 'https'}://{host}") if host else None
        return netloc in {own, other_scheme}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            origin = _header(scope, b"origin")
            if origin is not None:
                if not self._same_site(scope, origin):
                    return await refuse(scope, send, 403, f"cross-site request refused: origin {origin[:100]!r} is not this server",
                                        field="origin")
            elif (_header(scope, b"sec-fetch-site") or "") == "cross-site":
                return await refuse(scope, send, 403, "cross-site request refused", field="origin")
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised while a route reads a streamed body past the limit (an HTTPException, so body parsing
    passes it through as a 413)."""

    field = "body"


class BodyLimit:
    def __init__(self, app: Any, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_bytes:,} bytes (PATCHSTUDIO_MAX_BODY_BYTES)"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_bytes
            except ValueError:
                return await refuse(scope, send, 400, "the Content-Length header is not a number", field="body")
            if too_large:
                return await refuse(scope, send, 413, self._message(), field="body")
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(413, self._message())
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await refuse(scope, send, 413, self._message(), field="body")
