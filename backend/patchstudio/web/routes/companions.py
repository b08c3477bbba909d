"""A run beside its companion runs: Figure 1 with the triangulation (``/runs/{id}/figure1``) and
attribution's agreement with exact patching (``/runs/{id}/agreement``).

GET shows what is stored (and a button for what is missing); POST computes the missing companions
through the service's submit rule: in the request when small, else as background jobs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from patchstudio import analysis
from patchstudio.errors import InputError
from patchstudio.results import PatchResult
from patchstudio.service import ExperimentService
from patchstudio.web import companions as comp
from patchstudio.web import figures
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ClientDep, ServiceDep, StoredRunDep
from patchstudio.web.explore_page import check_figure1
from patchstudio.web.methods import WEB_METHODS
from patchstudio.web.templating import templates

router = APIRouter(include_in_schema=False)


def _figure1(request: Request, service: ExperimentService, result: PatchResult, layer: int | None, head: int | None,
             pos: int | None, companions: comp.Companions | None = None) -> Response:
    check_figure1(result, layer, pos, head)
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
def figure1(request: Request, service: ServiceDep, stored: StoredRunDep, layer: int | None = None, head: int | None = None,
            pos: int | None = None) -> Response:
    """The seed's Figure 1 for one component (clean, corrupted, patched and ablated side by side) and the
    component under every method (triangulation), from stored runs; a button computes the missing ones."""
    return _figure1(request, service, stored.result, layer, head, pos)


@router.post("/runs/{run_id}/figure1", response_class=HTMLResponse)
def compute_figure1(request: Request, service: ServiceDep, client: ClientDep, stored: StoredRunDep,
                    layer: int | None = None, head: int | None = None, pos: int | None = None) -> Response:
    """Compute Figure 1's missing companion runs: now when small, else as background jobs."""
    result = stored.result
    check_figure1(result, layer, pos, head)
    companions = comp.compute(service, result, analysis.triangulation_specs(result.spec, layer, head), client)
    return _figure1(request, service, result, layer, head, pos, companions)


def _attribution(result: PatchResult) -> PatchResult:
    if result.spec.method != "attribution_patching":
        raise InputError(f"this run's method is {result.spec.method}: agreement with exact patching applies to "
                         "attribution patching results only", field="method")
    return result


def _agreement(request: Request, service: ExperimentService, result: PatchResult) -> Response:
    context = WEB_METHODS["attribution_patching"].context(service, analysis.read(result))
    return templates.TemplateResponse(request, "methods/attribution_patching.html", {"result": result, **context})


@router.get("/runs/{run_id}/agreement", response_class=HTMLResponse)
def agreement(request: Request, service: ServiceDep, stored: StoredRunDep) -> Response:
    return _agreement(request, service, _attribution(stored.result))


@router.post("/runs/{run_id}/agreement", response_class=HTMLResponse)
def compute_agreement(request: Request, service: ServiceDep, client: ClientDep, stored: StoredRunDep) -> Response:
    result = _attribution(stored.result)
    comp.compute(service, result, {"exact": analysis.exact_patching_spec(result.spec)}, client)
    return _agreement(request, service, result)
