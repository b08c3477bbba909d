"""A run's attention patterns: /runs/{id}/attention?layer=L&head=H (and .json).

Reads never compute: the GET page shows the stored patterns of that layer, or a button whose POST
computes them through the service (two forward passes per prompt, the first few prompts) and stores
them, so the link shows the same patterns to everyone afterwards. The page and its ``.json`` twin
come from one data function."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from patchstudio.engine.attention import MAX_PROMPTS
from patchstudio.errors import InputError
from patchstudio.service import ExperimentService
from patchstudio.store import StoredRun
from patchstudio.web import figures
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ServiceDep, StoredRunDep
from patchstudio.web.methods import describe
from patchstudio.web.templating import templates

router = APIRouter()


def _check(stored: StoredRun, layer: int, head: int | None) -> None:
    model = stored.result.model
    if not 0 <= layer < model.n_layers:
        raise InputError(f"layer {layer} does not exist: the model has {model.n_layers} layers (0 to {model.n_layers - 1})", field="layer")
    if head is not None and not 0 <= head < model.n_heads:
        raise InputError(f"head {head} does not exist: the model has {model.n_heads} heads (0 to {model.n_heads - 1})", field="head")


def attention_data(service: ExperimentService, stored: StoredRun, layer: int, head: int | None = None) -> dict[str, Any] | None:
    """The stored patterns of one layer of a run, as the .json twin gives them (None: not computed yet)."""
    _check(stored, layer, head)
    data = service.patterns(stored, layer)
    if data is None:
        return None
    return {"run_id": stored.id, "layer": layer, "axes": ["prompt", "head", "dest", "src"], **data}


@router.get("/runs/{run_id}/attention.json", summary="A run's stored attention patterns at one layer", tags=["runs"])
def attention_json(service: ServiceDep, stored: StoredRunDep, layer: int = 0) -> Any:
    data = attention_data(service, stored, layer)
    if data is None:
        return JSONResponse({"detail": f"layer {layer}'s patterns are not computed yet: POST {urls.attention(stored.id, layer)}"},
                            status_code=404)
    return data


@router.get("/runs/{run_id}/attention", include_in_schema=False)
def attention_page(request: Request, service: ServiceDep, stored: StoredRunDep, layer: int = 0, head: int | None = None,
                   _prompt: int = 0) -> Response:
    data = attention_data(service, stored, layer, head)
    result = stored.result
    context: dict[str, Any] = {"stored": stored, "result": result, "layer": layer, "head": head, "data": data,
                               "claim": describe(result), "max_prompts": MAX_PROMPTS}
    if data is not None:
        prompt = _prompt if 0 <= _prompt < len(data["clean"]) else 0
        context["prompt"] = prompt
        context["n_prompts"] = len(data["clean"])
        if head is not None:
            for which in ("clean", "corrupted"):
                context[f"fig_{which}"] = figures.attention_heatmap(
                    data["tokens"][which][prompt], data[which][prompt][head], f"L{layer}H{head} on the {which} prompt {prompt + 1}")
        context["fig_layer"] = figures.attention_layer(data["tokens"]["clean"][prompt], data["clean"][prompt], layer)
    return templates.TemplateResponse(request, "attention.html", context)


@router.post("/runs/{run_id}/attention", include_in_schema=False)
async def compute_attention(service: ServiceDep, stored: StoredRunDep, layer: int = 0, head: int | None = None) -> Response:
    _check(stored, layer, head)
    await run_in_threadpool(service.compute_patterns, stored, layer)
    return RedirectResponse(urls.attention(stored.id, layer, head), status_code=303)
