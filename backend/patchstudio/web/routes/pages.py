"""HTML pages. One template per page; htmx requests get blocks of it, full requests the page.

GET routes only read: a run page, Figure 1 and the attribution page's agreement show what is
stored and offer a button (a POST) that computes what is missing, in the request when it is small,
as background jobs when it is not. ``GET /`` shows the default experiment only if it is stored.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2_fragments.fastapi import Jinja2Blocks

from patchstudio import analysis
from patchstudio.errors import InputError
from patchstudio.models.prompts import FAMILIES
from patchstudio.results import PatchResult
from patchstudio.specs import METRIC_LABELS, parse_spec
from patchstudio.store import JobRow, StoredRun, TooManyJobs
from patchstudio.web import companions as comp
from patchstudio.web import export, figures
from patchstudio.web import url_builder as urls
from patchstudio.web.app import FRONTEND
from patchstudio.web.deps import ClientDep, JobsDep, PageDep, ServiceDep, WatchersDep
from patchstudio.web.presets import PRESETS, offered
from patchstudio.web.forms import (
    DEFAULT_FORM,
    ERROR_FIELDS,
    FIELDS,
    FormState,
    check_form_limits,
    form_from_spec,
    methods_with,
    spec_from_form,
)
from patchstudio.web.methods import WEB_METHODS, describe, summary
from patchstudio.web.routes.api import known_id

router = APIRouter(include_in_schema=False)
templates = Jinja2Blocks(directory=str(FRONTEND / "templates"))
templates.env.globals["urls"] = urls
templates.env.filters["pct"] = analysis.percent


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


def _base_context(service, form: dict[str, str]) -> dict[str, Any]:
    return {
        "form": form,
        "models": list(service.settings.models),
        "vocabulary": (service.models.get(form.get("model")) or service.models.get(service.settings.models[0])).vocabulary
        if service.models else None,
        # the picker's text per model: architecture and size, or "not loaded"
        "model_labels": {name: loaded.label for name, loaded in service.models.items()},
        "families": FAMILIES,
        "methods": WEB_METHODS,
        "fields": [(f, methods_with(name)) for name, f in FIELDS.items()],
        "metrics": METRIC_LABELS,
        "presets": offered(list(service.settings.models)),
        "preset": None,
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


VIEW_LABELS = {"share": "share of the gap", "change": "change from no effect", "raw": "raw metric"}


def share_url(request: Request, service, run_id: str) -> str:
    """The link to send a colleague: from the configured public URL when there is one."""
    base = service.settings.public_url or str(request.base_url).rstrip("/")
    return base + urls.run_page(run_id)


def _selected(result, pos: int | None, cell: dict[str, int | None] | None) -> dict[str, int | None]:
    """The cell the URL names (``_layer``, ``_head``, ``_pos``) if it exists, else the strongest."""
    if cell and cell.get("layer") is not None:
        want = {"layer": cell.get("layer"), "pos": cell.get("pos") if "pos" in result.axes else None,
                "head": cell.get("head") if "head" in result.axes else None}
        if result.axes == ["layer", "pos", "head"]:
            want["pos"] = pos
        try:
            analysis.cell_value(result, want["layer"], want["pos"], want["head"])
            return want
        except ValueError:
            pass
    return analysis.strongest_cell(result, pos)


def _result_context(request: Request, stored: StoredRun, pos: int | None = None, service=None, view: str | None = None,
                    cell: dict[str, int | None] | None = None) -> dict[str, Any]:
    result = stored.result
    web = WEB_METHODS[result.spec.method]
    if view is not None and view not in analysis.VIEWS:
        raise InputError(f"_view must be one of {', '.join(analysis.VIEWS)}, got {view[:40]!r}", field="_view")
    shown = analysis.view(result, view)
    labels = [(n, VIEW_LABELS[n]) for n in analysis.VIEWS if n != "share" or analysis.share_defined(result)]
    if analysis.read(result).changes:
        labels = [(n, label) for n, label in labels if n != "raw"]
    if result.axes == ["layer", "pos", "head"]:
        n = len(result.labels["pos"])
        if pos is not None and not 0 <= pos < n:
            raise InputError(f"_pos {pos} is out of range: this result has positions 0 to {n - 1}", field="_pos")
        pos = analysis.default_pos(result) if pos is None else pos
    elif pos is not None and "pos" not in result.axes:
        raise InputError("_pos does not apply: this result has no position axis", field="_pos")
    else:
        pos = None  # a layer x position result: _pos names the selected cell, not a slice
    selected = _selected(result, pos, cell)
    return {
        **_cell_prompts_context(stored, shown.name, selected),
        "stored": stored,
        "result": result,
        "pos": pos,
        "heatmap": figures.heatmap(result, pos, shown.name, selected=selected),
        "python_code": export.python_snippet(result.spec),
        "spec_json": export.spec_json(result.spec),
        "view": shown,
        "view_labels": labels,
        "evidence": analysis.evidence(result),
        "description": describe(result),
        "caption": f"Metric: {analysis.metric_label(result)}; {analysis.corruption_summary(result)}",
        "selected": selected,
        "share_url": share_url(request, service, stored.id),
        "warnings": list(result.warnings or []),
        "reference": result.reference,
        "method_partial": web.partial,
        **(web.context(service, result) if web.partial else {}),
    }


def _cell_prompts_context(stored: StoredRun, view: str, cell: dict[str, int | None]) -> dict[str, Any]:
    """The selected cell on each prompt: its values, mean and interval in the heatmap's view."""
    result = stored.result
    if not result.axes or result.axes[0] != "layer":
        return {"cell_prompts": None, "prompt_strip": None}
    try:
        found = analysis.cell_prompts(result, view, cell.get("layer"), cell.get("pos"), cell.get("head"))
    except ValueError as exc:
        raise InputError(f"no such cell: {exc}", field="layer") from None
    return {
        "cell_prompts": found,
        "prompt_strip": figures.prompt_strip(found) if found is not None else None,
        "cell_prompts_url": urls.cell_prompts(stored.id, view=view),
        "stored": stored,
        "view_name": view,
    }


