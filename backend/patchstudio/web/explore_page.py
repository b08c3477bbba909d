"""What ``explore.html`` shows and how it is rendered: the form (models, methods, fields, errors
beside their fields), a stored run's result, a job's progress, and the recent runs. The routes that
render that page (the form, a run, a job) build their context here, so each part is built once.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from patchstudio import analysis, live
from patchstudio.analysis.triangulation import attribution_estimate_spec
from patchstudio.engine.methods import METHODS
from patchstudio.analysis import Reading
from patchstudio.errors import InputError
from patchstudio.engine.families import check_families
from patchstudio.model_manager import megabytes
from patchstudio.models.prompts import FAMILIES, Family
from patchstudio.results import PatchResult
from patchstudio.service import ExperimentService
from patchstudio.specs import METRIC_LABELS, parse_spec
from patchstudio.jobs import eta
from patchstudio.jobs.store import JobRow, utcnow
from patchstudio.store import StoredRun
from patchstudio.web import companions as comp
from patchstudio.web import export, figures
from patchstudio.web import url_builder as urls
from patchstudio.web.forms import DEFAULT_FORM, ERROR_FIELDS, FIELDS, form_from_spec, methods_with
from patchstudio.web.methods import WEB_METHODS, describe, summary
from patchstudio.web.presets import offered
from patchstudio.web.templating import is_htmx, templates

ORIGIN_FIELDS = ("source", "family", "n_pairs", "family_seed", "template")


def loaded_model(service: ExperimentService, name: str | None) -> Any:
    """The loaded model of that name, or None (not allowed here, or not loaded)."""
    loaded = service.models.get(name) if name else None
    return loaded.model if loaded is not None else None


def family_offer(service: ExperimentService, model_name: str | None) -> dict[str, Any]:
    """The families the picker offers for this model (those its tokenizer makes from single-token
    words) and, for the others, why not; every family where the model is not loaded."""
    model = loaded_model(service, model_name)
    if model is None:
        return {"families": FAMILIES, "families_refused": {}}
    checks = check_families(model)
    offered: dict[str, Family] = {name: FAMILIES[name] for name, c in checks.items() if c.offered}
    return {"families": offered, "families_refused": {name: c.refusal for name, c in checks.items() if not c.offered}}


def base_context(service: ExperimentService, form: dict[str, str]) -> dict[str, Any]:
    """The form and everything it offers; nothing shown yet. A page for a model counts as its use."""
    service.manager.touch(form.get("model", ""))
    return {
        "form": form,
        "models": list(service.settings.models),
        "vocabulary": (service.models.get(form.get("model")) or service.models.get(service.settings.models[0])).vocabulary
        if service.models else None,
        # the picker's text per model: architecture and size, or "not loaded"
        "model_labels": {name: loaded.label for name, loaded in service.models.items()},
        **models_context(service),  # and each model's state: loaded, loading, not loaded (a Load button), unavailable
        **family_offer(service, form.get("model") or (service.settings.models[0] if service.settings.models else None)),
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
        "live": None,  # an estimate drawn before its exact result, or that exact result (estimate_context)
    }


def models_context(service: ExperimentService) -> dict[str, Any]:
    """The picker's panel (``_models.html``; ``GET /api/models``): every model's state and the budget."""
    manager = service.manager
    return {"model_states": manager.states(), "model_budget_mb": megabytes(manager.budget),
            "model_used_mb": megabytes(manager.used_bytes())}


def error_context(message: str, field: str | None, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """An error shown beside its field (beside the whole spec when the form has no such field)."""
    return {"error": message, "error_field": field if field in ERROR_FIELDS else "spec", "error_detail": detail or {}}


def render(request: Request, context: dict[str, Any], *, blocks: list[str] | None = None, push: str | None = None,
           status: int = 200) -> Response:
    """explore.html, or the named blocks of it (htmx); ``push`` becomes the browser's URL."""
    response = templates.TemplateResponse(request, "explore.html", context, block_names=blocks or [], status_code=status)
    if push:
        response.headers["HX-Push-Url"] = push
    return response


# --- a stored run --------------------------------------------------------------------------------------


