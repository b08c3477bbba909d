"""create_app(settings) -> FastAPI. The lifespan loads the allow-listed models once and opens the
store; nothing is built at import time."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

import html

from fastapi import FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from patchstudio.engine.allocator import keep_freed_memory
from patchstudio.errors import InputError, describe, field_errors

from patchstudio.settings import Settings
from patchstudio.store import Store
from patchstudio.web.jobs import JobManager
from patchstudio.web.service import ExperimentService

FRONTEND = Path(__file__).resolve().parents[3] / "frontend"


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
        service = ExperimentService(settings, Store(settings.resolved_database_url()))
        service.load_models(model_loader)
        app.state.service = service
        app.state.jobs = JobManager(lambda spec, progress: service.get_or_run(spec, progress))
        yield
        app.state.jobs.shutdown()
        service.store.engine.dispose()

    from patchstudio import __version__
    from patchstudio.web.routes import api, attention, compare, pages

    app = FastAPI(
        title="Patch Studio",
        version=__version__,
        description="Causal interventions on transformer language models: activation patching and ablation.",
        lifespan=lifespan,
    )
    app.state.settings = settings

    @app.exception_handler(InputError)
    @app.exception_handler(ValidationError)
    async def bad_input(request: Request, exc: Exception) -> Response:
        """Bad input is a 422 naming the field, from any route: never a 500."""
        path = request.url.path
        wants_html = request.headers.get("HX-Request") == "true" or "text/html" in request.headers.get("accept", "")
        if path.startswith("/api/") or path.endswith((".json", ".csv")) or not wants_html:
            return api.input_problem(exc)  # type: ignore[arg-type]
        message = describe(field_errors(exc))  # type: ignore[arg-type]
        return HTMLResponse(f'<p class="error" role="alert">{html.escape(message)}</p>', status_code=422)

    app.add_middleware(GZipMiddleware, minimum_size=1024)  # plotly.js: 4.9 MB raw, ~1.5 MB compressed
    app.mount("/static", VersionedStatic(directory=FRONTEND / "static"), name="static")
    app.include_router(api.router)
    app.include_router(attention.router)
    app.include_router(compare.router)
    app.include_router(pages.router)
    return app