def _experiment_context(request: Request, service, jobs, state: FormState, client: str) -> dict[str, Any]:
    """Results for a form (a POST): stored, computed now, or a background job; or the error to show."""
    if state.error:
        unknown = _unknown_in_clean(service, state)  # the root cause of a failed name swap or guess
        if unknown is not None:
            return _error_context(str(unknown), unknown.field, unknown.detail)
        return _error_context(state.error, state.error_field, state.error_detail)
    spec = state.spec
    stored = service.store.get(spec.id)
    if stored is None:
        try:
            service.check_limits(spec.model_dump(mode="json"))
            cost = service.cost(spec)
            if cost > service.settings.background_patched_runs:
                return {"job": jobs.submit(spec, client, cost)}
            stored = service.get_or_run(spec)
        except InputError as exc:
            field = exc.field
            if field == "reference" and state.values.get("reference") == "own":
                field = "reference_prompts"  # the engine checks the given prompts: the box they were typed in
            return _error_context(str(exc), field, exc.detail)
        except TooManyJobs as exc:
            return _error_context(str(exc), "spec")
    try:
        return _result_context(request, stored, service=service)
    except InputError as exc:
        return _error_context(str(exc), exc.field, exc.detail)


ORIGIN_FIELDS = ("source", "family", "n_pairs", "family_seed", "template")


def _remember_origin(service, stored: StoredRun | None, state: FormState) -> None:
    """A run made from a built-in prompt family remembers it, so its link reopens the form as it was."""
    values = state.values
    if state.spec is not None:  # asked for from the form: listed as its own run, not only as a companion
        service.store.unlink_companion(state.spec.id)
    if stored is not None and values.get("source") == "family" and values.get("family") != "custom":
        service.store.put_origin(stored.id, {k: values[k] for k in ORIGIN_FIELDS})


