"""The explore page: ``GET /`` (the form with the default experiment or a worked example, shown only
if it is stored) and ``POST /explore`` (the form's experiment through the service's submit rule:
stored, computed now, or a background job; or the error beside its field)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from patchstudio import analysis, live
from patchstudio.engine.inputs import unknown_words
from patchstudio.errors import InputError
from patchstudio.service import ExperimentService
from patchstudio.jobs.store import JobRow, TooManyJobs
from patchstudio.store import StoredRun
from patchstudio.web import explore_page as explore
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ClientDep, PageDep, ServiceDep, WatchersDep, find_job, known_id
from patchstudio.web.forms import DEFAULT_FORM, FormState, check_form_limits, spec_from_form
from patchstudio.web.presets import PRESETS, offered
from patchstudio.web.templating import is_htmx
from patchstudio.web.watchers import Watchers

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def home(request: Request, service: ServiceDep, client: ClientDep, preset: str | None = None) -> Response:
    """The explore form with the default experiment, or a worked example's (``?preset=``), shown if
    it is stored (a GET never computes: else one click on Run)."""
    chosen = PRESETS.get(preset) if preset is not None else None
    if preset is not None and (chosen is None or chosen.model not in service.settings.models):
        names = ", ".join(p.name for p in offered(list(service.settings.models)))
        state = spec_from_form({}, explore.loaded_model(service, DEFAULT_FORM["model"]))
        context = {**explore.base_context(service, state.values), "recent": explore.recent(service),
                   "your_runs": explore.your_runs(service, client),
                   **explore.error_context(f"no example {preset!r} on this server; the examples are: {names}", "spec")}
        return explore.render(request, context, status=404)
    values = {**DEFAULT_FORM, **chosen.form} if chosen else {}
    state = spec_from_form(values, explore.loaded_model(service, values.get("model", DEFAULT_FORM["model"])))
    context = {**explore.base_context(service, state.values), "recent": explore.recent(service),
               "your_runs": explore.your_runs(service, client), "preset": chosen}
    stored = service.store.get(state.spec.id) if state.spec is not None else None
    if stored is not None:
        context.update(explore.result_context(request, service, stored, analysis.read(stored.result)))
    return explore.render(request, context)


def _experiment_context(request: Request, service: ExperimentService, state: FormState, client: str,
                        estimate_first: bool = False) -> dict[str, Any]:
    """Results for a form (a POST): stored, computed now, or a background job; or the error to show.
    ``estimate_first`` (a live edit): an expensive sweep's attribution estimate first (``live.py``)."""
    if state.error:
        unknown = _unknown_in_clean(service, state)  # the root cause of a failed name swap or guess
        if unknown is not None:
            return explore.error_context(str(unknown), unknown.field, unknown.detail)
        return explore.error_context(state.error, state.error_field, state.error_detail)
    try:
        outcome = live.submit(service, state.spec, client) if estimate_first else service.submit(state.spec, client)
    except InputError as exc:
        field = exc.field
        if field == "reference" and state.values.get("reference") == "own":
            field = "reference_prompts"  # the engine checks the given prompts: the box they were typed in
        elif field == "positions" and state.values.get("positions") == "chosen":
            field = "positions_at"  # the engine checks the picked roles: the box they were typed in
        return explore.error_context(str(exc), field, exc.detail)
    except TooManyJobs as exc:
        return explore.error_context(str(exc), "spec")
    if isinstance(outcome, JobRow):
        return explore.job_context(request, service, outcome)
    try:
        if isinstance(outcome, live.Estimate):
            return {**explore.result_context(request, service, outcome.run, analysis.read(outcome.run.result)),
                    **explore.estimate_context(outcome, state.values)}
        return explore.result_context(request, service, outcome, analysis.read(outcome.result))
    except InputError as exc:
        return explore.error_context(str(exc), exc.field, exc.detail)


def _remember_origin(service: ExperimentService, context: dict[str, Any], state: FormState, client: str) -> None:
    """A run made from a built-in prompt family remembers it, so its link reopens the form as it was;
    and who asked for it (a job's id is its run's), for "your runs"."""
    values = state.values
    stored, job = context.get("stored"), context.get("job")
    if stored is not None or job is not None:
        service.store.put_request(stored.id if stored is not None else job.id, client)
    if state.spec is not None:  # asked for from the form: listed as its own run, not only as a companion
        service.store.unlink_companion(state.spec.id)
    if stored is not None and values.get("source") == "family" and values.get("family") != "custom":
        service.store.put_origin(stored.id, {k: values[k] for k in explore.ORIGIN_FIELDS})


