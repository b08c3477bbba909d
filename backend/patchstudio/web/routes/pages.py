"""HTML pages. One template per page; htmx requests get blocks of it, full requests the page."""

from __future__ import annotations

import html
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from jinja2_fragments.fastapi import Jinja2Blocks

from patchstudio import analysis
from patchstudio.errors import InputError
from patchstudio.models.prompts import FAMILIES
from patchstudio.specs import METRIC_LABELS
from patchstudio.store import StoredRun
from patchstudio.web import figures
from patchstudio.web import url_builder as urls
from patchstudio.web.app import FRONTEND
from patchstudio.web.deps import JobsDep, ServiceDep
from patchstudio.web.forms import DEFAULT_FORM, ERROR_FIELDS, FIELDS, FormState, form_from_spec, methods_with, spec_from_form
from patchstudio.web.jobs import Job
from patchstudio.web.methods import WEB_METHODS, describe

router = APIRouter(include_in_schema=False)
templates = Jinja2Blocks(directory=str(FRONTEND / "templates"))
templates.env.globals["urls"] = urls


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


def _base_context(service, form: dict[str, str]) -> dict[str, Any]:
    return {
        "form": form,
        "models": list(service.settings.models),
        # the picker's text per model: architecture and size, or "not loaded"
        "model_labels": {name: loaded.label for name, loaded in service.models.items()},
        "families": FAMILIES,
        "methods": WEB_METHODS,
        "fields": [(f, methods_with(name)) for name, f in FIELDS.items()],
        "metrics": METRIC_LABELS,
        "error": None,
        "error_field": None,
        "error_detail": {},
        "error_fields": ERROR_FIELDS,
        "job": None,
        "result": None,
        "stored": None,
    }


def _error_context(message: str, field: str | None, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": message, "error_field": field if field in ERROR_FIELDS else "spec", "error_detail": detail or {}}


def _result_context(request: Request, stored: StoredRun, pos: int | None = None, service=None) -> dict[str, Any]:
    result = stored.result
    web = WEB_METHODS[result.spec.method]
    if result.axes == ["layer", "pos", "head"]:
        pos = analysis.default_pos(result) if pos is None or not 0 <= pos < len(result.labels["pos"]) else pos
    else:
        pos = None
    return {
        "stored": stored,
        "result": result,
        "pos": pos,
        "heatmap": figures.heatmap(result, pos),
        "description": describe(result),
        "caption": f"Metric: {METRIC_LABELS[result.spec.metric]}; {figures.corruption_summary(result)}",
        "selected": analysis.strongest_cell(result, pos),
        "share_url": str(request.base_url).rstrip("/") + urls.run_page(stored.id),
        "method_partial": web.partial,
        **(web.context(service, result) if web.partial else {}),
    }


def _experiment_context(request: Request, service, jobs, state: FormState) -> dict[str, Any]:
    """Results for a form: stored, computed now, or a background job; or the error to show."""
    if state.error:
        return _error_context(state.error, state.error_field, state.error_detail)
    spec = state.spec
    stored = service.store.get(spec.id)
    if stored is None:
        try:
            cost = service.cost(spec)
            if cost > service.settings.background_patched_runs:
                return {"job": jobs.submit(spec)}
            stored = service.get_or_run(spec)
        except InputError as exc:
            return _error_context(str(exc), exc.field, exc.detail)
    try:
        return _result_context(request, stored, service=service)
    except InputError as exc:
        return _error_context(str(exc), exc.field, exc.detail)


def _recent(service) -> list[dict[str, Any]]:
    out = []
    for r in service.store.recent(12):
        spec = json.loads(r.spec_json)
        out.append({"id": r.id, "method": r.method, "model_name": r.model_name, "component": spec.get("component"),
                    "prompt": spec["prompts"][0]["clean"] + (f" (+{len(spec['prompts']) - 1})" if len(spec["prompts"]) > 1 else "")})
    return out


def _render(request: Request, context: dict[str, Any], *, blocks: list[str] | None = None, push: str | None = None, status: int = 200) -> Response:
    response = templates.TemplateResponse(request, "explore.html", context, block_names=blocks or [], status_code=status)
    if push:
        response.headers["HX-Push-Url"] = push
    return response


@router.get("/", response_class=HTMLResponse)
def home(request: Request, service: ServiceDep, jobs: JobsDep) -> Response:
    state = spec_from_form({})
    context = {**_base_context(service, state.values), "recent": _recent(service)}
    context.update(_experiment_context(request, service, jobs, state))
    return _render(request, context)


@router.post("/explore", response_class=HTMLResponse)
async def explore(request: Request, service: ServiceDep, jobs: JobsDep) -> Response:
    form = dict(await request.form())
    state = spec_from_form(form)
    context = _base_context(service, state.values)
    # The engine runs in a worker thread so the server keeps answering while it computes.
    from starlette.concurrency import run_in_threadpool

    context.update(await run_in_threadpool(_experiment_context, request, service, jobs, state))
    stored = context.get("stored")
    if _is_htmx(request):
        push = urls.run_page(stored.id) if stored is not None else None
        return _render(request, context, blocks=["results", "oob"], push=push)
    context["recent"] = _recent(service)
    return _render(request, context)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str, service: ServiceDep, jobs: JobsDep, _pos: int | None = None) -> Response:
    stored = service.store.get(run_id)
    if stored is None:
        job = jobs.get(run_id)
        context = _base_context(service, dict(DEFAULT_FORM))
        if job is not None:
            context["job"] = job
            return _render(request, context)
        context.update(_error_context(f"no stored run with id {run_id!r}: the link may be mistyped", "spec"))
        return _render(request, context, status=404)
    context = _base_context(service, form_from_spec(stored.result.spec))
    context.update(_result_context(request, stored, _pos, service=service))
    if _is_htmx(request):
        return _render(request, context, blocks=["results"])
    return _render(request, context)


