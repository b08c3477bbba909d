"""The shared server's guard rails, as plain ASGI middleware (they see every request, static files
included, before any route parses a byte of the body):

- ``RequestContext``: a request id for every request (``X-Request-ID``; errors show it, the log
  keeps the details), the client key for per-client caps and job ownership (a random session
  cookie, or the address) with the address it came from, the security headers on every response,
  and the catch-all: a database that is down, full or read-only answers 503 with ``Retry-After``
  and a plain sentence; anything else 500 with the request id only.
- ``HostCheck``: requests for a host name this server does not answer to are refused (400); the
  ``Host`` header is parsed as a URL authority (``[::1]:8000`` is the host ``::1``).
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
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request

from patchstudio.jobs.store import Client
from patchstudio.store import unavailable

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


async def refuse(scope: dict[str, Any], send: Any, status: int, message: str, *, headers: list[tuple[bytes, bytes]] | None = None,
                 **extra: Any) -> None:
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
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def request_id(request: Request) -> str:
    """The id ``RequestContext`` gave this request ('-' outside it)."""
    return getattr(request.state, "request_id", "-")


def client_key(request: Request) -> Client:
    """Who is asking, for per-client caps and job ownership: the session cookie's key, or the
    address; it carries the address (``Client.address``) for the per-address cap."""
    found = getattr(request.state, "client_key", None)
    if isinstance(found, Client):
        return found
    address = request.client.host if request.client else "unknown"
    return Client(found or f"a:{address}", address)


STORE_RETRY_SECONDS = 10


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
        state["client_key"] = Client(f"c:{cookie}" if cookie else f"a:{address}", address)
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
        except Exception as exc:
            if unavailable(exc):  # a condition that passes (PostgreSQL restarting, a full disk): say so, and when to retry
                log.error("request %s: %s %s: the database is unavailable: %s: %s", request_id, scope.get("method"),
                          scope.get("path"), type(exc).__name__, (str(exc).splitlines() or [""])[0][:300])
                if not started:
                    await refuse(scope, send_with_headers, 503,
                                 f"The database is unavailable right now (down, restarting, or unable to take writes); try "
                                 f"again in a few seconds. Request id {request_id}.",
                                 headers=[(b"retry-after", str(STORE_RETRY_SECONDS).encode())])
                return
            # Anything unexpected: the details go to the log under the request id; the user sees the id.
            log.exception("request %s: %s %s failed", request_id, scope.get("method"), scope.get("path"))
            if not started:
                await refuse(scope, send_with_headers, 500,
                             f"Something went wrong on the server. Request id {request_id}: the server's log has the details.")


class Malformed(ValueError):
    """A header that is not what its name says (an Origin whose port is not a number, say)."""


def _netloc(url: str) -> str | None:
    """``host[:port]`` of an http(s) URL (the port only when not the scheme's default); None for
    other schemes and ``null``; Malformed when it cannot be parsed (a bad port, a broken IPv6 literal)."""
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        port = parts.port  # raises ValueError on 'abc', '99999'
    except ValueError:
        raise Malformed(url) from None
    default = {"http": 80, "https": 443}[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return host.lower() + (f":{port}" if port and port != default else "")


AUTHORITY = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?")


def host_name(authority: str) -> str | None:
    """The host of a ``Host`` header (``[::1]:8000`` -> ``::1``, ``Example.org:80`` -> ``example.org``);
    None when it is not a plain ``host[:port]`` (userinfo, paths and bad ports are malformed)."""
    found = AUTHORITY.fullmatch(authority)
    if found is None or (found.group(2) is not None and int(found.group(2)) > 65535):
        return None
    return found.group(1).strip("[]").lower()


class HostCheck:
    """Only requests for the allowed host names pass (Starlette's TrustedHostMiddleware cut the
    header at its first colon, so ``[::1]:8000`` was refused though ``::1`` was allowed).
    ``*.example.org`` allows the subdomains of example.org; ``*`` any host."""

    def __init__(self, app: Any, *, allowed_hosts: list[str]):
        self.app = app
        self.any = "*" in allowed_hosts
        self.exact = {h.lower().strip("[]") for h in allowed_hosts if not h.startswith("*")}
        self.suffixes = tuple(h[1:].lower() for h in allowed_hosts if h.startswith("*."))

    def allowed(self, host: str | None) -> bool:
        if host is None:
            return False
        return self.any or host in self.exact or any(host.endswith(suffix) for suffix in self.suffixes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not self.allowed(host_name(_header(scope, b"host") or "")):
            return await refuse(scope, send, 400, "Invalid host header", field="host")
        await self.app(scope, receive, send)


class OriginCheck:
    def __init__(self, app: Any, *, public_url: str | None = None, allowed_origins: list[str] | None = None):
        self.app = app
        self.allowed = set()
        for url in [*(allowed_origins or []), *([public_url] if public_url else [])]:
            try:
                self.allowed.add(_netloc(url))
            except Malformed:
                log.warning("ignoring the allowed origin %r: it is not scheme://host[:port]", url)
        self.allowed.discard(None)

    def _same_site(self, scope: dict[str, Any], origin: str) -> bool:
        netloc = _netloc(origin)  # Malformed: the caller answers 400
        if netloc is None:
            return False  # "null" (sandboxed frames, file: pages) and anything malformed
        if netloc in self.allowed:
            return True
        host = (_header(scope, b"host") or "").lower()
        scheme = "https" if scope.get("scheme") == "https" else "http"
        try:
            own = _netloc(f"{scheme}://{host}") if host else None
            # compare host and port, not the scheme: behind a TLS proxy the app sees http, the browser https
            other_scheme = _netloc(f"{'http' if scheme == 'https' else 'https'}://{host}") if host else None
        except Malformed:
            return False
        return netloc in {own, other_scheme}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            origin = _header(scope, b"origin")
            if origin is not None:
                try:
                    same = self._same_site(scope, origin)
                except Malformed:
                    return await refuse(scope, send, 400, f"the Origin header {origin[:100]!r} is not a valid origin "
                                        "(scheme://host[:port])", field="origin")
                if not same:
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
