"""Two runs side by side on one scale, and their difference: /compare?a=ID&b=ID (and .json)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from patchstudio import analysis
from patchstudio.web import figures
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ServiceDep
from patchstudio.web.methods import describe
from patchstudio.web.routes.pages import templates

router = APIRouter()


def _comparison(service, a: str, b: str, view: str | None) -> tuple[dict[str, Any] | None, str | None, int]:
    """(data, error message, status) for runs ``a`` and ``b``."""
    runs = {}
    for key, run_id in (("a", a), ("b", b)):
        stored = service.store.get(run_id.strip().rsplit("/", 1)[-1].split("?")[0]) if run_id else None
        if stored is None:
            return None, f"run {key.upper()}: no stored run with id {run_id!r}", 404
        runs[key] = stored.result
    try:
        cmp = analysis.compare(runs["a"], runs["b"], view if view in analysis.VIEWS else None)
    except ValueError as exc:
        return None, str(exc), 422
    return {"runs": runs, **cmp}, None, 200


@router.get("/compare.json", summary="Two stored runs compared cell by cell", tags=["runs"])
def compare_json(service: ServiceDep, a: str = "", b: str = "", _view: str | None = None) -> Any:
    data, error, status = _comparison(service, a, b, _view)
    if data is None:
        return JSONResponse({"detail": error}, status_code=status)
    runs = data.pop("runs")
    return {**data, "a_id": runs["a"].id, "b_id": runs["b"].id,
            "links": {"a": urls.run_page(runs["a"].id), "b": urls.run_page(runs["b"].id)}}


@router.get("/compare", include_in_schema=False)
def compare_page(request: Request, service: ServiceDep, a: str = "", b: str = "", _view: str | None = None) -> Response:
    data, error, status = _comparison(service, a, b, _view)
    context: dict[str, Any] = {"error": error, "a": a, "b": b}
    if data is not None:
        ra, rb = data["runs"]["a"], data["runs"]["b"]
        lo, hi = data["range"]
        diffs = [v for _, v in analysis.flat_cells(ra, data["diff"])]
        reach = max([abs(v) for v in diffs] + [1e-12])
        context.update(
            cmp=data, ra=ra, rb=rb, a=ra.id, b=rb.id, describe_a=describe(ra), describe_b=describe(rb),
            views=[n for n in analysis.VIEWS if n == data["view"] or analysis.view(ra, n).name == n],
            fig_a=figures.grid(ra, data["a"], "A", data["title"], lo, hi, data["no_effect"]),
            fig_b=figures.grid(rb, data["b"], "B", data["title"], lo, hi, data["no_effect"]),
            fig_diff=figures.grid(ra, data["diff"], "A − B", f"difference, {data['view']} (A − B); 0 = same", -reach, reach, 0.0),
        )
    return templates.TemplateResponse(request, "compare.html", context, status_code=status)
