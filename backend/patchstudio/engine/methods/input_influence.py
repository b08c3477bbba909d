"""Input influence: how much each prompt token's embedding contributes to the metric.

Gradient x input (Shrikumar et al. 2016) is the first-order share of each position:
grad_e metric . e, where e is the token's input to the first block (token + position embedding).
Integrated gradients (Sundararajan et al. 2017) average that gradient along the straight path from
a baseline b to e and multiply by e - b, so the shares add up to metric(prompt) - metric(baseline)
(completeness). The baseline is the corrupted prompt: a zero input is a poor baseline for models
with LayerNorm, which is scale-invariant, so the whole change happens in a sliver of the path
next to zero that a Riemann sum misses. All ``steps`` points run as rows of one forward and one
backward pass.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from jaxtyping import Float, Int
from pydantic import Field
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.forward import run_to_final_resid
from patchstudio.engine.methods.base import Method, PairContext, PairResult
from patchstudio.specs import SpecBase


class InputInfluenceSpec(SpecBase):
    """Per-token attribution of the metric to the input embeddings of the clean prompt: gradient x
    input (``steps`` 1) or integrated gradients from the corrupted prompt (``steps`` > 1), whose
    shares add up to metric(clean) - metric(corrupted)."""

    method: Literal["input_influence"] = "input_influence"
    component: Literal["resid_pre"] = "resid_pre"
    positions: Literal["each"] = "each"
    steps: int = Field(1, ge=1, le=64, description="1: gradient x input; more: integrated gradients from the corrupted prompt.")


def input_influence(
    model,
    tokens: Int[Tensor, "1 pos"],
    readout: Callable[[Float[Tensor, "rows d_model"]], Float[Tensor, "rows"]],
    *,
    steps: int = 1,
    baseline: Tensor | None = None,
) -> Float[Tensor, "pos"]:
    """Each position's share of the metric: gradient x input (steps=1) or integrated gradients from
    ``baseline`` (the baseline prompt's input to the first block, [1, pos, d_model])."""
    first = H.resid_pre_name(0)
    captured: dict[str, Tensor] = {}
    alphas = ((torch.arange(steps, dtype=torch.float32) + 0.5) / steps) if steps > 1 else torch.ones(1)

    def scale(act: Tensor, hook) -> Tensor:
        e = act.detach()
        start = torch.zeros_like(e) if baseline is None or steps == 1 else baseline.to(e.dtype)
        captured["delta"] = e - start
        path = start + alphas.to(e.device, e.dtype).view(-1, 1, 1) * (e - start)
        path.requires_grad_(True)
        captured["path"] = path
        return path

    with torch.enable_grad():
        resid = run_to_final_resid(model, tokens, {first: [scale]}, grad=True)
        (grad,) = torch.autograd.grad(readout(resid).sum(), [captured["path"]])
    mean_grad = grad.sum(0) / grad.shape[0]
    return (mean_grad * captured["delta"][0]).sum(-1).float().cpu()


def run_pair(ctx: PairContext) -> PairResult:
    steps = ctx.spec.steps
    baseline = ctx.corrupted_cache[H.resid_pre_name(0)] if steps > 1 else None
    values = input_influence(ctx.model, ctx.pair.clean, ctx.readout(), steps=steps, baseline=baseline)
    ctx.progress(steps)
    return PairResult(values)


METHOD = Method(
    spec=InputInfluenceSpec,
    run_pair=run_pair,
    values="change",  # each token's share of the metric
    cost=lambda model, spec, seq_len: spec.steps,
    axes=lambda model, spec, seq_len: (["pos"], [seq_len]),
    evidence=lambda spec: "input attribution: each clean token's contribution to the metric (gradient-based, not an intervention)",
    default_view="change",
    cache_names=lambda model, spec: [H.resid_pre_name(0)],
    references=("Shrikumar et al. 2016", "Sundararajan et al. 2017"),
)