def share_url(request: Request, service: ExperimentService, run_id: str, **state: object) -> str:
    """The link to send a colleague, with the view it shows (``state``: view, scale, layer, head,
    pos; see ``view_state``): from the configured public URL when there is one."""
    base = service.settings.public_url or str(request.base_url).rstrip("/")
    return base + urls.run_page(run_id, **state)


def view_state(view: str, scale: str, selected: dict[str, int | None]) -> dict[str, object]:
    """What a run's page shows beyond the run, as its link carries it (``_view``, ``_scale``, the
    selected cell's ``_layer``, ``_head``, ``_pos``; a per-position head sweep's ``_pos`` is also the
    position shown)."""
    return {"view": view, "scale": scale, "layer": selected.get("layer"), "head": selected.get("head"),
            "pos": selected.get("pos")}


def form_for(service: ExperimentService, stored: StoredRun) -> dict[str, str]:
    """The form as it made this run (a run from a built-in prompt family reopens that family)."""
    form = form_from_spec(stored.result.spec)
    origin = service.store.get_origin(stored.id)
    return {**form, **{k: v for k, v in (origin or {}).items() if k in ORIGIN_FIELDS}}


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


def check_figure1(result: PatchResult, layer: int | None, pos: int | None, head: int | None) -> None:
    """Figure 1 patches and ablates the cell's component: a method that reads one run (the logit lens)
    has none to patch (422 on ``method``); otherwise the cell must exist."""
    method = METHODS[result.spec.method]
    if method.reads_run is not None:
        raise InputError(f"Figure 1 patches and ablates a component; the {method.title} reads one run and has none "
                         f"to patch", field="method")
    check_cell(result, layer, pos, head)


def check_view(view: str | None) -> None:
    if view is not None and view not in analysis.VIEWS:
        raise InputError(f"_view must be one of {', '.join(analysis.VIEWS)}, got {view[:40]!r}", field="_view")


def check_scale(scale: str | None) -> None:
    if scale is not None and scale not in analysis.SCALES:
        raise InputError(f"_scale must be one of {', '.join(analysis.SCALES)}, got {scale[:40]!r}", field="_scale")


def covered_legend(reading: Reading) -> str:
    """What the faded, struck cells mean, with how many there are ('' when none)."""
    covered = analysis.covers_no_effect(reading)
    if covered is None:
        return ""
    marks = [m for _, m in analysis.flat_cells(reading.result, covered)]
    k = int(sum(marks))
    if not k:
        return ""
    n = len(reading.result.per_prompt or reading.result.prompts)
    return (f"Faded, struck cells ({k} of {len(marks)}): the 95% interval of their mean over {n} prompts covers no "
            "effect, so these prompts cannot tell them from no effect.")


def png_caption(reading: Reading, run_id: str, claim: str, link: str, notes: list[str]) -> dict[str, Any]:
    """The PNG's words, so a figure sent alone still carries the whole claim: the claim line (method,
    direction, component, metric, corruption) as its title; below it the evidence, the ablation
    reference where one was used, the prompt count, ``notes`` (the floor, the marked cells), then
    the run's id and its link."""
    result = reading.result
    n = len(result.prompts)
    lines = [f"Evidence: {reading.evidence}."]
    if result.reference:
        lines.append(f"Ablation reference: {result.reference.get('description', '')}.")
    lines.append(f"{n} prompt pair{'s' if n != 1 else ''}" + (", each cell their mean." if n > 1 else ".")
                 + f" Clean {result.clean:.4g}, corrupted {result.corrupted:.4g} ({reading.unit}).")
    lines += [note for note in notes if note]
    # the run's line last; the page puts its current link in (a click on a cell changes it)
    return {"claim": claim, "lines": lines, "run": f"Run {run_id} on {result.model.name}", "link": link}


def _selected(reading: Reading, pos: int | None, cell: dict[str, int | None] | None) -> dict[str, int | None]:
    """The cell the URL names (``_layer``, ``_head``, ``_pos``) if it exists, else the strongest."""
    result = reading.result
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
    return reading.strongest_cell(pos)


