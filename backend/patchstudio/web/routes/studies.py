"""Studies: an ordered list of runs with a title and notes, shared at ``/studies/{id}`` with its
``.json`` twin and its ``.ipynb`` notebook; the list (``/studies`` and ``.json``); the editor
(``/studies/new``, ``/studies/{id}/edit``) and the two ways to save (the editor's ``POST /studies``,
the API's ``POST /api/studies``). ``/studies/new`` is declared before ``/studies/{id}``, and each
twin before the page, so the page's path parameter never swallows them.

A study's page and its ``.json`` twin come from one data function (``StudyData``), as a run's do.
GETs only read: the editor is a page, and saving is a POST. Saving never changes a study: an edit
is a new study naming the old one as its parent (``patchstudio.studies``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Form, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from patchstudio import studies
from patchstudio.errors import InputError
from patchstudio.service import ExperimentService
from patchstudio.store import RunSummary, StoredRun
from patchstudio.studies import StoredStudy
from patchstudio.web import explore_page as explore
from patchstudio.web import figures
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ServiceDep, find_run
from patchstudio.web.methods import describe
from patchstudio.web.notes import render_notes
from patchstudio.web.payloads import REFUSALS
from patchstudio.web.routes.runs import RunData
from patchstudio.web.study_notebook import builtin, notebook_json
from patchstudio.web.templating import templates

router = APIRouter()

StudyId = Annotated[str, Path(description="A study's id: 16 hex digits (its content's hash).", max_length=64)]

STUDY_EXAMPLE = {"title": "IOI: name movers in the default model", "notes": "Patching heads, then **ablating** them.",
                 "runs": ["0123456789abcdef"], "parent": None}


def get_study(service: ServiceDep, study_id: StudyId) -> StoredStudy:
    """The study the path names, or 404."""
    found = studies.get(service.store, study_id)
    if found is None:
        raise HTTPException(404, f"no study with id {study_id[:64]!r}")
    return found


StudyDep = Annotated[StoredStudy, Depends(get_study)]


def base_url(request: Request, service: ExperimentService) -> str:
    """Where links to send a colleague start: the configured public URL when there is one."""
    return service.settings.public_url or str(request.base_url).rstrip("/")


# --- the list --------------------------------------------------------------------------------------------


def study_list(service: ExperimentService) -> dict[str, Any]:
    """The data of ``/studies`` and ``/studies.json``: the newest studies, every version."""
    return {"studies": [{"id": s.id, "title": s.content.title, "runs": len(s.content.runs), "parent": s.content.parent,
                         "created_at": s.created_at.isoformat(), "links": {"page": urls.study(s.id), "json": urls.study_json(s.id)}}
                        for s in studies.recent(service.store)],
            "links": {"page": urls.studies(), "json": urls.studies_json(), "new": urls.study_new()}}


@router.get("/studies.json", summary="The newest studies", tags=["studies"])
def studies_json(service: ServiceDep) -> Any:
    return study_list(service)


@router.get("/studies", response_class=HTMLResponse, include_in_schema=False)
def studies_page(request: Request, service: ServiceDep) -> Response:
    return templates.TemplateResponse(request, "studies.html", study_list(service))


# --- the editor and saving -------------------------------------------------------------------------------


def _line(run_id: str, stored: StoredRun | None) -> dict[str, Any]:
    """A run as the editor lists it (as explore's recent runs do), or the id flagged as not stored."""
    if stored is None:
        return {"id": run_id, "missing": True}
    result = stored.result
    summary = RunSummary(id=stored.id, method=result.spec.method, model_name=result.model.name,
                         created_at=stored.created_at, spec_json=result.spec.canonical_json())
    return explore._run_line(summary)  # the same line as explore's recent runs


def editor(request: Request, service: ExperimentService, form: dict[str, Any], *, error: InputError | None = None) -> Response:
    """The editor with ``form`` (title, notes, runs, parent, more) filled in; an error beside its field."""
    rows = [_line(run_id, find_run(service, run_id)) for run_id in form["runs"]]
    field = (error.field or "") if error else ""
    context = {"form": form, "rows": rows, "recent": explore.recent(service),
               "error": str(error) if error else None, "error_field": "runs" if field.startswith("runs") else field,
               "limits": {"title": studies.TITLE_MAX_CHARS, "notes": studies.NOTES_MAX_CHARS, "runs": studies.RUNS_MAX},
               "parent": studies.get(service.store, form["parent"]) if form.get("parent") else None}
    return templates.TemplateResponse(request, "study_edit.html", context, status_code=422 if error else 200)


@router.get("/studies/new", response_class=HTMLResponse, include_in_schema=False)
def new_study(request: Request, service: ServiceDep, runs: list[str] = Query([], max_length=studies.RUNS_MAX)) -> Response:
    """The editor, starting from ``runs`` (a run page's "Add to study" sends its own)."""
    return editor(request, service, {"title": "", "notes": "", "runs": [r[:64] for r in runs], "parent": "", "more": ""})


@router.get("/studies/{study_id}/edit", response_class=HTMLResponse, include_in_schema=False)
def edit_study(request: Request, service: ServiceDep, study: StudyDep) -> Response:
    """The editor for a new version of ``study`` (saving makes a new study; this one stays)."""
    content = study.content
    return editor(request, service, {"title": content.title, "notes": content.notes, "runs": list(content.runs),
                                     "parent": study.id, "more": ""})


RUN_REF = re.compile(r"[0-9a-f]{16}")


def run_refs(text: str) -> list[str]:
    """Run ids from what a person pastes: ids or links to run pages, separated by spaces, commas or lines."""
    out = []
    for word in re.split(r"[\s,]+", text.strip()):
        if word:
            path = word.split("?")[0].split("#")[0].rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
            out.append(path if RUN_REF.fullmatch(path) else word[:64])
    return out


@router.post("/studies", response_class=HTMLResponse, include_in_schema=False)
def save_study(request: Request, service: ServiceDep, title: str = Form(""), notes: str = Form(""),
               runs: list[str] = Form([]), more: str = Form(""), parent: str = Form("")) -> Response:
    """The editor's save: a new study (or the same one, if nothing changed), then its page."""
    form = {"title": title, "notes": notes, "runs": runs + run_refs(more), "parent": parent, "more": ""}
    try:
        content = studies.parse({"title": title, "notes": notes, "runs": form["runs"], "parent": parent or None})
        saved, _ = studies.create(service.store, content)
    except InputError as exc:
        if exc.field and exc.field.startswith("runs") and more:
            form.update(runs=runs, more=more)  # leave what was typed where it was typed
        return editor(request, service, form, error=exc)
    return RedirectResponse(urls.study(saved.id), status_code=303)


@router.post("/api/studies", summary="Save a study (a new version when `parent` names the one it edits)", tags=["studies"],
             description=f"`title` (one line, at most {studies.TITLE_MAX_CHARS} characters), `notes` (Markdown, at most "
             f"{studies.NOTES_MAX_CHARS:,} characters), `runs` (stored run ids in order, 1 to {studies.RUNS_MAX}) and `parent` "
             "(the study this edits, or null). The id hashes all four: the same content is the same study (200), a new one "
             "is 201, and an edit never changes the study it edits.",
             status_code=201, responses={200: {"description": "This study was stored already (same content, same id)."}, **REFUSALS})
def create_study(service: ServiceDep, body: Any = Body(..., examples=[STUDY_EXAMPLE])) -> Any:
    saved, wrote = studies.create(service.store, studies.parse(body))  # an InputError is a 422 naming the field
    return JSONResponse(StudyData.of(service, saved).json(), status_code=201 if wrote else 200,
                        headers={"Location": urls.study_json(saved.id)})


# --- one study -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyData:
    """A study, its runs in order (each read once; None for a run this database does not hold) and the
    versions edited from it: what its page and its .json twin show."""

    study: StoredStudy
    runs: list[tuple[str, RunData | None]]
    versions: list[StoredStudy]

    @classmethod
    def of(cls, service: ExperimentService, study: StoredStudy) -> StudyData:
        found = [(run_id, find_run(service, run_id)) for run_id in study.content.runs]
        return cls(study, [(run_id, RunData.of(s) if s else None) for run_id, s in found],
                   studies.versions(service.store, study.id))

    def json(self) -> dict[str, Any]:
        study, content = self.study, self.study.content
        return {
            "id": study.id,
            "title": content.title,
            "notes": content.notes,
            "notes_html": str(render_notes(content.notes)),
            "parent": content.parent,
            "created_at": study.created_at.isoformat(),
            "runs": [_run_json(run_id, data) for run_id, data in self.runs],
            "versions": [{"id": v.id, "title": v.content.title, "created_at": v.created_at.isoformat(),
                          "links": {"page": urls.study(v.id), "json": urls.study_json(v.id)}} for v in self.versions],
            "links": {"page": urls.study(study.id), "json": urls.study_json(study.id),
                      "notebook": urls.study_notebook(study.id), "edit": urls.study_edit(study.id),
                      "parent": urls.study(content.parent) if content.parent else None},
        }


def _run_json(run_id: str, data: RunData | None) -> dict[str, Any]:
    if data is None:
        return {"id": run_id, "stored": False, "links": {"page": urls.run_page(run_id)}}
    result = data.stored.result
    return {"id": run_id, "stored": True, "method": result.spec.method, "model": result.model.name,
            "claim": describe(result), "evidence": data.reading.evidence, "clean": result.clean,
            "corrupted": result.corrupted, "prompts": len(result.prompts),
            "links": {"page": urls.run_page(run_id), "json": urls.run_json(run_id)}}


def get_study_data(service: ServiceDep, study: StudyDep) -> StudyData:
    return StudyData.of(service, study)


StudyDataDep = Annotated[StudyData, Depends(get_study_data)]


@router.get("/studies/{study_id}.json", summary="A study: its title, notes and runs in order", tags=["studies"],
            responses={404: {"description": "No such study."}})
def study_json(data: StudyDataDep) -> Any:
    """`notes` as written (Markdown) and `notes_html` as the page shows them (rendered safely);
    `versions`: the studies edited from this one."""
    return data.json()


@router.get("/studies/{study_id}.ipynb", summary="A study as a Jupyter notebook that recomputes each run", tags=["studies"],
            responses={404: {"description": "No such study."}})
def study_notebook(request: Request, service: ServiceDep, data: StudyDataDep) -> Response:
    """Per run, a cell that recomputes it with `patchstudio.run` from its spec, asserts the same id
    and baselines, and prints it as a table."""
    stored = [d.stored for _, d in data.runs if d is not None]
    return Response(notebook_json(data.study, stored, base_url(request, service)), media_type="application/x-ipynb+json",
                    headers={"Content-Disposition": f'attachment; filename="patchstudio-study-{data.study.id}.ipynb"'})


@router.get("/studies/{study_id}", response_class=HTMLResponse, include_in_schema=False)
def study_page(request: Request, service: ServiceDep, data: StudyDataDep) -> Response:
    content = data.study.content
    runs = []
    for number, (run_id, run) in enumerate(data.runs, 1):
        line: dict[str, Any] = {"id": run_id, "number": number, "run": run}
        if run is not None:
            result = run.stored.result
            line.update(result=result, claim=describe(result), evidence=run.reading.evidence,
                        figure=figures.heatmap(run.reading), builtin=builtin(result.spec.model))
        runs.append(line)
    context = {"study": data.study, "content": content, "notes_html": render_notes(content.notes), "runs": runs,
               "versions": data.versions, "share_url": base_url(request, service) + urls.study(data.study.id)}
    return templates.TemplateResponse(request, "study.html", context)
