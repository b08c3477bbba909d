"""Prompt sets: ``POST /api/prompt-sets`` uploads a CSV or JSONL file of pairs (multipart ``file``, or a
JSON body with ``text`` and ``format``, or ``pairs``), checked row by row on a model and stored once
by content id; ``GET /api/prompt-sets/{id}`` (and its ``.json`` twin) reads one back. A spec names a
set by its id in ``prompt_set`` (see ``prompt_sets.py``). GET only reads."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2_fragments import render_block
from starlette.concurrency import run_in_threadpool

from patchstudio.errors import InputError
from patchstudio.prompt_sets import MAX_PAIRS, PREVIEW_ROWS, SET_ID, PromptSet, PromptSetError, format_of
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ServiceDep
from patchstudio.web.explore_page import family_offer
from patchstudio.web.forms import pairs_text
from patchstudio.web.payloads import REFUSALS
from patchstudio.web.templating import templates

router = APIRouter()

SetId = Annotated[str, Path(description="A prompt set's id: 16 hex digits (the sha256 of its rows).", max_length=64)]


def describe_set(prompt_set: PromptSet, tokens: list[dict] | None = None, rows: int | None = None) -> dict[str, Any]:
    """A set's id, size and its first ``rows`` rows (with their tokens when checked on a model)."""
    shown = prompt_set.rows()[: rows if rows is not None else len(prompt_set.pairs)]
    if tokens is not None:
        shown = [{**row, "tokens": tokens[i]} for i, row in enumerate(shown)]
    return {"id": prompt_set.id, "n_pairs": len(prompt_set.pairs), "rows": shown,
            "links": {"json": urls.prompt_set_json(prompt_set.id)}}


async def upload(request: Request) -> tuple[str | bytes, str, str | None]:
    """(the file's text, its format, the model to check it on) from a multipart or JSON request."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        file, model = form.get("file"), form.get("model")
        if file is None or isinstance(file, str):
            raise InputError("attach the prompt set as the form field 'file' (a .csv or .jsonl file)", field="file")
        return await file.read(), format_of(file.filename, file.content_type), model if isinstance(model, str) and model else None
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise InputError("the body is neither a multipart upload nor JSON", field="body") from None
    if not isinstance(body, dict):
        raise InputError("the JSON body must be an object with 'pairs', or 'text' and 'format'", field="body")
    model = body.get("model") if isinstance(body.get("model"), str) else None
    if isinstance(body.get("pairs"), list):  # one pair per line, so a bad pair's line is its number in the list
        return "\n".join(json.dumps(p) for p in body["pairs"]), "jsonl", model
    text, fmt = body.get("text"), body.get("format", "csv")
    if not isinstance(text, str) or fmt not in ("csv", "jsonl"):
        raise InputError("give 'pairs' (a list of objects), or 'text' with 'format' 'csv' or 'jsonl'", field="body")
    return text, fmt, model


@router.post(
    "/api/prompt-sets",
    summary="Upload a prompt set (CSV or JSONL of pairs), checked row by row and stored by its content id",
    description=f"Columns (or keys): clean, corrupted, answer, wrong; any other column is a role column kept with its row. "
    f"At most {MAX_PAIRS:,} pairs. Every row is checked (also on the model, as a spec's pairs are); a set with a bad row "
    "is refused whole with `info.rows` listing each bad row's line and reason, and nothing is stored. The answer is 201 "
    f"with the id, the number of pairs and the first {PREVIEW_ROWS} rows with their tokens. A spec names the set with "
    "`\"prompt_set\": <id>` (its pairs are filled in as the prompts).",
    tags=["prompt sets"],
    status_code=201,
    responses=REFUSALS,
    openapi_extra={"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "A .csv or .jsonl file of pairs."},
            "model": {"type": "string", "description": "The model to check the rows on (default: the first offered)."}}}},
        "application/json": {"schema": {"type": "object", "properties": {
            "pairs": {"type": "array", "items": {"type": "object"}, "description": "The pairs (and role keys) as objects."},
            "text": {"type": "string", "description": "The file's text, instead of pairs."},
            "format": {"type": "string", "enum": ["csv", "jsonl"], "default": "csv"},
            "model": {"type": "string"}}}}}}},
)
async def create_prompt_set(request: Request, service: ServiceDep) -> Any:
    data, fmt, model = await upload(request)
    # tokenizing up to 10,000 rows: off the event loop
    prompt_set, tokens, created = await run_in_threadpool(service.add_prompt_set, data, fmt, model)
    return JSONResponse({**describe_set(prompt_set, tokens, PREVIEW_ROWS), "created": created}, status_code=201)


def stored_set(service: ServiceDep, set_id: str) -> PromptSet:
    found = service.store.get_prompt_set(set_id) if SET_ID.fullmatch(set_id) else None
    if found is None:
        raise HTTPException(404, f"no prompt set {set_id}" if SET_ID.fullmatch(set_id) else "not a prompt set id")
    return found


@router.get("/api/prompt-sets/{set_id}.json", summary="A stored prompt set", tags=["prompt sets"],
            responses={404: {"description": "No such prompt set."}})
def prompt_set_json(service: ServiceDep, set_id: SetId) -> Any:
    return describe_set(stored_set(service, set_id))


@router.get("/api/prompt-sets/{set_id}", summary="A stored prompt set", tags=["prompt sets"],
            responses={404: {"description": "No such prompt set."}})
def prompt_set(service: ServiceDep, set_id: SetId) -> Any:
    return describe_set(stored_set(service, set_id))


@router.post("/prompt-sets/upload", response_class=HTMLResponse, include_in_schema=False)
async def upload_from_page(request: Request, service: ServiceDep) -> Response:
    """The explore form's upload control (htmx): the set stored and its pairs filled into the form's
    pairs box (family 'my own pairs'), or the bad rows listed and nothing stored."""
    form = await request.form()
    file, model = form.get("prompt_set_file"), form.get("model")
    context: dict[str, Any] = {"request": request, "form": {"prompt_set": ""}}
    if file is None or isinstance(file, str):
        context["upload"] = {"error": "choose a .csv or .jsonl file of prompt pairs"}
        return templates.TemplateResponse(request, "_prompt_set.html", context, status_code=422)
    try:
        prompt_set, tokens, _ = await run_in_threadpool(
            service.add_prompt_set, await file.read(), format_of(file.filename, file.content_type),
            model if isinstance(model, str) and model else None)
    except PromptSetError as exc:
        context["upload"] = {"error": exc.summary, "rows": exc.rows}
        return templates.TemplateResponse(request, "_prompt_set.html", context, status_code=422)
    shown = describe_set(prompt_set, tokens, PREVIEW_ROWS)
    upload = {"n_pairs": shown["n_pairs"],
              "rows": [{**row, "line": line} for row, line in zip(shown["rows"], prompt_set.lines)]}
    filled = {"prompt_set": prompt_set.id, "family": "custom", "pairs_text": pairs_text(prompt_set.pairs)}
    page = {"form": filled, "urls": urls,
            **family_offer(service, model if isinstance(model, str) and model else service.settings.models[0])}
    html = (templates.get_template("_prompt_set.html").render({**page, "upload": upload})
            + render_block(templates.env, "explore.html", "family_field", **page)
            + render_block(templates.env, "explore.html", "derived_pairs", **page))
    # "choose" bubbles from the file input to the explore form, which then runs the filled-in set
    return HTMLResponse(html, status_code=201, headers={"HX-Trigger-After-Settle": "choose"})