def _form_for(service, stored: StoredRun) -> dict[str, str]:
    form = form_from_spec(stored.result.spec)
    origin = service.store.get_origin(stored.id)
    return {**form, **{k: v for k, v in (origin or {}).items() if k in ORIGIN_FIELDS}}


def _unknown_in_clean(service, state: FormState) -> InputError | None:
    """An unknown word in the single clean prompt, named plainly ('Xavier' is not in this model's
    vocabulary), when the form failed on something derived from that prompt."""
    from patchstudio.engine.inputs import unknown_words

    loaded = service.models.get(state.values.get("model", ""))
    if state.values.get("source") != "pair" or loaded is None or loaded.model is None:
        return None
    words = unknown_words(loaded.model, state.values.get("clean", ""))
    if not words:
        return None
    quoted = ", ".join(repr(w) for w in words)
    are = "is" if len(words) == 1 else "are"
    return InputError(f"{quoted} {are} not in this model's vocabulary; check the spelling or pick from the words it knows",
                      field="clean")


def _run_line(r) -> dict[str, Any]:
    spec = json.loads(r.spec_json)
    prompts = spec.get("prompts") or [{"clean": ""}]
    return {"id": r.id, "model_name": r.model_name, **summary(spec),
            "prompt": prompts[0]["clean"] + (f" (+{len(prompts) - 1})" if len(prompts) > 1 else "")}


def _recent(service) -> list[dict[str, Any]]:
    """The runs people asked for, newest first, each with what it asked for and its companion runs
    (Figure 1's and the triangulation's) under it instead of beside it."""
    asked = service.store.recent(12, top_level=True)
    companions = service.store.stored_companions(r.id for r in asked)
    return [{**_run_line(r), "companions": [{**_run_line(c), "role": comp.ROLE_LABELS.get(role, role)}
                                            for c, role in companions.get(r.id, [])]} for r in asked]


def _render(request: Request, context: dict[str, Any], *, blocks: list[str] | None = None, push: str | None = None, status: int = 200) -> Response:
    response = templates.TemplateResponse(request, "explore.html", context, block_names=blocks or [], status_code=status)
    if push:
        response.headers["HX-Push-Url"] = push
    return response


def _stored_or_404(service, run_id: str) -> StoredRun:
    stored = service.store.get(run_id) if known_id(run_id) else None
    if stored is None:
        raise HTTPException(404, f"no stored run with id {run_id[:64]!r}")
    return stored


@router.get("/", response_class=HTMLResponse)
def home(request: Request, service: ServiceDep, preset: str | None = None) -> Response:
    """The explore form with the default experiment, or a worked example's (``?preset=``), shown if
    it is stored (a GET never computes: else one click on Run)."""
    chosen = PRESETS.get(preset) if preset is not None else None
    if preset is not None and (chosen is None or chosen.model not in service.settings.models):
        names = ", ".join(p.name for p in offered(list(service.settings.models)))
        state = spec_from_form({})
        context = {**_base_context(service, state.values), "recent": _recent(service),
                   **_error_context(f"no example {preset!r} on this server; the examples are: {names}", "spec")}
        return _render(request, context, status=404)
    state = spec_from_form({**DEFAULT_FORM, **chosen.form} if chosen else {})
    context = {**_base_context(service, state.values), "recent": _recent(service), "preset": chosen}
    stored = service.store.get(state.spec.id) if state.spec is not None else None
    if stored is not None:
        context.update(_result_context(request, stored, service=service))
    return _render(request, context)


def _replace(service, jobs, watchers, replaces: str, new_id: str | None, client: str, page: str | None) -> dict[str, Any] | None:
    """An edit replaced the job this page showed: cancel it if it is this client's own and no other
    page or client is watching it (see watchers.py); else say why it goes on."""
    if not known_id(replaces) or replaces == new_id:
        return None
    job = service.store.get_job(replaces)
    if job is None or not job.active or job.cancel_requested:
        return None
    if job.client != client:
        return {"id": replaces, "cancelled": False, "why": "someone else asked for it too"}
    if watchers.others(replaces, page):
        return {"id": replaces, "cancelled": False, "why": "another page is watching it"}
    jobs.cancel(replaces)
    return {"id": replaces, "cancelled": True}


