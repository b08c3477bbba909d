"""A run's attention patterns: /runs/{id}/attention?layer=L&head=H (and .json).

Reads never compute: the GET page shows the stored patterns of that layer, or a button whose POST
computes them (two forward passes per prompt, the first few prompts) and stores them, so the link
shows the same patterns to everyone afterwards."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from patchstudio.engine.attention import MAX_PROMPTS, layer_patterns
from patchstudio.errors import InputError
from patchstudio.web import figures
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ServiceDep
from patchstudio.web.methods import describe
from patchstudio.web.routes.pages import templates

router = APIRouter()


def _checked(service, run_id: str, layer: int, head: int | None):
    stored = service.store.get(run_id)
    if stored is None:
        raise HTTPException(404, f"no stored run with id {run_id!r}")
    model = stored.result.model
    if not 0 <= layer < model.n_layers:
        raise InputError(f"layer {layer} does not exist: the model has {model.n_layers} layers (0 to {model.n_layers - 1})", field="layer")
    if head is not None and not 0 <= head < model.n_heads:
        raise InputError(f"head {head} does not exist: the model has {model.n_heads} heads (0 to {model.n_heads - 1})", field="head")
    return stored


@router.get("/runs/{run_id}/attention.json", summary="A run's stored attention patterns at one layer", tags=["runs"])
def attention_json(run_id: str, service: ServiceDep, layer: int = 0) -> Any:
    _checked(service, run_id, layer, None)
    data = service.store.get_patterns(run_id, layer)
    if data is None:
        return JSONResponse({"detail": f"layer {layer}'s patterns are not computed yet: POST {urls.attention(run_id, layer)}"},
                            status_code=404)
    return {"run_id": run_id, "layer": layer, "axes": ["prompt", "head", "dest", "src"], **data}


@router.get("/runs/{run_id}/attention", include_in_schema=False)
def attention_page(request: Request, run_id: str, service: ServiceDep, layer: int = 0, head: int | None = None,
                   _prompt: int = 0) -> Response:
    stored = _checked(service, run_id, layer, head)
    result = stored.result
    data = service.store.get_patterns(run_id, layer)
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
async def compute_attention(run_id: str, service: ServiceDep, layer: int = 0, head: int | None = None) -> Response:
    stored = _checked(service, run_id, layer, head)
    if service.store.get_patterns(run_id, layer) is None:
        model = service.model(stored.result.spec.model).model
        data = await run_in_threadpool(layer_patterns, model, stored.result.spec, layer)
        service.store.put_patterns(run_id, layer, data)
    return RedirectResponse(urls.attention(run_id, layer, head), status_code=303)
