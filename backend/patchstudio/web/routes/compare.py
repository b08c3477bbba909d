"""Two runs side by side on one scale, and their difference: /compare?a=ID&b=ID (and .json).

The page and its ``.json`` twin come from one data function (``comparison``): each run is read once
and compared once; the page adds its figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from patchstudio import analysis
from patchstudio.analysis import Reading
from patchstudio.service import ExperimentService
from patchstudio.web import figures
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ServiceDep, find_run
from patchstudio.web.methods import describe
from patchstudio.web.templating import templates

router = APIRouter()


@dataclass
class Comparison:
    """Runs ``a`` and ``b`` compared (``data``: what the .json twin gives), or why not (``error``, ``status``)."""

    data: dict[str, Any] = field(default_factory=dict)
    readings: dict[str, Reading] = field(default_factory=dict)
    error: str | None = None
    status: int = 200


def comparison(service: ExperimentService, a: str, b: str, view: str | None) -> Comparison:
    """Runs ``a`` and ``b`` (ids, or links to their pages) compared cell by cell in ``view``."""
    readings = {}
    for key, run_id in (("a", a), ("b", b)):
        stored = find_run(service, run_id.strip().rsplit("/", 1)[-1].split("?")[0]) if run_id else None
        if stored is None:
            return Comparison(error=f"run {key.upper()}: no stored run with id {run_id!r}", status=404)
        readings[key] = analysis.read(stored.result)
    try:
        cmp = analysis.compare(readings["a"], readings["b"], view if view in analysis.VIEWS else None)
    except ValueError as exc:
        return Comparison(error=str(exc), status=422)
    ra, rb = readings["a"].result, readings["b"].result
    data = {**cmp, "a_id": ra.id, "b_id": rb.id, "links": {"a": urls.run_page(ra.id), "b": urls.run_page(rb.id)}}
    return Comparison(data, readings)


@router.get("/compare.json", summary="Two stored runs compared cell by cell", tags=["runs"])
def compare_json(service: ServiceDep, a: str = "", b: str = "", _view: str | None = None) -> Any:
    found = comparison(service, a, b, _view)
    if found.error is not None:
        return JSONResponse({"detail": found.error}, status_code=found.status)
    return found.data


@router.get("/compare", include_in_schema=False)
def compare_page(request: Request, service: ServiceDep, a: str = "", b: str = "", _view: str | None = None) -> Response:
    found = comparison(service, a, b, _view)
    context: dict[str, Any] = {"error": found.error, "a": a, "b": b}
    if found.error is None:
        data, ra, rb = found.data, found.readings["a"], found.readings["b"]
        lo, hi = data["range"]
        diffs = [v for _, v in analysis.flat_cells(ra.result, data["diff"])]
        reach = max([abs(v) for v in diffs] + [1e-12])
        context.update(
            cmp=data, ra=ra.result, rb=rb.result, a=ra.result.id, b=rb.result.id,
            describe_a=describe(ra.result), describe_b=describe(rb.result),
            views=[n for n in analysis.VIEWS if n == data["view"] or ra.views[n].name == n],
            # short colour-bar titles (the caption gives the whole one): long ones outgrew the heatmaps
            fig_a=figures.grid(ra, data["a"], "A", ra.view_label(data["view"]), lo, hi, data["no_effect"]),
            fig_b=figures.grid(rb, data["b"], "B", rb.view_label(data["view"]), lo, hi, data["no_effect"]),
            fig_diff=figures.grid(ra, data["diff"], "A − B", "A − B; 0 = same", -reach, reach, 0.0, counts=(
                f"A mean over {figures.n_words(figures.prompt_count(ra.result))}, "
                f"B over {figures.n_words(figures.prompt_count(rb.result))}")),
        )
    return templates.TemplateResponse(request, "compare.html", context, status_code=found.status)