@router.post("/explore", response_class=HTMLResponse)
async def explore(request: Request, service: ServiceDep, jobs: JobsDep, client: ClientDep, watchers: WatchersDep,
                  page: PageDep) -> Response:
    limit = service.settings.max_body_bytes  # the body limit already bounds the form; our own checks name the field
    form = {k: v for k, v in (await request.form(max_fields=200, max_part_size=limit)).items() if isinstance(v, str)}
    replaces = form.pop("replaces", "")  # the job the page showed before this edit (app.js), not part of the form
    try:  # sizes first: nothing is parsed, generated or tokenized past the server's limits
        check_form_limits(form, service.settings.max_prompt_chars, service.settings.max_prompts)
    except InputError as exc:
        form = {k: (v if len(v) <= service.settings.max_prompt_chars else "") for k, v in form.items()}
        context = {**_base_context(service, {**DEFAULT_FORM, **form}), **_error_context(str(exc), exc.field)}
        return _render(request, context, blocks=["results", "oob"] if _is_htmx(request) else None, status=200 if _is_htmx(request) else 422)
    state = spec_from_form(form)
    context = _base_context(service, state.values)
    # The engine runs in a worker thread so the server keeps answering while it computes.
    from starlette.concurrency import run_in_threadpool

    context.update(await run_in_threadpool(_experiment_context, request, service, jobs, state, client))
    stored = context.get("stored")
    if _is_htmx(request):
        if context.get("error"):  # keep the last result on screen (marked stale); the error goes beside its field
            response = _render(request, {**context, "stale": True}, blocks=["oob"])
            response.headers["HX-Reswap"] = "none"
            return response
        push = urls.run_page(stored.id) if stored is not None else None
        _remember_origin(service, stored, state)
        new = stored.id if stored is not None else context["job"].id if context.get("job") else None
        if replaces:
            context["replaced"] = _replace(service, jobs, watchers, replaces, new, client, page)
        return _render(request, context, blocks=["results", "oob"], push=push)
    _remember_origin(service, stored, state)
    context["recent"] = _recent(service)
    return _render(request, context)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, service: ServiceDep, watchers: WatchersDep, page: PageDep, run_id: str = Path(..., max_length=64),
             _pos: int | None = None, _view: str | None = None, _layer: int | None = None, _head: int | None = None) -> Response:
    stored = service.store.get(run_id) if known_id(run_id) else None
    if stored is None:
        job = service.store.get_job(run_id) if known_id(run_id) else None
        if job is not None:  # still computing (or failed): its job, from the database
            if page:
                watchers.seen(job.id, page)
            return _job_page(request, service, job)
        context = _base_context(service, dict(DEFAULT_FORM))
        context.update(_error_context(f"no stored run with id {run_id[:64]!r}: the link may be mistyped", "spec"))
        return _render(request, context, status=404)
    context = _base_context(service, _form_for(service, stored))
    cell = {"layer": _layer, "head": _head, "pos": _pos}
    context.update(_result_context(request, stored, _pos, service=service, view=_view, cell=cell))
    if _is_htmx(request):
        return _render(request, context, blocks=["results"])
    context["recent"] = _recent(service)
    return _render(request, context)


@router.get("/runs/{run_id}/prompts", response_class=HTMLResponse)
def cell_prompts(request: Request, service: ServiceDep, run_id: str = Path(..., max_length=64), layer: int | None = None,
                 head: int | None = None, pos: int | None = None, _view: str | None = None) -> Response:
    """The clicked cell's value on each prompt (a fragment of the run page), in the page's view."""
    stored = _stored_or_404(service, run_id)
    result = stored.result
    check_cell(result, layer, pos, head)
    if _view is not None and _view not in analysis.VIEWS:
        raise InputError(f"_view must be one of {', '.join(analysis.VIEWS)}, got {_view[:40]!r}", field="_view")
    view = analysis.view(result, _view).name
    context = _cell_prompts_context(stored, view, {"layer": layer, "pos": pos, "head": head})
    return templates.TemplateResponse(request, "explore.html", context, block_name="cell_prompts")


