"""The server itself: liveness, readiness, and the API docs (from vendored Swagger UI: no CDN)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from patchstudio.web.deps import ServiceDep
from patchstudio.web.templating import templates

router = APIRouter()

log = logging.getLogger("patchstudio.web")


@router.get("/healthz", summary="Liveness: the process answers", tags=["health"])
def healthz() -> Any:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database commits a write, and a model is loaded", tags=["health"],
            responses={503: {"description": "Not ready: `checks` says which part; `Retry-After` says when to ask again."}})
def readyz(service: ServiceDep) -> Any:
    """A probe row is committed and deleted (``Store.check_writable``): a database that answers
    reads but cannot write (a full disk, a read-only file) is not ready, and readiness comes back
    by itself once it can. The probe is the one write a GET makes, and it leaves nothing behind."""
    checks: dict[str, Any] = {}
    try:
        service.store.check_writable()
        checks["database"] = "ok"
    except Exception:  # the reason (URL, path, driver text) goes to the log only
        log.exception("readiness: the database check failed")
        checks["database"] = "unavailable"
    checks["models"] = {name: m.state for name, m in service.models.items()}  # loaded, loading, not loaded, unavailable
    ready = checks["database"] == "ok" and service.ready
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503,
                        headers=None if ready else {"Retry-After": "10"})


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
def api_docs(request: Request) -> Response:
    return templates.TemplateResponse(request, "docs.html", {})
