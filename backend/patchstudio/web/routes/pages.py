"""HTML pages. One template per page; htmx requests get blocks of it, full requests the page."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from jinja2_fragments.fastapi import Jinja2Blocks

from patchstudio.engine.inputs import InputError
from patchstudio.models.prompts import FAMILIES
from patchstudio.specs import (
    ATTRIBUTION_COMPONENTS,
    COMPONENT_LABELS,
    METRIC_LABELS,
    AblationSpec,
    ActivationPatchingSpec,
    AttributionPatchingSpec,
    HeadRef,
    PathPatchingSpec,
    SelfRepairSpec,
)
from patchstudio.store import StoredRun
from patchstudio.web import figures
from patchstudio.web import url_builder as urls
from patchstudio.web.app import FRONTEND
from patchstudio.web.deps import JobsDep, ServiceDep
from patchstudio.web.forms import DEFAULT_FORM, FormState, form_from_spec, spec_from_form
from patchstudio.web.jobs import Job

router = APIRouter(include_in_schema=False)
templates = Jinja2Blocks(directory=str(FRONTEND / "templates"))
templates.env.globals["urls"] = urls

ERROR_FIELDS = [
    "model", "clean", "corrupted", "answer", "wrong", "n_pairs", "template", "pairs_text", "prompts", "receivers",
    "targets", "compensator", "spec",
]
FIELD_ALIASES = {"family": "pairs_text", "family_seed": "n_pairs", "seed": "spec"}


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


def _base_context(service, form: dict[str, str]) -> dict[str, Any]:
    return {
        "form": form,
        "models": list(service.settings.models),
        "families": FAMILIES,
        "components": COMPONENT_LABELS,
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
    field = FIELD_ALIASES.get(field or "", field)
    return {"error": message, "error_field": field if field in ERROR_FIELDS else "spec", "error_detail": detail or {}}


def _result_context(request: Request, stored: StoredRun, pos: int | None = None, service=None) -> dict[str, Any]:
    result = stored.result
    agreement = None
    if result.spec.method == "attribution_patching" and service is not None:
        exact = service.get_or_run(_exact_patching(result.spec)).result
        agreement = {**figures.agreement(result, exact), "exact_id": exact.id}
    if result.axes == ["layer", "pos", "head"]:
        pos = figures.default_pos(result) if pos is None or not 0 <= pos < len(result.labels["pos"]) else pos
    else:
        pos = None
    return {
        "stored": stored,
        "result": result,
        "pos": pos,
        "heatmap": figures.heatmap(result, pos),
        "description": figures.describe(result),
        "caption": f"Metric: {METRIC_LABELS[result.spec.metric]}; {figures.corruption_summary(result)}",
        "selected": _strongest_cell(result, pos),
        "share_url": str(request.base_url).rstrip("/") + urls.run_page(stored.id),
        "agreement": agreement,
        "repair_figure": figures.repair_figure(result) if result.spec.method == "self_repair" else None,
        "compensators": figures.top_compensators(result) if result.spec.method == "self_repair" else [],
    }


def _strongest_cell(result, pos: int | None) -> dict[str, int | None]:
    """The cell with the largest effect: Figure 1's initial selection."""
    base = figures.no_effect(result)
    best = (-1.0, {"layer": 0, "pos": pos, "head": None})
    if result.axes == ["pos"]:
        return {"layer": None, "pos": None, "head": None}
    for layer, row in enumerate(result.values):
        if result.axes == ["layer"]:
            cells = [(row, {"layer": layer, "pos": None, "head": None})]
        elif result.axes == ["layer", "head"]:
            cells = [(v, {"layer": layer, "pos": None, "head": h}) for h, v in enumerate(row)]
        elif result.axes == ["layer", "pos"]:
            cells = [(v, {"layer": layer, "pos": p, "head": None}) for p, v in enumerate(row)]
        else:
            cells = [(v, {"layer": layer, "pos": pos, "head": h}) for h, v in enumerate(row[pos])]
        for value, cell in cells:
            if abs(value - base) > best[0]:
                best = (abs(value - base), cell)
    return best[1]


def _experiment_context(request: Request, service, jobs, state: FormState) -> dict[str, Any]:
    """Results for a form: stored, computed now, or a background job; or the error to show."""
    if state.error:
        return _error_context(state.error, state.error_field, state.error_detail)
    spec = state.spec
    stored = service.store.get(spec.id)
    if stored is None:
        try:
            cost = service.cost(spec)
            if cost > service.settings.max_patched_runs:
                raise InputError(
                    f"this sweep needs {cost:,} patched runs, over the budget of {service.settings.max_patched_runs:,}; "
                    "use fewer prompts or positions 'all'",
                    field="prompts",
                )
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


