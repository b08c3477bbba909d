"""Background jobs: the list (``/jobs`` and ``/jobs.json``), one job (``/jobs/{id}`` and its ``.json``
twin), ``POST /api/jobs`` and cancelling.

Each job says what it computes (method, component, direction, metric), whose companion it is, its
progress, and how long it has left from measured throughput (``jobs/eta.py``); a finished one links
to its result. Each page and its ``.json`` twin come from one data function. Reads only: the pages
poll themselves while jobs are active.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from patchstudio import analysis
from patchstudio.jobs import eta
from patchstudio.service import ExperimentService
from patchstudio.jobs.store import ACTIVE, JobRow
from patchstudio.web import companions as comp
from patchstudio.web import explore_page as explore
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ClientDep, JobDep, JobId, PageDep, ServiceDep, WatchersDep, find_job, find_run
from patchstudio.web.forms import form_from_spec
from patchstudio.web.methods import summary
from patchstudio.web.payloads import REFUSALS, SPEC_EXAMPLE, accepted, job_payload
from patchstudio.web.templating import is_htmx, templates

router = APIRouter()

FINISHED = ("done", "error", "cancelled")
RECENT_LIMIT = 20

# --- the list --------------------------------------------------------------------------------------------


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
        "basis_words": eta.BASIS_WORDS.get(estimate.basis or "", "") if estimate else "",
        "companion_of": {"id": parent.parent_id, "role": comp.ROLE_LABELS.get(parent.role, parent.role),
                         "page": urls.run_page(parent.parent_id)} if parent is not None else None,
    }


def overview(request: Request, service: ExperimentService) -> dict[str, Any]:
    """The data of ``/jobs`` and ``/jobs.json``: running, queued and recently finished jobs."""
    store, jobs = service.store, service.jobs.store
    running, queued, estimates = explore.active_jobs(request, service)
    finished = jobs.by_status(FINISHED, RECENT_LIMIT)
    parents = store.get_companions(j.id for j in running + queued + finished)

    def lines(rows: list[JobRow]) -> list[dict[str, Any]]:
        return [_line(j, estimates.get(j.id), parents.get(j.id)) for j in rows]

    return {"running": lines(running), "queued": lines(queued), "recent": lines(finished),
            "links": {"page": urls.jobs(), "json": urls.jobs_json()}}


@router.get("/jobs.json", summary="Background jobs: running, queued and recently finished", tags=["jobs"])
def jobs_json(request: Request, service: ServiceDep) -> Any:
    """Each job with what it computes, its progress and, while active, an estimate of the time left
    (`estimate.seconds_left`, from the model's recent jobs of its kind, then its own throughput;
    null when nothing has been measured yet)."""
    return overview(request, service)


@router.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
def jobs_page(request: Request, service: ServiceDep) -> Response:
    context = {"jobs": overview(request, service), "active_statuses": ACTIVE}
    if is_htmx(request):
        return templates.TemplateResponse(request, "jobs.html", context, block_name="jobs")
    return templates.TemplateResponse(request, "jobs.html", context)


# --- one job ---------------------------------------------------------------------------------------------


@router.post("/api/jobs", summary="Start an experiment as a background job", tags=["jobs"], status_code=202,
             responses={202: {"description": "The job (new, or the one already queued, running or done for this spec)."}, **REFUSALS})
def create_job(service: ServiceDep, client: ClientDep, spec: dict[str, Any] = Body(..., examples=[SPEC_EXAMPLE])) -> Any:
    return accepted(service.enqueue(spec, client))  # checks the prompts and the budget first: an InputError is a 422


@router.get("/jobs/{job_id}.json", summary="A background job's progress", tags=["jobs"], responses={404: {"description": "No such job."}})
def job_json(job: JobDep, watchers: WatchersDep, client: ClientDep, page: PageDep) -> Any:
    watchers.seen(job.id, page or f"api:{client}")  # a client polling a job is watching it
    return job_payload(job)


@router.post("/api/jobs/{job_id}/cancel", summary="Cancel a queued or running job (only the client that started it may)",
             tags=["jobs"], responses={403: {"description": "Another client started this job."}, 404: {"description": "No such job."}})
def cancel_job_api(service: ServiceDep, client: ClientDep, job: JobDep) -> Any:
    return job_payload(_cancel(service, job, client))


@router.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def job_page(request: Request, service: ServiceDep, watchers: WatchersDep, page: PageDep,
             job_id: JobId) -> Response:
    """A job's progress; once done, its run (a redirect, or htmx: the result in place)."""
    job = find_job(service, job_id)
    if job is not None and page:  # a page polling this job is watching it (presence in memory, not a write)
        watchers.seen(job.id, page)
    stored = find_run(service, job_id)
    if stored is not None and (job is None or job.status == "done"):
        if not is_htmx(request):
            return RedirectResponse(urls.run_page(stored.id), status_code=303)
        context = {**explore.base_context(service, form_from_spec(stored.result.spec)),
                   **explore.result_context(request, service, stored, analysis.read(stored.result))}
        return explore.render(request, context, blocks=["results", "status"], push=urls.run_page(stored.id))
    if job is None:
        raise HTTPException(404, f"no job with id {job_id[:64]!r}")
    return explore.job_page(request, service, job)


@router.post("/jobs/{job_id}/cancel", response_class=HTMLResponse, include_in_schema=False)
def cancel_job(request: Request, service: ServiceDep, client: ClientDep, job: JobDep) -> Response:
    return explore.job_fragment(request, service, _cancel(service, job, client))


def _cancel(service: ExperimentService, job: JobRow, client: str) -> JobRow:
    cancelled = service.cancel(job.id, client)  # NotYourJob (403) unless this client started it
    if cancelled is None:  # gone since it was read
        raise HTTPException(404, f"no job with id {job.id!r}")
    return cancelled
