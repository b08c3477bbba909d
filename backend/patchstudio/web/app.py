"""create_app(settings) -> FastAPI. The lifespan opens the store, loads the models of
``models_at_start`` (others load while it runs: routes/models.py) and starts the job queue;
nothing is built at import time.

Every error a user can see is either a 4xx naming the field, or a 500 that says only "something
went wrong" with the request id (``guard.RequestContext``): the exception, its text and its
traceback go to the log, under that id.
"""

from __future__ import annotations

import html
import logging
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from patchstudio import __version__
from patchstudio.engine.allocator import keep_freed_memory
from patchstudio.errors import InputError, describe, field_errors
from patchstudio.jobs import open_queue
from patchstudio.model_manager import UNAVAILABLE, ModelNotReady
from patchstudio.service import ExperimentService, NotYourJob, OtherComputation
from patchstudio.settings import Settings
from patchstudio.specs import spec_json_schema
from patchstudio.jobs import TooManyJobs
from patchstudio.store import Store
from patchstudio.web.progress import ProgressLog
from patchstudio.web.guard import BodyLimit, HostCheck, OriginCheck, RequestContext, is_api_path, request_id
from patchstudio.web.routes import (attention, circuits, companions, compare, explore, families, jobs, meta, models,
                                    prompt_sets, runs, studies)
from patchstudio.web.templating import FRONTEND
from patchstudio.web.watchers import Watchers

log = logging.getLogger("patchstudio.web")


def _wants_html(request: Request) -> bool:
    return not is_api_path(request.url.path)


class VersionedStatic(StaticFiles):
    """Static files; a versioned URL (``?v=``, see url_builder.static) is cached for a year."""

    async def get_response(self, path: str, scope) -> Response:
        response = await super().get_response(path, scope)
        if b"v=" in scope.get("query_string", b"") and response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def create_app(settings: Settings | None = None, *, model_loader: Callable[[str], Any] | None = None) -> FastAPI:
    """The app. ``model_loader`` replaces loading by name (tests pass in-process models)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        keep_freed_memory()  # sweeps reuse their buffers instead of faulting pages in each pass
        store = Store(settings.resolved_database_url(), create=settings.create_db)
        service = ExperimentService(settings, store)
        service.load_models(model_loader)
        # the worker threads take jobs for every model that may load: one not loaded loads when a job needs it
        loadable = [name for name, m in service.models.items() if m.state != UNAVAILABLE]
        queue = open_queue(settings, store, service.get_or_run, loadable)
        service.jobs = queue  # the service's submit rule queues large experiments here
        queue.start()
        app.state.service = service
        yield
        queue.shutdown()
        store.engine.dispose()

    app = FastAPI(
        title="Patch Studio",
        version=__version__,
        description="Causal interventions on transformer language models: activation patching, ablation, "
        "attribution patching, path patching, self-repair and input influence. Every result is stored under "
        "its spec's id; long sweeps run as background jobs.",
        lifespan=lifespan,
        docs_url=None,  # /docs is served from vendored Swagger UI files (routes/meta.py): no CDN
        redoc_url=None,
    )
    app.state.watchers = Watchers()
    app.state.progress = ProgressLog()

    def refusal(request: Request, status: int, message: str, *, errors: list[dict[str, str]] | None = None,
                field: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> Response:
        if not _wants_html(request):
            body = {"detail": message, "field": field, "errors": errors or [], "request_id": request_id(request), **extra}
            return JSONResponse(body, status_code=status, headers=headers)
        # htmx swaps 4xx and 5xx answers too (base.html's htmx-config), so the message shows where the result would
        return HTMLResponse(f'<p class="error" role="alert">{html.escape(message)}</p>', status_code=status, headers=headers)

    @app.exception_handler(InputError)
    @app.exception_handler(ValidationError)
    async def bad_input(request: Request, exc: Exception) -> Response:
        """Bad input is a 422 naming the field, from any route: never a 500."""
        errors = field_errors(exc)  # type: ignore[arg-type]
        if isinstance(exc, InputError):
            return refusal(request, 422, str(exc), errors=errors, field=exc.field, info=exc.detail)
        return refusal(request, 422, f"invalid spec: {describe(errors)}", errors=errors, field=errors[0]["field"])

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        """A query, path or body that does not fit the route: 422 naming the parameter (no echo of
        the input, which may be large)."""
        errors = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body", "header", "cookie")]
            errors.append({"field": ".".join(loc) or "body", "message": err.get("msg", "invalid")})
        return refusal(request, 422, describe(errors), errors=errors, field=errors[0]["field"] if errors else None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """404, 405, 413...: JSON for the API, a line of HTML for pages and fragments."""
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return refusal(request, exc.status_code, detail, field=getattr(exc, "field", None), headers=getattr(exc, "headers", None))

    @app.exception_handler(TooManyJobs)
    async def too_many_jobs(request: Request, exc: TooManyJobs) -> Response:
        """429 over a client's (or its address's) cap; 503 when the whole queue is full (QueueFull)."""
        return refusal(request, exc.status, str(exc), field="jobs", headers={"Retry-After": "30"})

    @app.exception_handler(OtherComputation)
    async def other_computation(request: Request, exc: OtherComputation) -> Response:
        """The id is stored (or queued) from other weights or another dtype than this server's model."""
        return refusal(request, 409, str(exc), field=exc.field)

    @app.exception_handler(ModelNotReady)
    async def model_not_ready(request: Request, exc: ModelNotReady) -> Response:
        """A model that is loading (503, ask again shortly) or not loaded (409), named."""
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        return refusal(request, exc.status, str(exc), field=exc.field, headers=headers)

    @app.exception_handler(NotYourJob)
    async def not_your_job(request: Request, exc: NotYourJob) -> Response:
        return refusal(request, 403, str(exc), field="job")

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with the spec's own JSON schema as the body of POST /api/runs and /api/jobs
        (the routes take the raw body, so every method's errors come from one place)."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            body = spec_json_schema(ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(body.pop("$defs", {}))
            for path in ("/api/runs", "/api/jobs"):
                content = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
                content["schema"] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    app.add_middleware(GZipMiddleware, minimum_size=1024)  # plotly.js: 4.9 MB raw, ~1.5 MB compressed
    app.mount("/static", VersionedStatic(directory=FRONTEND / "static"), name="static")
    for router in (runs, companions, circuits, attention, compare, jobs, studies, explore, prompt_sets, families, models, meta):
        app.include_router(router.router)

    # Outermost last: every request gets an id and the headers, then the host, size and origin checks.
    app.add_middleware(OriginCheck, public_url=settings.public_url, allowed_origins=settings.allowed_origins)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if "*" not in settings.allowed_hosts:
        app.add_middleware(HostCheck, allowed_hosts=settings.trusted_hosts())
    secure = bool(settings.public_url and settings.public_url.startswith("https://"))
    app.add_middleware(RequestContext, client_key=settings.client_key, secure_cookie=secure)
    return app
