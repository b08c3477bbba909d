"""create_app(settings) -> FastAPI. The lifespan loads the allow-listed models once and opens the
store; nothing is built at import time."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from patchstudio.settings import Settings
from patchstudio.store import Store
from patchstudio.web.jobs import JobManager
from patchstudio.web.service import ExperimentService

FRONTEND = Path(__file__).resolve().parents[3] / "frontend"


def create_app(settings: Settings | None = None, *, model_loader: Callable[[str], Any] | None = None) -> FastAPI:
    """The app. ``model_loader`` replaces loading by name (tests pass in-process models)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = ExperimentService(settings, Store(settings.resolved_database_url()))
        service.load_models(model_loader)
        app.state.service = service
        app.state.jobs = JobManager(lambda spec, progress: service.get_or_run(spec, progress))
        yield
        app.state.jobs.shutdown()
        service.store.engine.dispose()

    from patchstudio import __version__
    from patchstudio.web.routes import api, pages

    app = FastAPI(
        title="Patch Studio",
        version=__version__,
        description="Causal interventions on transformer language models: activation patching and ablation.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.mount("/static", StaticFiles(directory=FRONTEND / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    return app
