"""JSON API: runs, their .json and .csv twins, jobs, health.

GET routes only read the store. POST /api/runs computes a small experiment in the request and
queues a large one (202 with the job); POST /api/jobs always queues."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Path, Query
from fastapi.responses import JSONResponse, Response

from patchstudio import analysis
from patchstudio.specs import defaults_doc
from patchstudio.jobs import JobRow
from patchstudio.store import StoredRun
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ClientDep, JobsDep, PageDep, ServiceDep, WatchersDep

router = APIRouter()

RUN_ID = re.compile(r"^[0-9a-f]{16}$")
RunId = Path(..., description="A run's id: 16 hex digits (the spec's hash).", max_length=64)

REFUSALS = {
    413: {"description": "The body is over the server's size limit (PATCHSTUDIO_MAX_BODY_BYTES)."},
    422: {"description": "Bad input: `field` names it, `detail` says why."},
    429: {"description": "This client already has its cap of queued and running jobs."},
}


def known_id(run_id: str) -> bool:
    """Ids are spec hashes: anything else is not looked up at all."""
    return bool(RUN_ID.match(run_id))


def not_found(what: str, run_id: str) -> HTTPException:
    return HTTPException(404, f"no {what} with id {run_id[:64]!r}")

SPEC_EXAMPLE = {
    "model": "default",
    "method": "activation_patching",
    "prompts": [
        {
            "clean": "When Mary and John went to the store, John gave a drink to",
            "corrupted": "When Mary and John went to the store, Mary gave a drink to",
            "answer": "Mary",
            "wrong": "John",
        }
    ],
    "component": "head",
    "positions": "all",
    "direction": "denoise",
    "metric": "logit_diff",
}


def stored_payload(stored: StoredRun) -> dict[str, Any]:
    """The result JSON plus the record's provenance: one shape for POST /api/runs and /runs/{id}.json."""
    return {
        **stored.result.model_dump(mode="json"),
        "evidence": analysis.evidence(stored.result),
        "views": analysis.all_views(stored.result),
        "model_fingerprint": stored.model_fingerprint,
        "created_at": stored.created_at.isoformat(),
        "links": {"page": urls.run_page(stored.id), "json": urls.run_json(stored.id), "csv": urls.run_csv(stored.id)},
    }


def job_payload(job: JobRow) -> dict[str, Any]:
    return {**job.as_dict(), "links": {"job": urls.job_json(job.id), "page": urls.job(job.id), "run": urls.run_json(job.id),
                                       "cancel": urls.api_job_cancel(job.id)}}


def accepted(job: JobRow) -> JSONResponse:
    return JSONResponse(job_payload(job), status_code=202, headers={"Location": urls.job_json(job.id)})


@router.post(
    "/api/runs",
    summary="Run an experiment spec (or fetch it from the store) and return its result",
    description="The body is the experiment spec, unchanged. Defaults: "
    + ", ".join(f"{k}={v}" for k, v in defaults_doc().items())
    + ". The same spec always gets the same id and is served from the store without recomputing. "
    "An experiment over the server's synchronous cost (PATCHSTUDIO_BACKGROUND_PATCHED_RUNS patched runs) is "
    "queued instead: the answer is 202 with the job (poll `links.job`; the result then is at `links.run`).",
    tags=["runs"],
    responses={202: {"description": "Queued as a background job."}, **REFUSALS},
)
def create_run(service: ServiceDep, jobs: JobsDep, client: ClientDep,
               spec: dict[str, Any] = Body(..., examples=[SPEC_EXAMPLE])) -> Any:
    parsed = service.parse(spec)  # limits, then the spec: an InputError or ValidationError is a 422 (app.py)
    stored = service.store.get(parsed.id)
    if stored is not None:
        return stored_payload(stored)
    cost = service.cost(parsed)
    if cost > service.settings.background_patched_runs:
        return accepted(jobs.submit(parsed, client, cost))  # over the cap: a 429 (app.py)
    return stored_payload(service.get_or_run(parsed))


@router.get("/runs/{run_id}.json", summary="A stored result", tags=["runs"], responses={404: {"description": "No such run."}})
def run_json(service: ServiceDep, run_id: str = RunId) -> Any:
    stored = service.store.get(run_id) if known_id(run_id) else None
    if stored is None:
        raise not_found("stored run", run_id)
    return stored_payload(stored)