@router.get("/runs/{run_id}/figure1", response_class=HTMLResponse)
def figure1(request: Request, run_id: str, service: ServiceDep, layer: int = 0, head: int | None = None, pos: int | None = None) -> Response:
    """The seed's Figure 1 for one component: clean, corrupted, patched and ablated side by side."""
    stored = service.store.get(run_id)
    if stored is None:
        raise HTTPException(404, f"no stored run with id {run_id!r}")
    result = stored.result
    try:
        figures.cell_value(result, layer, pos, head)
        patching = result if result.spec.method == "activation_patching" else service.get_or_run(_exact_patching(result.spec)).result
        ablation = result if result.spec.method == "ablation" else service.get_or_run(_mean_ablation(result.spec)).result
    except (ValueError, IndexError, InputError) as exc:
        return HTMLResponse(f'<p class="error" role="alert">Cannot show Figure 1: {_escape(str(exc))}</p>')
    companion_id = (ablation if result.spec.method == "activation_patching" else patching).id
    patched = figures.cell_value(patching, layer, pos, head)
    ablated = figures.cell_value(ablation, layer, pos, head)
    cell = figures.cell_name(result, layer, pos, head)
    spec = patching.spec
    patched_how = "clean value into the corrupted run" if spec.direction == "denoise" else "corrupted value into the clean run"
    ablated_how = f"{ablation.spec.ablation} ablation of the clean run"
    context = {
        "figure1": figures.figure1(result, cell, patched, ablated, ablation.spec.ablation, patch_label="patch clean" if spec.direction == "denoise" else "patch corrupted"),
        "cell": cell,
        "patched": patched,
        "ablated": ablated,
        "patched_how": patched_how,
        "ablated_how": ablated_how,
        "caption": f"Metric: {METRIC_LABELS[result.spec.metric]}",
        "companion_id": companion_id,
        "verdict": figures.verdict(result, patched, ablated, spec.direction),
        "triangulation": _triangulation(service, result, patching, ablation, layer, pos, head),
    }
    return templates.TemplateResponse(request, "explore.html", context, block_name="figure1")


def _triangulation(service, result, patching, ablation, layer: int, pos: int | None, head: int | None) -> list[dict[str, Any]]:
    """The selected component under every method on the same prompts and metric, each as a share of
    the clean-corrupted gap, with plain-language flags where they disagree."""
    gap = result.clean - result.corrupted
    if abs(gap) < 1e-9:
        return []
    direction = patching.spec.direction
    base = result.corrupted if direction == "denoise" else result.clean

    def share(value: float) -> float:  # movement away from the base run, as a share of the gap
        return (value - base) / gap if direction == "denoise" else (base - value) / gap

    rows = [
        {"method": "activation patching (sufficiency)", "value": figures.cell_value(patching, layer, pos, head),
         "share": share(figures.cell_value(patching, layer, pos, head)), "link": patching.id},
        {"method": f"{ablation.spec.ablation} ablation (necessity)", "value": figures.cell_value(ablation, layer, pos, head),
         "share": (result.clean - figures.cell_value(ablation, layer, pos, head)) / gap, "link": ablation.id},
    ]
    common = _common(patching.spec)
    if common["component"] in ATTRIBUTION_COMPONENTS:
        attr = service.get_or_run(AttributionPatchingSpec(direction=direction, **common)).result
        value = figures.cell_value(attr, layer, pos, head)
        rows.append({"method": "attribution estimate (linear)", "value": value, "share": share(value), "link": attr.id})
    if common["component"] == "head" and common["positions"] == "all" and head is not None:
        path = service.get_or_run(PathPatchingSpec(direction=direction, **common)).result
        value = figures.cell_value(path, layer, None, head)
        rows.append({"method": "path patching to the logits", "value": value, "share": share(value), "link": path.id})
        if common["metric"] == "logit_diff":
            repair = service.get_or_run(
                SelfRepairSpec(targets=[HeadRef(layer=layer, head=head)], **{**common, "metric": "logit_diff"})
            ).result
            x = repair.extras or {}
            rows.append({"method": "mean ablation: total effect (TE)", "value": x["total_effect"], "share": -x["total_effect"] / gap, "link": repair.id})
            rows.append({"method": "mean ablation: direct effect (DE)", "value": x["direct_effect"], "share": -x["direct_effect"] / gap, "link": repair.id})
    flags = figures.triangulation_flags(rows)
    return [{**r, "flag": ""} for r in rows] + ([{"method": "reading", "flag": " ".join(flags)}] if flags else [])


def _common(spec) -> dict[str, Any]:
    return {"model": spec.model, "prompts": spec.prompts, "component": spec.component, "positions": spec.positions, "metric": spec.metric}


def _exact_patching(spec) -> ActivationPatchingSpec:
    """Figure 1's restoration bar: exact activation patching (an attribution spec keeps its direction)."""
    return ActivationPatchingSpec(direction=getattr(spec, "direction", "denoise"), **_common(spec))


def _mean_ablation(spec) -> AblationSpec:
    """Figure 1's necessity bar: mean ablation of the same component on the clean run."""
    return AblationSpec(ablation="mean", **_common(spec))


def _escape(text: str) -> str:
    import html

    return html.escape(text)


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
