"""Input influence: how much each prompt token's embedding contributes to the metric.

Each position's share is attributed against a baseline input b (``baseline``): the corrupted
prompt's input to the first block (the default, so shares divide the same clean-corrupted gap as
every other method), or zero. With e the clean prompt's input to the first block (token +
position embedding), position p's share is

- ``steps`` 1: gradient x (input - baseline) (Shrikumar et al. 2016), grad_e metric(e) . (e_p - b_p);
- ``steps`` > 1: integrated gradients (Sundararajan et al. 2017), the gradient averaged at the
  midpoints of the straight path from b to e (a ``steps``-point Riemann sum) times (e_p - b_p).

What the shares add up to (tested in tests/engine/test_influence.py):

- integrated gradients are *complete*: the shares sum to metric(e) - metric(b), up to the Riemann
  sum's error, which shrinks as 1/steps^2 (for b = corrupted, that is metric(clean) -
  metric(corrupted), the gap; for b = 0, the metric of an all-zero input to the first block);
- with ``steps`` 1 they sum, exactly, to the directional derivative of the metric at the clean
  input towards it from b, grad metric(e) . (e - b): the first-order (linear) estimate of
  metric(e) - metric(b), exact only where the metric is linear in the input.

A zero baseline is a poor one for models with LayerNorm, which is scale-invariant: the whole change
happens in a sliver of the path next to zero, which a Riemann sum needs many steps to see (on the
test models, thousands; the spec allows 64). So every run checks completeness: it computes
metric(b) with one more forward pass and warns when the shares' sum misses metric(e) - metric(b)
by more than ``COMPLETENESS_TOL`` of it (for ``steps`` 1 the sum is only a linear estimate of it,
and the warning says so). Shares
are changes of the metric ("no effect" = 0), so ``normalized_logit_diff`` divides them by the gap
without an offset. All ``steps`` points run as rows of one forward and one backward pass.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from jaxtyping import Float, Int
from pydantic import Field
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.forward import run_to_final_resid
from patchstudio.engine.methods.base import Method, PairContext, PairResult, by_cells
from patchstudio.engine.metrics import zero_gradient
from patchstudio.specs import SpecBase


COMPLETENESS_TOL = 0.1  # warn when the shares' sum misses metric(clean) - metric(baseline) by more than this fraction


class InputInfluenceSpec(SpecBase):
    """Per-token attribution of the metric to the input embeddings of the clean prompt, against a
    baseline input: gradient x (input - baseline) (``steps`` 1) or integrated gradients from the
    baseline (``steps`` > 1), whose shares add up to metric(clean) - metric(baseline)."""

    method: Literal["input_influence"] = "input_influence"
    component: Literal["resid_pre"] = "resid_pre"
    positions: Literal["each"] = "each"
    steps: int = Field(1, ge=1, le=64, description="1: gradient x (input - baseline); more: integrated gradients from the baseline.")
    baseline: Literal["corrupted", "zero"] = Field(
        "corrupted",
        description="The input the shares are measured from: the corrupted prompt's embeddings, or zero.",
    )


def input_influence(
    model,
    tokens: Int[Tensor, "1 pos"],
    readout: Callable[[Float[Tensor, "rows d_model"]], Float[Tensor, "rows"]],
    *,
    steps: int = 1,
    baseline: Tensor | None = None,
) -> tuple[Float[Tensor, "pos"], float]:
    """(each position's share, the largest absolute gradient): gradient x (input - baseline)
    (steps=1) or integrated gradients from ``baseline`` (the baseline prompt's input to the first
    block, [1, pos, d_model]; None = zero)."""
    first = H.resid_pre_name(0)
    captured: dict[str, Tensor] = {}
    alphas = ((torch.arange(steps, dtype=torch.float32) + 0.5) / steps) if steps > 1 else torch.ones(1)

    def scale(act: Tensor, hook) -> Tensor:
        e = act.detach()
        start = torch.zeros_like(e) if baseline is None else baseline.to(e.dtype)
        captured["delta"] = e - start
        path = start + alphas.to(e.device, e.dtype).view(-1, 1, 1) * (e - start)
        path.requires_grad_(True)
        captured["path"] = path
        return path

    with torch.enable_grad():
        resid = run_to_final_resid(model, tokens, {first: [scale]}, grad=True)
        (grad,) = torch.autograd.grad(readout(resid).sum(), [captured["path"]])
    mean_grad = grad.sum(0) / grad.shape[0]
    return (mean_grad * captured["delta"][0]).sum(-1).float().cpu(), float(grad.abs().max())


def metric_at(model, tokens: Tensor, readout, embeddings: Tensor | None) -> float:
    """The metric with the first block's input set to ``embeddings`` (None: zero)."""

    def put(act: Tensor, hook) -> Tensor:
        return torch.zeros_like(act) if embeddings is None else embeddings.to(act.dtype).expand_as(act)

    with torch.no_grad():
        return float(readout(run_to_final_resid(model, tokens, {H.resid_pre_name(0): [put]}))[0])


def run_pair(ctx: PairContext) -> PairResult:
    spec = ctx.spec
    baseline = ctx.corrupted_cache[H.resid_pre_name(0)] if spec.baseline == "corrupted" else None
    readout = ctx.readout()
    per_token, largest = input_influence(ctx.model, ctx.pair.clean, readout, steps=spec.steps, baseline=baseline)
    values = by_cells(per_token, ctx.pair.groups)  # by role: a role's tokens' shares add up
    ctx.progress(spec.steps)
    if zero_gradient(spec.metric, spec.steps == 1, largest):  # IG rows leave the clean run
        where = "at the clean run" if spec.steps == 1 else "along the whole path"
        return PairResult(values, warnings=(
            f"The metric's gradient is zero {where} (e.g. KL(clean ‖ run) at the clean run), so every share is 0: "
            f"this says nothing about the tokens. Use integrated gradients (steps > 1) or another metric.",
        ))
    # completeness: what the shares should add up to (one more forward pass each side)
    model, tokens, first = ctx.model, ctx.pair.clean, H.resid_pre_name(0)
    expected = metric_at(model, tokens, readout, ctx.clean_cache[first]) - metric_at(model, tokens, readout, baseline)
    return PairResult(values, extras={"prompt": ctx.index, "sum": float(per_token.sum()), "expected": expected})


def completeness_warnings(per_prompt: list[dict], spec) -> list[str]:
    """A warning when the shares' sum misses metric(clean) - metric(baseline) by more than
    ``COMPLETENESS_TOL`` of it on some prompt."""
    off = [d for d in per_prompt if abs(d["sum"] - d["expected"]) > COMPLETENESS_TOL * abs(d["expected"])]
    if not off:
        return []
    d = max(off, key=lambda d: abs(d["sum"] - d["expected"]))
    what = f"metric(clean) − metric({'corrupted' if spec.baseline == 'corrupted' else 'zero input'})"
    if spec.steps == 1:
        why = "gradient × (input − baseline) is only a linear estimate of it; integrated gradients (steps > 1) add up to it"
    elif spec.baseline == "zero":
        why = (f"the {spec.steps}-step Riemann sum of integrated gradients has not converged (from a zero input, "
               f"LayerNorm puts the whole change next to zero): use the corrupted baseline")
    else:
        why = f"the {spec.steps}-step Riemann sum of integrated gradients has not converged: use more steps"
    return [
        f"On {len(off)} of {len(per_prompt)} prompt(s) the shares do not add up to {what} (prompt {d['prompt'] + 1}: "
        f"{d['sum']:.3g} against {d['expected']:.3g}, in the metric's raw units): {why}."
    ]


METHOD = Method(
    spec=InputInfluenceSpec,
    run_pair=run_pair,
    values="change",  # each token's share of the metric
    cost=lambda model, spec, seq_len: spec.steps,
    axes=lambda model, spec, n_pos: (["pos"], [n_pos]),
    evidence=lambda spec: "input attribution: each clean token's contribution to the metric (gradient-based, not an intervention)",
    default_view="change",
    cache_names=lambda model, spec: [H.resid_pre_name(0)],
    warn=completeness_warnings,
    references=("Shrikumar et al. 2016", "Sundararajan et al. 2017"),
)