def values_csv(stored: StoredRun) -> str:
    """Long in the cells, wide in the prompts: one row per cell, a column per axis (the token and, for
    IOI-shaped prompts, its role for positions), then ``value`` (the mean over the prompts), its
    ``change`` from "no effect", its ``share`` of the clean-corrupted gap (blank where the gap is 0),
    ``std``, ``ci_low``, ``ci_high`` (a 95% bootstrap interval of the mean) and ``prompt_1`` ..
    ``prompt_n`` (each prompt's own value). Results stored before the spread existed leave those
    columns empty."""
    result = stored.result
    out = io.StringIO()
    writer = csv.writer(out)
    n_prompts = len(result.per_prompt) if result.per_prompt is not None else len(result.prompts)
    spread = ("std", "ci_low", "ci_high")
    roles = analysis.position_roles(result) if "pos" in result.axes else []
    header = list(result.axes) + (["token", "role"] if "pos" in result.axes else []) + ["value", "change", "share", *spread]
    writer.writerow(header + [f"prompt_{i + 1}" for i in range(n_prompts)])
    change = analysis.view(result, "change").values
    share_view = analysis.view(result, "share")
    share = share_view.values if share_view.name == "share" else None
    sizes = [len(result.labels[a]) for a in result.axes]

    def at(nested: Any, index: tuple[int, ...]) -> str:
        if nested is None or (isinstance(nested, list) and not nested):
            return ""
        for i in index:
            nested = nested[i]
        return repr(float(nested))

    per_prompt = result.per_prompt if result.per_prompt is not None else [None] * n_prompts
    for index in itertools.product(*(range(s) for s in sizes)):
        row: list[Any] = list(index)
        if "pos" in result.axes:
            pos = index[result.axes.index("pos")]
            row += [result.labels["pos"][pos], roles[pos]]
        row += [at(result.values, index), at(change, index), at(share, index), *(at(getattr(result, name), index) for name in spread)]
        writer.writerow(row + [at(p, index) for p in per_prompt])
    return out.getvalue()


@router.get("/runs/{run_id}.csv", summary="A stored result's values as CSV", tags=["runs"], responses={404: {"description": "No such run."}})
def run_csv(service: ServiceDep, run_id: str = RunId) -> Response:
    stored = service.store.get(run_id) if known_id(run_id) else None
    if stored is None:
        raise not_found("stored run", run_id)
    return Response(
        values_csv(stored),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="patchstudio-{run_id}.csv"'},
    )


@router.get("/api/runs", summary="Recent runs", tags=["runs"])
def recent_runs(service: ServiceDep, limit: int = Query(20, ge=1, le=200)) -> Any:
    """Newest first, each with what it asked for (`component`, `direction`, `metric`) and, for a
    companion run (computed for another run's Figure 1 or triangulation), `companion_of`."""
    from patchstudio.web.methods import summary

    recent = service.store.recent(limit)
    parents = service.store.get_companions(r.id for r in recent)
    out = []
    for r in recent:
        asked = summary(json.loads(r.spec_json))
        parent = parents.get(r.id)
        out.append({"id": r.id, "method": r.method, "model": r.model_name, "component": asked["component"],
                    "direction": asked["direction"], "metric": asked["metric"], "created_at": r.created_at.isoformat(),
                    "companion_of": {"id": parent.parent_id, "role": parent.role} if parent else None,
                    "links": {"page": urls.run_page(r.id)}})
    return out


@router.post("/api/jobs", summary="Start an experiment as a background job", tags=["jobs"], status_code=202,
             responses={202: {"description": "The job (new, or the one already queued, running or done for this spec)."}, **REFUSALS})
def create_job(service: ServiceDep, jobs: JobsDep, client: ClientDep, spec: dict[str, Any] = Body(..., examples=[SPEC_EXAMPLE])) -> Any:
    parsed = service.parse(spec)
    cost = service.cost(parsed)  # checks the prompts and the budget first; an InputError becomes a 422
    return accepted(jobs.submit(parsed, client, cost))


@router.get("/jobs/{job_id}.json", summary="A background job's progress", tags=["jobs"], responses={404: {"description": "No such job."}})
def job_json(jobs: JobsDep, watchers: WatchersDep, client: ClientDep, page: PageDep, job_id: str = Path(..., max_length=64)) -> Any:
    job = jobs.get(job_id) if known_id(job_id) else None
    if job is None:
        raise not_found("job", job_id)
    watchers.seen(job.id, page or f"api:{client}")  # a client polling a job is watching it
    return job_payload(job)


@router.post("/api/jobs/{job_id}/cancel", summary="Cancel a queued or running job", tags=["jobs"],
             responses={404: {"description": "No such job."}})
def cancel_job_api(jobs: JobsDep, job_id: str = Path(..., max_length=64)) -> Any:
    job = jobs.cancel(job_id) if known_id(job_id) else None
    if job is None:
        raise not_found("job", job_id)
    return job_payload(job)


@router.get("/healthz", summary="Liveness: the process answers", tags=["health"])
def healthz() -> Any:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database answers and takes writes, and a model is loaded", tags=["health"],
            responses={503: {"description": "Not ready: `checks` says which part."}})
def readyz(service: ServiceDep) -> Any:
    checks: dict[str, Any] = {}
    try:
        service.store.check_writable()
        checks["database"] = "ok"
    except Exception:  # the reason (URL, path, driver text) goes to the log only
        import logging

        logging.getLogger("patchstudio.web").exception("readiness: the database check failed")
        checks["database"] = "unavailable"
    checks["models"] = {name: ("loaded" if m.model is not None else "unavailable") for name, m in service.models.items()}
    ready = checks["database"] == "ok" and service.ready
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)