# --- companion runs: Figure 1 with triangulation, and attribution's agreement ------------------------

def check_cell(result: PatchResult, layer: int | None, pos: int | None, head: int | None) -> None:
    """The cell a figure asks for must exist in this result: 422 naming the parameter otherwise."""
    if not result.axes or result.axes[0] != "layer":
        raise InputError(f"Figure 1 needs a result with a layer axis; this one's axes are {', '.join(result.axes)}", field="layer")
    for axis, value in (("layer", layer), ("pos", pos), ("head", head)):
        if axis in result.axes:
            n = len(result.labels[axis])
            if value is None:
                raise InputError(f"{axis} is required: this result's axes are {', '.join(result.axes)}", field=axis)
            if not 0 <= value < n:
                raise InputError(f"{axis} {value} is out of range: 0 to {n - 1}", field=axis)
        elif value is not None:
            raise InputError(f"{axis} does not apply: this result's axes are {', '.join(result.axes)}", field=axis)


def _figure1(request: Request, service, result: PatchResult, layer: int | None, head: int | None, pos: int | None,
             companions: comp.Companions | None = None) -> Response:
    check_cell(result, layer, pos, head)
    url = urls.figure1(result.id, layer=layer, pos=pos, head=head)
    if companions is None:
        companions = comp.gather(service, result, analysis.triangulation_specs(result.spec, layer, head))
    runs = companions.runs
    cell = analysis.cell_name(result, layer, pos, head)  # the template escapes it; plotly labels need their own
    context: dict[str, Any] = {
        "cell": cell,
        "figure1": None,
        "panel": comp.panel(service, companions, url, "#figure1", "innerHTML", f"Figure 1 and the triangulation for {cell}"),
    }
    if "patching" in runs and "ablation" in runs:
        patching, ablation = runs["patching"], runs["ablation"]
        patched = analysis.cell_value(patching, layer, pos, head)
        ablated = analysis.cell_value(ablation, layer, pos, head)
        direction = patching.spec.direction
        context.update({
            "figure1": figures.figure1(result, figures.safe(cell), patched, ablated, ablation.spec.ablation,
                                       patch_label="patch clean" if direction == "denoise" else "patch corrupted"),
            "patched": patched,
            "ablated": ablated,
            "patched_how": "clean value into the corrupted run" if direction == "denoise" else "corrupted value into the clean run",
            "ablated_how": f"{ablation.spec.ablation} ablation of the clean run",
            "caption": f"Metric: {analysis.metric_label(result)}",
            "companion_id": (ablation if result.spec.method == "activation_patching" else patching).id,
            "verdict": analysis.verdict(result, patched, ablated, direction),
            "triangulation": analysis.triangulate(result, runs, layer, pos, head),
        })
    if head is not None and "head" in result.axes:
        context["attention_url"] = urls.attention(result.id, layer, head)
    return templates.TemplateResponse(request, "explore.html", context, block_name="figure1")


@router.get("/runs/{run_id}/figure1", response_class=HTMLResponse)
def figure1(request: Request, service: ServiceDep, run_id: str = Path(..., max_length=64), layer: int | None = None,
            head: int | None = None, pos: int | None = None) -> Response:
    """The seed's Figure 1 for one component (clean, corrupted, patched and ablated side by side) and the
    component under every method (triangulation), from stored runs; a button computes the missing ones."""
    return _figure1(request, service, _stored_or_404(service, run_id).result, layer, head, pos)