REQUIRED_COMPANIONS = ("patching", "ablation")


def _companion_runs(service, result, specs) -> dict[str, Any]:
    """The triangulation's runs. Exact patching and ablation are required; a method the model or
    the answers do not support (self-repair on Gemma 2, attribution for multi-token answers) is left
    out of the table instead of failing Figure 1."""
    runs = {}
    for role, spec in specs.items():
        if spec.id == result.id:
            runs[role] = result
            continue
        try:
            runs[role] = service.get_or_run(spec).result
        except InputError:
            if role in REQUIRED_COMPANIONS:
                raise
    return runs


@router.get("/runs/{run_id}/figure1", response_class=HTMLResponse)
def figure1(request: Request, run_id: str, service: ServiceDep, layer: int = 0, head: int | None = None, pos: int | None = None) -> Response:
    """The seed's Figure 1 for one component: clean, corrupted, patched and ablated side by side,
    with the component under every method (triangulation)."""
    stored = service.store.get(run_id)
    if stored is None:
        raise HTTPException(404, f"no stored run with id {run_id!r}")
    result = stored.result
    try:
        analysis.cell_value(result, layer, pos, head)
        specs = analysis.triangulation_specs(result.spec, layer, head)
        runs = _companion_runs(service, result, specs)
        patching, ablation = runs["patching"], runs["ablation"]
        patched = analysis.cell_value(patching, layer, pos, head)
        ablated = analysis.cell_value(ablation, layer, pos, head)
        table = analysis.triangulate(result, runs, layer, pos, head)
    except (ValueError, IndexError, InputError) as exc:
        return HTMLResponse(f'<p class="error" role="alert">Cannot show Figure 1: {html.escape(str(exc))}</p>')
    companion_id = (ablation if result.spec.method == "activation_patching" else patching).id
    cell = analysis.cell_name(result, layer, pos, head)  # the template escapes it; plotly labels need their own
    direction = patching.spec.direction
    context = {
        "figure1": figures.figure1(result, figures.safe(cell), patched, ablated, ablation.spec.ablation,
                                   patch_label="patch clean" if direction == "denoise" else "patch corrupted"),
        "cell": cell,
        "patched": patched,
        "ablated": ablated,
        "patched_how": "clean value into the corrupted run" if direction == "denoise" else "corrupted value into the clean run",
        "ablated_how": f"{ablation.spec.ablation} ablation of the clean run",
        "caption": f"Metric: {METRIC_LABELS[result.spec.metric]}",
        "companion_id": companion_id,
        "verdict": analysis.verdict(result, patched, ablated, direction),
        "triangulation": table,
    }
    return templates.TemplateResponse(request, "explore.html", context, block_name="figure1")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, service: ServiceDep, jobs: JobsDep) -> Response:
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job with id {job_id!r}")
    if job.status == "done":
        stored = service.store.get(job_id)
        if stored is not None:
            context = {**_base_context(service, form_from_spec(stored.result.spec)), **_result_context(request, stored, service=service)}
            return _render(request, context, blocks=["results"], push=urls.run_page(stored.id))
    return _job_fragment(request, service, job)


@router.post("/jobs/{job_id}/cancel", response_class=HTMLResponse)
def cancel_job(request: Request, job_id: str, service: ServiceDep, jobs: JobsDep) -> Response:
    job = jobs.cancel(job_id)
    if job is None:
        raise HTTPException(404, f"no job with id {job_id!r}")
    return _job_fragment(request, service, job)


def _job_fragment(request: Request, service, job: Job) -> Response:
    context = {**_base_context(service, dict(DEFAULT_FORM)), "job": job}
    return _render(request, context, blocks=["job"])
