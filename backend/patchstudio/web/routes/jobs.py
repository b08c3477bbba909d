"""The jobs list: what is running, what waits, what finished lately, at ``/jobs`` and ``/jobs.json``.

Each job says what it computes (method, component, direction, metric), whose companion it is, its
progress, and how long it has left from measured throughput (``jobs/eta.py``); a finished one links
to its result. Reads only: the page polls itself while jobs are active.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from patchstudio.jobs import eta
from patchstudio.jobs.store import ACTIVE, JobRow, utcnow
from patchstudio.web import companions as comp
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ServiceDep
from patchstudio.web.methods import summary
from patchstudio.web.routes.api import job_payload
from patchstudio.web.routes.pages import _is_htmx, templates

router = APIRouter()

FINISHED = ("done", "error", "cancelled")
LIST_LIMIT = 50
RECENT_LIMIT = 20


def _line(job: JobRow, estimate: eta.Estimate | None, parent: Any) -> dict[str, Any]:
    try:
        asked = summary(json.loads(job.spec_json))
    except ValueError:
        asked = {"method": job.method, "component": "", "direction": "", "metric": ""}
    payload = job_payload(job)
    if job.status == "done":
        payload["links"]["result"] = urls.run_page(job.id)
    return {
        **payload,
        "summary": asked,
        "estimate": {**(estimate or eta.Estimate(None, None, None)).as_dict(),
                     "words": eta.words(estimate.seconds_left) if estimate else ""},
        "companion_of": {"id": parent.parent_id, "role": comp.ROLE_LABELS.get(parent.role, parent.role),
                         "page": urls.run_page(parent.parent_id)} if parent is not None else None,
    }


def overview(service: Any) -> dict[str, Any]:
    store, jobs = service.store, service.jobs.store
    running = jobs.by_status(["running"], LIST_LIMIT)
    queued = jobs.by_status(["queued"], LIST_LIMIT)
    finished = jobs.by_status(FINISHED, RECENT_LIMIT)
    estimates = eta.estimates(running + queued, jobs.finished(service.settings.models), utcnow())
    parents = store.get_companions(j.id for j in running + queued + finished)

    def lines(rows: list[JobRow]) -> list[dict[str, Any]]:
        return [_line(j, estimates.get(j.id), parents.get(j.id)) for j in rows]

    return {"running": lines(running), "queued": lines(queued), "recent": lines(finished),
            "links": {"page": urls.jobs(), "json": urls.jobs_json()}}


@router.get("/jobs.json", summary="Background jobs: running, queued and recently finished", tags=["jobs"])
def jobs_json(service: ServiceDep) -> Any:
    """Each job with what it computes, its progress and, while active, an estimate of the time left
    (`estimate.seconds_left`, from its own throughput so far or the model's recent jobs; null when
    nothing has been measured yet)."""
    return overview(service)


@router.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
def jobs_page(request: Request, service: ServiceDep) -> Response:
    context = {"jobs": overview(service), "active_statuses": ACTIVE}
    if _is_htmx(request):
        return templates.TemplateResponse(request, "jobs.html", context, block_name="jobs")
    return templates.TemplateResponse(request, "jobs.html", context)
