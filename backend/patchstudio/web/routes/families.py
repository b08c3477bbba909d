"""Built-in prompt families: ``GET /api/families?model=`` lists each family with its note and
whether that model's tokenizer can make it (and why not). The tokenizer check runs once per
tokenizer (``engine.families``); generating pairs is the form's and the CLI's, not a GET's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from patchstudio.engine.families import check_families
from patchstudio.models.prompts import FAMILIES
from patchstudio.web.deps import ServiceDep

router = APIRouter()


@router.get(
    "/api/families",
    summary="The built-in prompt families, and which of them a model's tokenizer can make",
    description="Each family's name, one-line description, note (what it tests, how its pairs are made, the corruption, "
    "the metric, what it cannot separate, the paper) and the roles a per-position sweep gets. With `model`, whether "
    "that model offers it: a family is offered only where its words are single tokens in the places it puts them; "
    "otherwise `refusal` names what the tokenizer lacks, and `words` gives kept/candidates per word list.",
    tags=["prompt sets"],
    responses={404: {"description": "No such model on this server, or it is not loaded."}},
)
def families(service: ServiceDep, model: Annotated[str | None, Query(max_length=200)] = None) -> Any:
    checks = None
    if model is not None:
        loaded = service.models.get(model)
        if loaded is None or loaded.model is None:
            raise HTTPException(404, f"no loaded model {model[:80]!r} on this server")
        checks = check_families(loaded.model)
    out = []
    for name, family in FAMILIES.items():
        row: dict[str, Any] = {"name": name, "description": family.description, "note": family.note,
                               "roles": family.roles}
        if checks is not None:
            check = checks[name]
            row.update(offered=check.offered, refusal=check.refusal,
                       words={key: {"kept": kept, "candidates": total} for key, (kept, total) in check.counts.items()})
        out.append(row)
    return {"model": model, "families": out}
