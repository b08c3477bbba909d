"""The allow-listed models while the server runs: their states (``GET /api/models``, the picker's
panel) and loading or unloading one (``POST /api/models/{name}/load`` and ``/unload``; the page's
Load button posts to ``/models/{name}/load`` and gets the panel back). A GET reads states only: it
never loads anything. The POSTs pass the same Origin check as every other POST (guard.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from patchstudio.model_manager import LOADED, LOADING
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ServiceDep
from patchstudio.web.explore_page import models_context
from patchstudio.web.templating import templates

router = APIRouter()


def _payload(state: dict[str, Any]) -> dict[str, Any]:
    name = state["name"]
    return {**state, "links": {"load": urls.model_load_json(name), "unload": urls.model_unload_json(name),
                               "models": urls.models_json()}}


@router.get("/api/models", summary="Every allow-listed model's state (loaded, loading, not loaded, unavailable)",
            tags=["models"])
def list_models(service: ServiceDep) -> Any:
    context = models_context(service)
    return {"models": [_payload(s) for s in context["model_states"]], "budget_mb": context["model_budget_mb"],
            "used_mb": context["model_used_mb"]}


@router.post("/api/models/{name:path}/load", summary="Load an allow-listed model in the background", tags=["models"],
             responses={202: {"description": "Loading: poll GET /api/models for its progress."},
                        422: {"description": "Not an allow-listed model (`field`: name)."}})
def load_model(name: str, service: ServiceDep) -> Response:
    """200 with its state when it is loaded already; else 202 while it loads (an unavailable model
    is tried again). Loading past the memory budget first unloads the least recently used idle model."""
    state = service.manager.load(name)
    return JSONResponse(_payload(state), status_code=200 if state["state"] == LOADED else 202)


@router.post("/api/models/{name:path}/unload", summary="Unload a model now", tags=["models"],
             responses={409: {"description": "It is loading, or a run or job computes on it."}})
def unload_model(name: str, service: ServiceDep) -> Any:
    return _payload(service.manager.unload(name))


@router.get("/models/panel", response_class=HTMLResponse, include_in_schema=False)
def panel(request: Request, service: ServiceDep) -> Response:
    """The picker's panel (it polls itself while a model loads)."""
    return templates.TemplateResponse(request, "_models.html", models_context(service))


@router.post("/models/{name:path}/load", response_class=HTMLResponse, include_in_schema=False)
def load_from_page(request: Request, name: str, service: ServiceDep) -> Response:
    """The page's Load button: start loading, answer the panel."""
    state = service.manager.load(name)
    return templates.TemplateResponse(request, "_models.html", models_context(service),
                                      status_code=202 if state["state"] == LOADING else 200)