def result_context(request: Request, service: ExperimentService, stored: StoredRun, reading: Reading, pos: int | None = None,
                   view: str | None = None, cell: dict[str, int | None] | None = None,
                   scale: str | None = None) -> dict[str, Any]:
    """A run's result section, from its one Reading: heatmap, views, scale, cell prompts, method section."""
    result = stored.result
    web = WEB_METHODS[result.spec.method]
    check_view(view)
    check_scale(scale)
    shown = reading.view(view)
    if result.axes == ["layer", "pos", "head"]:
        n = len(result.labels["pos"])
        if pos is not None and not 0 <= pos < n:
            raise InputError(f"_pos {pos} is out of range: this result has positions 0 to {n - 1}", field="_pos")
        pos = reading.default_pos if pos is None else pos
    elif pos is not None and "pos" not in result.axes:
        raise InputError("_pos does not apply: this result has no position axis", field="_pos")
    else:
        pos = None  # a layer x position result: _pos names the selected cell, not a slice
    selected = _selected(reading, pos, cell) if web.heatmap else {"layer": None, "pos": None, "head": None}
    scale = scale or analysis.default_scale(shown.name)
    heatmap = figures.heatmap(reading, pos, shown.name, selected=selected, scale=scale) if web.heatmap else None
    state = view_state(shown.name, scale, selected)
    link = share_url(request, service, stored.id, **state)
    description = describe(result)
    floor = analysis.floor_notice(reading) if web.heatmap else None
    legend = covered_legend(reading) if web.heatmap else None
    caption = f"Metric: {reading.metric_label}; {analysis.corruption_summary(result)}"
    share_of = ""
    if shown.name == "share" and reading.share_base is not None:  # a share of something other than the gap
        share_of = f"Shares are of {reading.share_words} ({reading.span:+.4g} {reading.unit})."
        caption += f". {share_of[:-1]}"
    return {
        **cell_prompts_context(stored, reading, shown.name, selected),
        "stored": stored,
        "result": result,
        "reading": reading,
        "pos": pos,
        "position_labels": analysis.position_labels(result) if "pos" in result.axes else [],
        "heatmap": heatmap,
        "python_code": export.python_snippet(result.spec),
        "spec_json": export.spec_json(result.spec),
        "view": shown,
        "view_labels": [(n, reading.view_label(n)) for n in reading.offered],
        "state": state,
        "scale": analysis.scale(reading, shown.name, scale),
        "scale_labels": [(n, analysis.scale_label(reading, n)) for n in analysis.offered_scales(reading, shown.name)],
        "page_link": lambda **changes: urls.run_page(stored.id, **{**state, **changes}),
        "floor_notice": floor,
        "covered_legend": legend,
        "evidence": reading.evidence,
        "description": description,
        "caption": caption,
        "png_caption": png_caption(reading, stored.id, description, link, [share_of, floor, legend]),
        "selected": selected,
        "share_url": link,
        # a record from other weights or another dtype than this server's model says so first (service.py)
        "warnings": [n for n in [service.computation_note(stored)] if n] + list(result.warnings or []),
        "reference": result.reference,
        "method_partial": web.partial,
        **(web.context(service, reading) if web.partial else {}),
    }


def cell_prompts_context(stored: StoredRun, reading: Reading, view: str, cell: dict[str, int | None]) -> dict[str, Any]:
    """The selected cell on each prompt: its values, mean and interval in the heatmap's view."""
    result = stored.result
    if not result.axes or result.axes[0] != "layer":
        return {"cell_prompts": None, "prompt_strip": None}
    try:
        found = reading.cell_prompts(view, cell.get("layer"), cell.get("pos"), cell.get("head"))
    except ValueError as exc:
        raise InputError(f"no such cell: {exc}", field="layer") from None
    return {
        "cell_prompts": found,
        "prompt_strip": figures.prompt_strip(found) if found is not None else None,
        "cell_prompts_url": urls.cell_prompts(stored.id, view=view),
        "stored": stored,
        "view_name": view,
    }


# --- a live edit on a larger model: the estimate, then the exact result (live.py) ---------------------