@router.post("/runs/{run_id}/figure1", response_class=HTMLResponse)
def compute_figure1(request: Request, service: ServiceDep, jobs: JobsDep, client: ClientDep,
                    run_id: str = Path(..., max_length=64), layer: int | None = None, head: int | None = None,
                    pos: int | None = None) -> Response:
    """Compute Figure 1's missing companion runs: now when small, else as background jobs."""
    result = _stored_or_404(service, run_id).result
    check_cell(result, layer, pos, head)
    companions = comp.compute(service, jobs, result, analysis.triangulation_specs(result.spec, layer, head), client)
    return _figure1(request, service, result, layer, head, pos, companions)


def _agreement(request: Request, service, result: PatchResult) -> Response:
    if result.spec.method != "attribution_patching":
        raise InputError(f"this run's method is {result.spec.method}: agreement with exact patching applies to "
                         "attribution patching results only", field="method")
    context = WEB_METHODS["attribution_patching"].context(service, result)
    return templates.TemplateResponse(request, "methods/attribution_patching.html", {"result": result, **context})


@router.get("/runs/{run_id}/agreement", response_class=HTMLResponse)
def agreement(request: Request, service: ServiceDep, run_id: str = Path(..., max_length=64)) -> Response:
    return _agreement(request, service, _stored_or_404(service, run_id).result)


@router.post("/runs/{run_id}/agreement", response_class=HTMLResponse)
def compute_agreement(request: Request, service: ServiceDep, jobs: JobsDep, client: ClientDep,
                      run_id: str = Path(..., max_length=64)) -> Response:
    result = _stored_or_404(service, run_id).result
    if result.spec.method != "attribution_patching":
        raise InputError(f"this run's method is {result.spec.method}: agreement with exact patching applies to "
                         "attribution patching results only", field="method")
    comp.compute(service, jobs, result, {"exact": analysis.exact_patching_spec(result.spec)}, client)
    return _agreement(request, service, result)


# --- jobs ---------------------------------------------------------------------------------------------


def _job_page(request: Request, service, job: JobRow) -> Response:
    """A job's page from its row: progress while it runs, the message when it failed."""
    if _is_htmx(request):
        return _job_fragment(request, service, job)
    try:
        form = form_from_spec(parse_spec(json.loads(job.spec_json)))
    except (ValueError, InputError):
        form = dict(DEFAULT_FORM)
    context = {**_base_context(service, form), "job": job}
    return _render(request, context)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, service: ServiceDep, watchers: WatchersDep, page: PageDep,
             job_id: str = Path(..., max_length=64)) -> Response:
    job = service.store.get_job(job_id) if known_id(job_id) else None
    if job is not None and page:  # a page polling this job is watching it (presence in memory, not a write)
        watchers.seen(job.id, page)
    stored = service.store.get(job_id) if known_id(job_id) else None
    if stored is not None and (job is None or job.status == "done"):
        if not _is_htmx(request):
            return RedirectResponse(urls.run_page(stored.id), status_code=303)
        context = {**_base_context(service, form_from_spec(stored.result.spec)), **_result_context(request, stored, service=service)}
        return _render(request, context, blocks=["results"], push=urls.run_page(stored.id))
    if job is None:
        raise HTTPException(404, f"no job with id {job_id[:64]!r}")
    return _job_page(request, service, job)


@router.post("/jobs/{job_id}/cancel", response_class=HTMLResponse)
def cancel_job(request: Request, service: ServiceDep, jobs: JobsDep, job_id: str = Path(..., max_length=64)) -> Response:
    job = jobs.cancel(job_id) if known_id(job_id) else None
    if job is None:
        raise HTTPException(404, f"no job with id {job_id[:64]!r}")
    return _job_fragment(request, service, job)


def _job_fragment(request: Request, service, job: JobRow) -> Response:
    context = {**_base_context(service, dict(DEFAULT_FORM)), "job": job}
    return _render(request, context, blocks=["job"])


# --- API docs, from vendored Swagger UI (no CDN) ------------------------------------------------------


@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request) -> Response:
    return templates.TemplateResponse(request, "docs.html", {})
