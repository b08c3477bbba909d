"""Runs: ``POST /api/runs``, the recent runs, and each stored run as a page (``/runs/{id}``) with its
``.json`` and ``.csv`` twins and the selected cell's prompts.

A run's page and its ``.json`` twin come from one data function (``RunData``: the stored run and
its one ``analysis.Reading``) with two renderers, as Datasette's JsonDataView does, so they agree by
construction. GET routes only read; ``POST /api/runs`` follows the service's submit rule: the
stored run, computed in the request when small, else 202 with the queued job.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from patchstudio import analysis
from patchstudio.analysis import Reading
from patchstudio.specs import defaults_doc
from patchstudio.jobs.store import JobRow
from patchstudio.store import StoredRun
from patchstudio.web import explore_page as explore
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ClientDep, PageDep, RunId, ServiceDep, WatchersDep, find_job, find_run, stored_run
from patchstudio.web.forms import DEFAULT_FORM
from patchstudio.web.methods import summary
from patchstudio.web.payloads import REFUSALS, SPEC_EXAMPLE, accepted
from patchstudio.web.templating import is_htmx, templates

router = APIRouter()


@dataclass(frozen=True)
class RunData:
    """A stored run and its reading (made once): what its page, its .json twin and POST /api/runs show."""

    stored: StoredRun
    reading: Reading

    @classmethod
    def of(cls, stored: StoredRun) -> RunData:
        return cls(stored, analysis.read(stored.result))

    def json(self) -> dict[str, Any]:
        """The result JSON plus the record's provenance and the reading's evidence and views."""
        stored = self.stored
        return {
            **stored.result.model_dump(mode="json"),
            "evidence": self.reading.evidence,
            "views": self.reading.all_views(),
            "model_fingerprint": stored.model_fingerprint,
            "created_at": stored.created_at.isoformat(),
            "links": {"page": urls.run_page(stored.id), "json": urls.run_json(stored.id), "csv": urls.run_csv(stored.id)},
        }


def get_run_data(service: ServiceDep, run_id: RunId) -> RunData:
    return RunData.of(stored_run(service, run_id))


RunDataDep = Annotated[RunData, Depends(get_run_data)]


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
def create_run(service: ServiceDep, client: ClientDep, spec: dict[str, Any] = Body(..., examples=[SPEC_EXAMPLE])) -> Any:
    # bad input is a 422 and a client over its job cap a 429 (app.py)
    outcome = service.submit(spec, client)
    return accepted(outcome) if isinstance(outcome, JobRow) else RunData.of(outcome).json()


@router.get("/api/runs", summary="Recent runs", tags=["runs"])
def recent_runs(service: ServiceDep, limit: int = Query(20, ge=1, le=200)) -> Any:
    """Newest first, each with what it asked for (`component`, `direction`, `metric`) and, for a
    companion run (computed for another run's Figure 1 or triangulation), `companion_of`."""
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


@router.get("/runs/{run_id}.json", summary="A stored result", tags=["runs"], responses={404: {"description": "No such run."}})
def run_json(data: RunDataDep) -> Any:
    return data.json()


def values_csv(stored: StoredRun, reading: Reading | None = None) -> str:
    """Long in the cells, wide in the prompts: one row per cell, a column per axis (for positions also
    the ``token`` where every prompt has the same one there, its ``role`` and ``n``, how many prompts
    the cell averages; results stored by index: prompt 1's token and, for IOI-shaped prompts, its
    role), then ``value`` (the mean over the prompts), its
    ``change`` from "no effect", its ``share`` of the clean-corrupted gap (blank where the gap is 0;
    direct logit attribution's is of the read run's logit difference, which its parts sum to: the
    .json twin's ``views.share_of`` names the denominator),
    ``std``, ``ci_low``, ``ci_high`` (a 95% bootstrap interval of the mean) and ``prompt_1`` ..
    ``prompt_n`` (each prompt's own value). Results stored before the spread existed leave those
    columns empty."""
    result = stored.result
    reading = reading or analysis.read(result)
    out = io.StringIO()
    writer = csv.writer(out)
    n_prompts = len(result.per_prompt) if result.per_prompt is not None else len(result.prompts)
    spread = ("std", "ci_low", "ci_high")
    by_pos = "pos" in result.axes
    roles = analysis.position_roles(result) if by_pos else []
    tokens = analysis.position_tokens(result) if by_pos else []
    header = list(result.axes) + (["token", "role", "n"] if by_pos else []) + ["value", "change", "share", *spread]
    writer.writerow(header + [f"prompt_{i + 1}" for i in range(n_prompts)])
    change = reading.view("change").values
    share_view = reading.view("share")
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
        row: list[Any] = [result.labels[a][i] if a == "edge" else i for a, i in zip(result.axes, index)]  # edges by name
        if by_pos:
            pos = index[result.axes.index("pos")]
            row += [tokens[pos], roles[pos], result.roles[pos].n if result.roles is not None else n_prompts]
        row += [at(result.values, index), at(change, index), at(share, index), *(at(getattr(result, name), index) for name in spread)]
        writer.writerow(row + [at(p, index) for p in per_prompt])
    return out.getvalue()


@router.get("/runs/{run_id}.csv", summary="A stored result's values as CSV", tags=["runs"], responses={404: {"description": "No such run."}})
def run_csv(data: RunDataDep) -> Response:
    return Response(
        values_csv(data.stored, data.reading),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="patchstudio-{data.stored.id}.csv"'},
    )


@router.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
def run_page(request: Request, service: ServiceDep, watchers: WatchersDep, page_token: PageDep, client: ClientDep,
             run_id: RunId, _pos: int | None = None, _view: str | None = None,
             _layer: int | None = None, _head: int | None = None, _scale: str | None = None) -> Response:
    """A stored run's page; a run still computing shows its job; anything else is a 404 page."""
    stored = find_run(service, run_id)
    if stored is None:
        job = find_job(service, run_id)
        if job is not None:  # still computing (or failed): its job, from the database
            if page_token:
                watchers.seen(job.id, page_token)
            return explore.job_page(request, service, job)
        context = explore.base_context(service, dict(DEFAULT_FORM))
        context.update(explore.error_context(f"no stored run with id {run_id[:64]!r}: the link may be mistyped", "spec"))
        return explore.render(request, context, status=404)
    context = explore.base_context(service, explore.form_for(service, stored))
    data = RunData.of(stored)
    context.update(explore.result_context(request, service, data.stored, data.reading, _pos, _view,
                                          {"layer": _layer, "head": _head, "pos": _pos}, _scale))
    if is_htmx(request):  # the status too: an error shown over the last result is cleared by the next one
        return explore.render(request, context, blocks=["results", "status"])
    context["recent"] = explore.recent(service)
    context["your_runs"] = explore.your_runs(service, client)
    return explore.render(request, context)


@router.get("/runs/{run_id}/prompts", response_class=HTMLResponse, include_in_schema=False)
def cell_prompts(request: Request, data: RunDataDep, layer: int | None = None, head: int | None = None,
                 pos: int | None = None, _view: str | None = None) -> Response:
    """The clicked cell's value on each prompt (a fragment of the run page), in the page's view."""
    explore.check_cell(data.stored.result, layer, pos, head)
    explore.check_view(_view)
    view = data.reading.view(_view).name
    context = explore.cell_prompts_context(data.stored, data.reading, view, {"layer": layer, "pos": pos, "head": head})
    return templates.TemplateResponse(request, "explore.html", context, block_name="cell_prompts")