def estimate_context(estimate: live.Estimate, values: dict[str, str]) -> dict[str, Any]:
    """The estimate's label, its link, and the follow-up POST (the same form, flagged) for the exact result."""
    n, runs = estimate.passes, estimate.exact_runs
    return {"live": {
        "state": "estimate",
        "label": f"Estimate (attribution patching: gradient, {n} forward-and-backward pass{'es' if n != 1 else ''} "
                 f"instead of {runs:,} patched runs) — exact result on its way",
        "run_id": estimate.run.id,
        "follow_up": {**values, "exact_after": estimate.run.id},
    }}


def exact_context(service: ExperimentService, spec) -> dict[str, Any]:
    """The exact result drawn in place of its estimate, labelled so, with the estimate's link."""
    estimate = attribution_estimate_spec(spec) if spec is not None else None
    stored = service.store.get(estimate.id) if estimate is not None else None
    return {"live": {"state": "exact", "label": "Exact (activation patching: every cell its own patched run)",
                     "run_id": stored.id if stored is not None else None}}


# --- recent runs ---------------------------------------------------------------------------------------


def _run_line(r) -> dict[str, Any]:
    spec = json.loads(r.spec_json)
    prompts = spec.get("prompts") or [{"clean": ""}]
    return {"id": r.id, "model_name": r.model_name, **summary(spec),
            "prompt": prompts[0]["clean"] + (f" (+{len(prompts) - 1})" if len(prompts) > 1 else "")}


def recent(service: ExperimentService) -> list[dict[str, Any]]:
    """The runs people asked for, newest first, each with what it asked for and its companion runs
    (Figure 1's and the triangulation's) under it instead of beside it."""
    asked = service.store.recent(12, top_level=True)
    companions = service.store.stored_companions(r.id for r in asked)
    return [{**_run_line(r), "companions": [{**_run_line(c), "role": comp.ROLE_LABELS.get(role, role)}
                                            for c, role in companions.get(r.id, [])]} for r in asked]


def your_runs(service: ExperimentService, client: str) -> list[dict[str, Any]]:
    """The stored runs this browser (its client key) asked for from the form, most recent first."""
    return [_run_line(r) for r in service.store.requested_by(client, 12)]


# --- a job ---------------------------------------------------------------------------------------------

JOB_LIST_LIMIT = 50  # active jobs read per status (the jobs list shows as many)


def active_jobs(request: Request, service: ExperimentService) -> tuple[list[JobRow], list[JobRow], dict[str, eta.Estimate]]:
    """Running and queued jobs, with each one's time left (``jobs/eta.py``; a running job timed
    from where this process first saw its progress, ``web/progress.py``), read once."""
    jobs = service.jobs.store
    running, queued = jobs.by_status(["running"], JOB_LIST_LIMIT), jobs.by_status(["queued"], JOB_LIST_LIMIT)
    now = utcnow()
    since = request.app.state.progress.observe(running, now)
    return running, queued, eta.estimates(running + queued, jobs.finished(service.settings.models), now, since=since)


def job_context(request: Request, service: ExperimentService, job: JobRow) -> dict[str, Any]:
    """A job's box: the job and, while it is active, its time left in words (from the first second)."""
    if not job.active or service.jobs is None:
        return {"job": job, "job_eta": None}
    estimate = active_jobs(request, service)[2].get(job.id)
    words = eta.words(estimate.seconds_left) if estimate is not None else ""
    basis = eta.BASIS_WORDS.get(estimate.basis or "", "") if estimate is not None else ""
    return {"job": job, "job_eta": {"words": words, "basis": basis}}


def job_page(request: Request, service: ExperimentService, job: JobRow) -> Response:
    """A job's page from its row: progress while it runs, the message when it failed (htmx: the
    job's block alone)."""
    if is_htmx(request):
        return job_fragment(request, service, job)
    try:
        form = form_from_spec(parse_spec(json.loads(job.spec_json)))
    except (ValueError, InputError):
        form = dict(DEFAULT_FORM)
    return render(request, {**base_context(service, form), **job_context(request, service, job)})


def job_fragment(request: Request, service: ExperimentService, job: JobRow) -> Response:
    return render(request, {**base_context(service, dict(DEFAULT_FORM)), **job_context(request, service, job)}, blocks=["job"])
