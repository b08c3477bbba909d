"""JSON API: runs, their .json and .csv twins, jobs, health."""

from __future__ import annotations

import csv
import io
import itertools
from typing import Any

from fastapi import APIRouter, Body, HTTPException
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from patchstudio.errors import InputError, describe, field_errors
from patchstudio.specs import defaults_doc, parse_spec
from patchstudio.store import StoredRun
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import JobsDep, ServiceDep

router = APIRouter()

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
        "model_fingerprint": stored.model_fingerprint,
        "created_at": stored.created_at.isoformat(),
        "links": {"page": urls.run_page(stored.id), "json": urls.run_json(stored.id), "csv": urls.run_csv(stored.id)},
    }


def problem(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status)


def input_problem(exc: InputError | ValidationError) -> JSONResponse:
    """422 with every problem as ``{field, message}`` (one shape for every method and route)."""
    errors = field_errors(exc)
    if isinstance(exc, InputError):
        return problem(422, str(exc), field=exc.field, errors=errors, info=exc.detail)
    return problem(422, f"invalid spec: {describe(errors)}", field=errors[0]["field"], errors=errors)


def _spec_or_problem(data: Any):
    try:
        return parse_spec(data), None
    except ValidationError as exc:
        return None, input_problem(exc)


@router.post(
    "/api/runs",
    summary="Run an experiment spec (or fetch it from the store) and return its result",
    description="The body is the experiment spec, unchanged. Defaults: "
    + ", ".join(f"{k}={v}" for k, v in defaults_doc().items())
    + ". The same spec always gets the same id and is served from the store without recomputing.",
    tags=["runs"],
)
def create_run(service: ServiceDep, spec: dict[str, Any] = Body(..., examples=[SPEC_EXAMPLE])) -> Any:
    parsed, error = _spec_or_problem(spec)
    if error is not None:
        return error
    return stored_payload(service.get_or_run(parsed))  # an InputError becomes a 422 (app.py)


@router.get("/runs/{run_id}.json", summary="A stored result", tags=["runs"])
def run_json(run_id: str, service: ServiceDep) -> Any:
    stored = service.store.get(run_id)
    if stored is None:
        raise HTTPException(404, f"no stored run with id {run_id!r}")
    return stored_payload(stored)


def values_csv(stored: StoredRun) -> str:
    """Long in the cells, wide in the prompts: one row per cell, a column per axis (and the token
    string for positions), then ``value`` (the mean over the prompts), ``std``, ``ci_low``,
    ``ci_high`` (a 95% bootstrap interval of the mean) and ``prompt_1`` .. ``prompt_n`` (each
    prompt's own value). Results stored before the spread existed leave those columns empty."""
    result = stored.result
    out = io.StringIO()
    writer = csv.writer(out)
    n_prompts = len(result.per_prompt) if result.per_prompt is not None else len(result.prompts)
    spread = ("std", "ci_low", "ci_high")
    header = list(result.axes) + (["token"] if "pos" in result.axes else []) + ["value", *spread]
    writer.writerow(header + [f"prompt_{i + 1}" for i in range(n_prompts)])
    sizes = [len(result.labels[a]) for a in result.axes]

    def at(nested: Any, index: tuple[int, ...]) -> str:
        if nested is None:
            return ""
        for i in index:
            nested = nested[i]
        return repr(float(nested))

    per_prompt = result.per_prompt if result.per_prompt is not None else [None] * n_prompts
    for index in itertools.product(*(range(s) for s in sizes)):
        row: list[Any] = list(index)
        if "pos" in result.axes:
            row.append(result.labels["pos"][index[result.axes.index("pos")]])
        row += [at(result.values, index), *(at(getattr(result, name), index) for name in spread)]
        writer.writerow(row + [at(p, index) for p in per_prompt])
    return out.getvalue()


@router.get("/runs/{run_id}.csv", summary="A stored result's values as CSV", tags=["runs"])
def run_csv(run_id: str, service: ServiceDep) -> Response:
    stored = service.store.get(run_id)
    if stored is None:
        raise HTTPException(404, f"no stored run with id {run_id!r}")
    return Response(
        values_csv(stored),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="patchstudio-{run_id}.csv"'},
    )


@router.get("/api/runs", summary="Recent runs", tags=["runs"])
def recent_runs(service: ServiceDep, limit: int = 20) -> Any:
    return [
        {"id": r.id, "method": r.method, "model": r.model_name, "created_at": r.created_at.isoformat(), "links": {"page": urls.run_page(r.id)}}
        for r in service.store.recent(max(1, min(limit, 200)))
    ]


@router.post("/api/jobs", summary="Start an experiment as a background job", tags=["jobs"])
def create_job(service: ServiceDep, jobs: JobsDep, spec: dict[str, Any] = Body(..., examples=[SPEC_EXAMPLE])) -> Any:
    parsed, error = _spec_or_problem(spec)
    if error is not None:
        return error
    service.cost(parsed)  # checks the prompts and the budget first; an InputError becomes a 422
    return jobs.submit(parsed).as_dict()


@router.get("/jobs/{job_id}.json", summary="A background job's progress", tags=["jobs"])
def job_json(job_id: str, jobs: JobsDep) -> Any:
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job with id {job_id!r}")
    return job.as_dict()


@router.get("/healthz", summary="Ready when a model is loaded", tags=["health"])
def healthz(service: ServiceDep) -> Any:
    models = {name: ("loaded" if m.model is not None else m.error) for name, m in service.models.items()}
    status = 200 if service.ready else 503
    return JSONResponse({"status": "ok" if service.ready else "loading", "models": models}, status_code=status)