def _unknown_in_clean(service: ExperimentService, state: FormState) -> InputError | None:
    """An unknown word in the single clean prompt, named plainly ('Xavier' is not in this model's
    vocabulary), when the form failed on something derived from that prompt."""
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


def _replace(service: ExperimentService, watchers: Watchers, replaces: str, new_id: str | None, client: str,
             page: str | None) -> dict[str, Any] | None:
    """An edit replaced the job this page showed: cancel it if it is this client's own and no other
    page or client is watching it (see watchers.py); else say why it goes on."""
    if not known_id(replaces) or replaces == new_id:
        return None
    job = find_job(service, replaces)
    if job is None or not job.active or job.cancel_requested:
        return None
    if job.client != client:
        return {"id": replaces, "cancelled": False, "why": "someone else asked for it too"}
    if watchers.others(replaces, page):
        return {"id": replaces, "cancelled": False, "why": "another page is watching it"}
    service.cancel(replaces, client)
    return {"id": replaces, "cancelled": True}


def _refused_in_place(request: Request, context: dict[str, Any]) -> Response:
    """An htmx refusal: the message beside its field (out of band) and nothing swapped, so the last
    result stays on screen, dimmed (app.css), whatever the page showed."""
    response = explore.render(request, context, blocks=["oob"])
    response.headers["HX-Reswap"] = "none"
    return response


def _exact_after_estimate(request: Request, service: ExperimentService, context: dict[str, Any], state: FormState,
                          client: str) -> Response:
    """The follow-up an estimate's page posts: the exact result (or its job) in place of the estimate,
    linked to it. Only the results are swapped, never the form's fields (the user may be typing a
    newer edit; app.js drops this answer once a newer one has replaced the estimate)."""
    if context.get("error"):
        response = explore.render(request, context, blocks=["status"])
        response.headers["HX-Reswap"] = "none"
        return response
    _remember_origin(service, context, state, client)
    context.update(explore.exact_context(service, state.spec))
    context["your_runs"] = explore.your_runs(service, client)
    stored = context.get("stored")
    return explore.render(request, context, blocks=["results", "your_runs"],
                          push=urls.run_page(stored.id) if stored is not None else None)


@router.post("/explore", response_class=HTMLResponse)
async def explore_form(request: Request, service: ServiceDep, client: ClientDep, watchers: WatchersDep,
                       page: PageDep) -> Response:
    limit = service.settings.max_body_bytes  # the body limit already bounds the form; our own checks name the field
    form = {k: v for k, v in (await request.form(max_fields=200, max_part_size=limit)).items() if isinstance(v, str)}
    replaces = form.pop("replaces", "")  # the job the page showed before this edit (app.js), not part of the form
    follow_up = form.pop("exact_after", "") != ""  # the exact result an estimate's page asks for next (explore.html)
    try:  # sizes first: nothing is parsed, generated or tokenized past the server's limits
        check_form_limits(form, service.settings.max_prompt_chars, service.settings.max_prompts)
    except InputError as exc:
        form = {k: (v if len(v) <= service.settings.max_prompt_chars else "") for k, v in form.items()}
        context = {**explore.base_context(service, {**DEFAULT_FORM, **form}), **explore.error_context(str(exc), exc.field)}
        if is_htmx(request):  # like every other refusal: beside its field, the last result kept
            return _refused_in_place(request, context)
        return explore.render(request, context, status=422)
    state = spec_from_form(form, explore.loaded_model(service, form.get("model", DEFAULT_FORM["model"])))
    context = explore.base_context(service, state.values)
    # The engine runs in a worker thread so the server keeps answering while it computes.
    live_edit = is_htmx(request) and not follow_up
    context.update(await run_in_threadpool(_experiment_context, request, service, state, client, live_edit))
    stored = context.get("stored")
    if is_htmx(request) and follow_up:
        return _exact_after_estimate(request, service, context, state, client)
    if is_htmx(request):
        if context.get("error"):
            return _refused_in_place(request, context)
        # an estimate is not where the address goes: the exact result's answer pushes that
        push = urls.run_page(stored.id) if stored is not None and context.get("live") is None else None
        _remember_origin(service, context, state, client)
        new = stored.id if stored is not None else context["job"].id if context.get("job") else None
        if replaces:
            context["replaced"] = _replace(service, watchers, replaces, new, client, page)
        context["your_runs"] = explore.your_runs(service, client)
        return explore.render(request, context, blocks=["results", "oob", "your_runs"], push=push)
    _remember_origin(service, context, state, client)
    context["recent"] = explore.recent(service)
    context["your_runs"] = explore.your_runs(service, client)
    return explore.render(request, context)
