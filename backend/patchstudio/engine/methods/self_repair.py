"""Self-repair: an ablated component's direct effect beside the rest of the network's response.

Ablating a component changes the system being measured: downstream components react (the Hydra
effect, McGrath et al. 2023; Rushing & Nanda 2024, "Explorations of self-repair"). For the logit
difference, the final residual stream is a sum of component outputs and the metric is linear in
it for a fixed final LayerNorm scale s:

    metric = sum_c f(out_c, s) + const,   f(v, s) = ((v - mean v) / s) . u,
    u = ln_final.w * (W_U[:, answer] - W_U[:, wrong])

(with RMSNorm, as in Llama, Qwen2 and Gemma, there is no mean to subtract: f(v, s) = (v / s) . u)
so the total effect of an ablation splits exactly into per-component changes of direct effect
(at the clean scale) plus the part due to the change of the scale itself:

    TE = metric(ablated) - metric(clean) = sum_c dDE_c + LN,   dDE_c = f(out_c^abl, s_clean) - f(out_c^clean, s_clean)
    DE = sum over the targets of dDE_c;   TE - DE = sum over the others of dDE_c + LN

TE − DE is the rest of the network's response: all of the targets' indirect effects plus any
reactive repair, which one ablation cannot tell apart (``analysis/self_repair.py``). Without a
final norm (the Tracr models) s = 1, nothing is centred and LN = 0. Paired ablation removes a
candidate compensator along with the target: the result then also has the compensator's total
effect alone, and the paired total effect; a paired drop larger than the two single drops together
(``paired_excess``) is what ablating the target alone hid.

The split needs each head's output to reach the residual stream as z_h @ W_O_h, summed over heads,
and the logit difference to be linear in the final residual stream at a fixed scale. Gemma 2
breaks both (a norm after attention normalises the heads' sum; final logit soft-capping is
nonlinear), so self-repair refuses such models (``check``), and every run verifies that its total
effect equals the model's own change of the logit difference.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Sequence

import torch
from pydantic import Field, field_validator
from torch import Tensor

from patchstudio.engine import final_norm, hooks as H
from patchstudio.engine.forward import run_with_cache
from patchstudio.engine.methods.ablation import ablation_sources, n_draws
from patchstudio.engine.methods.base import Method, PairContext, PairResult, check_heads, sites_cost
from patchstudio.engine.metrics import architecture
from patchstudio.engine.precision import noise_floor
from patchstudio.engine.profile import profile
from patchstudio.engine.stats import spread
from patchstudio.errors import InputError
from patchstudio.specs import (
    REFERENCE_DESCRIPTION,
    AblationKind,
    HeadRef,
    Reference,
    WholeHeadsSpec,
    check_reference,
    draws_field,
    no_duplicates,
)

Head = tuple[int, int]


class SelfRepairSpec(WholeHeadsSpec):
    """Self-repair (McGrath et al. 2023; Rushing & Nanda 2024): ablate target heads on the clean
    run and split the metric's change into the targets' direct effect, each downstream head's and
    MLP's change in direct effect, and the final LayerNorm scale's part. ``compensator``: a head
    ablated together with the targets (paired ablation). Mean and resample ablation use the
    ``reference`` set (``engine/reference.py``), as ablation does."""

    what: ClassVar[str] = "self-repair ablates heads"
    unordered: ClassVar[tuple[str, ...]] = ("targets",)  # ablated together: a set
    method: Literal["self_repair"] = "self_repair"
    targets: tuple[HeadRef, ...] = Field(description="The ablated heads.", json_schema_extra={"minItems": 1})
    ablation: AblationKind = "mean"
    seed: int = Field(0, description="Seed of the generated reference set and of resample's draws.")
    draws: int = draws_field()
    reference: Reference = Field("auto", description=REFERENCE_DESCRIPTION)
    compensator: HeadRef | None = None

    @field_validator("targets")
    @classmethod
    def _some_targets(cls, value: tuple[HeadRef, ...]) -> tuple[HeadRef, ...]:
        if not value:
            raise ValueError("give at least one target head")
        return no_duplicates(value, "target", lambda t: f"L{t.layer}H{t.head}")

    @field_validator("reference")
    @classmethod
    def _reference_for_an_average(cls, value, info):
        return check_reference(value, info)

    @field_validator("compensator")
    @classmethod
    def _not_a_target(cls, value: HeadRef | None, info) -> HeadRef | None:
        if value is not None and value in (info.data.get("targets") or ()):
            raise ValueError(
                f"the compensator L{value.layer}H{value.head} is also a target: a compensator is a head ablated "
                f"together with the targets, so it must be another head"
            )
        return value

    @field_validator("metric")
    @classmethod
    def _linear_metric(cls, value: str) -> str:
        if value != "logit_diff":
            raise ValueError("self-repair splits the logit difference exactly: metric must be 'logit_diff'")
        return value


def _direction(model, answer: int, wrong: int) -> Tensor:
    w_u = model.W_U.detach()
    ln_w = getattr(model.ln_final, "w", None)
    diff = w_u[:, answer] - w_u[:, wrong]
    return diff * ln_w.detach() if ln_w is not None else diff


def _centres(model) -> bool:
    """The final norm subtracts the mean (LayerNorm); RMSNorm does not, and a model without a
    final norm (``normalization_type`` None, e.g. Tracr's) neither centres nor scales."""
    return str(getattr(model.cfg, "normalization_type", "LN")).startswith("LN")


def _head_outputs(model, z: Tensor) -> Tensor:
    """[layers, heads, d_model]: each head's output at the final position (z_h @ W_O_h)."""
    return torch.einsum("lhd,lhdm->lhm", z, model.W_O.detach())


def _run(model, tokens: Tensor, hooks: dict) -> dict[str, Tensor]:
    n_layers = int(model.cfg.n_layers)
    names = [H.z_name(l) for l in range(n_layers)] + [H.mlp_out_name(l) for l in range(n_layers)]
    scale_names = final_norm.scale_names(model)
    names += [*scale_names, H.resid_post_name(n_layers - 1)]
    logits, cache = run_with_cache(model, tokens, names, hooks)
    resid = cache[H.resid_post_name(n_layers - 1)][0, -1]
    z = torch.stack([cache[H.z_name(l)][0, -1] for l in range(n_layers)])  # [L, H, d_head]
    return {
        "logits": logits[0],
        "heads": _head_outputs(model, z),
        "mlps": torch.stack([cache[H.mlp_out_name(l)][0, -1] for l in range(n_layers)]),
        # no final norm: a scale of 1, so the LayerNorm part is 0
        "scale": cache[H.LN_FINAL_SCALE][0, -1, 0] if scale_names else torch.ones((), dtype=resid.dtype, device=resid.device),
        "resid": resid,
    }


def ablation_hooks(replacements: dict[int, Tensor], heads: Sequence[Head]) -> dict:
    """Hooks that set each (layer, head)'s z to its replacement value (batch axis of size 1)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = {}
    for layer, hs in by_layer.items():
        def set_z(act: Tensor, hook, hs=hs, value=replacements[layer]) -> Tensor:
            act = act.clone()
            act[:, :, hs] = value[:, :, hs].to(act.dtype)
            return act

        hooks[H.z_name(layer)] = [set_z]
    return hooks


def self_repair(
    model,
    tokens: Tensor,
    replacements: dict[int, Tensor],
    targets: Sequence[Head],
    answer: int,
    wrong: int,
    compensator: Head | None = None,
) -> dict[str, object]:
    """The decomposition above for one prompt. ``replacements[layer]`` is the ablation value of
    that layer's z ([1, pos, heads, d_head]) for the targets (and the compensator)."""
    u = _direction(model, answer, wrong)
    centre = _centres(model)

    def f(v: Tensor, s: Tensor) -> Tensor:
        return ((v - v.mean(-1, keepdim=True) if centre else v) / s) @ u

    clean = _run(model, tokens, {})
    ablated = _run(model, tokens, ablation_hooks(replacements, targets))
    s = clean["scale"]
    d_heads = f(ablated["heads"], s) - f(clean["heads"], s)  # [L, H]
    d_mlps = f(ablated["mlps"], s) - f(clean["mlps"], s)  # [L]
    # the change of everything else (embeddings, biases) is zero; the resid sums every part
    total = f(ablated["resid"], ablated["scale"]) - f(clean["resid"], s)
    ln_part = f(ablated["resid"], ablated["scale"]) - f(ablated["resid"], s)
    _verify_total(model, float(total), clean["logits"], ablated["logits"], answer, wrong)
    direct = sum(float(d_heads[l, h]) for l, h in targets)
    out: dict[str, object] = {
        "total_effect": float(total),
        "direct_effect": direct,
        "self_repair": float(total) - direct,
        "ln_scale_part": float(ln_part),
        "head_delta": d_heads,
        "mlp_delta": d_mlps,
    }
    if compensator is not None:
        # the compensator alone and with the targets: a paired drop larger than the two single drops
        # together is what single ablation hid (the compensator was making up for the targets)
        alone = _run(model, tokens, ablation_hooks(replacements, [compensator]))
        out["compensator_total_effect"] = float(f(alone["resid"], alone["scale"]) - f(clean["resid"], s))
        paired = _run(model, tokens, ablation_hooks(replacements, [*targets, compensator]))
        out["paired_total_effect"] = float(f(paired["resid"], paired["scale"]) - f(clean["resid"], s))
    return out


def _verify_total(model, total: float, clean_logits: Tensor, ablated_logits: Tensor, answer: int, wrong: int) -> None:
    """The decomposition's total effect equals the model's own change of the logit difference."""
    actual = float((ablated_logits[answer] - ablated_logits[wrong]) - (clean_logits[answer] - clean_logits[wrong]))
    scale = float(max(clean_logits.abs().max(), ablated_logits.abs().max()))
    if abs(total - actual) > max(1e-3, 8 * noise_floor(model, scale)):
        raise InputError(
            f"self-repair's decomposition does not reproduce {architecture(model)}'s logits (total effect "
            f"{total:.4g} from the parts, {actual:.4g} from the model): this architecture is not supported by "
            f"self-repair",
            field="method",
        )


def refusal(model) -> str | None:
    """Why self-repair's split is not exact for this model, or None."""
    reasons = []
    known = profile(model)
    if not known.heads_add_up:
        reasons.append("the attention output is not the sum of the heads' outputs (a norm after attention, as in "
                       "Gemma 2, rescales it), so one head's direct effect depends on all the others")
    if known.soft_cap is not None:
        reasons.append("final logit soft-capping makes the logit difference nonlinear in the residual stream")
    if not reasons:
        return None
    return (f"self-repair is not available for {architecture(model)}: it splits the logit difference into "
            f"per-component direct effects, which is exact only when the logits are linear in the heads' "
            f"outputs; here " + "; and ".join(reasons))


def run_pair(ctx: PairContext) -> PairResult:
    """The split for one pair; under resample ablation, the mean of its splits over the draws
    (every part is a sum of per-draw terms, so the means still add up)."""
    spec, model = ctx.spec, ctx.model
    targets = [(t.layer, t.head) for t in spec.targets]
    comp = (spec.compensator.layer, spec.compensator.head) if spec.compensator else None
    draws = []
    for values in ablation_sources(ctx):
        replacements = {layer: values[H.z_name(layer)] for layer in range(int(model.cfg.n_layers))}
        draws.append(self_repair(model, ctx.pair.clean, replacements, targets, ctx.pair.answer, ctx.pair.wrong, compensator=comp))
    analysis = {key: sum(d[key] for d in draws) / len(draws) for key in draws[0]}
    heads = analysis.pop("head_delta")
    ctx.progress(heads.numel() * len(draws))
    return PairResult(heads.reshape(-1).float().cpu(), extras=analysis)


HEADLINE = ("total_effect", "direct_effect", "self_repair", "ln_scale_part")
PAIRED = ("paired_total_effect", "compensator_total_effect", "paired_excess")


def summarize(per_prompt: list[dict], spec, clean_mean: float) -> dict:
    """Self-repair numbers averaged over the prompts, each with its 95% interval over the prompts
    (``engine.stats.spread``; ``ci``: name -> [low, high], ``mlp_delta_ci``: [low, high] per layer),
    and every prompt's own numbers (``per_prompt``: name -> one value per prompt; ``mlp_delta``:
    one row of layers per prompt), from which the analysis takes its movers' shares and intervals."""
    rows = {k: [float(d[k]) for d in per_prompt] for k in HEADLINE}
    if spec.compensator is not None:
        rows["paired_total_effect"] = [float(d["paired_total_effect"]) for d in per_prompt]
        rows["compensator_total_effect"] = [float(d["compensator_total_effect"]) for d in per_prompt]
        # what the pair costs beyond the two single ablations together (same sign as TE: a larger drop)
        rows["paired_excess"] = [p - t - c for p, t, c in zip(rows["paired_total_effect"], rows["total_effect"],
                                                               rows["compensator_total_effect"])]
    mlp = torch.stack([d["mlp_delta"].double().cpu() for d in per_prompt])  # [prompts, layers]
    names = list(rows)
    table = torch.tensor([rows[k] for k in names], dtype=torch.float64).T  # [prompts, names]
    _, low, high = spread(table)
    _, mlp_low, mlp_high = spread(mlp)
    out: dict = {k: float(table[:, i].mean()) for i, k in enumerate(names)}
    out["ablated"] = clean_mean + out["total_effect"]
    out["mlp_delta"] = [float(v) for v in mlp.mean(0)]
    out["ci"] = {k: [float(low[i]), float(high[i])] for i, k in enumerate(names)}
    out["mlp_delta_ci"] = [[float(a), float(b)] for a, b in zip(mlp_low, mlp_high)]
    out["per_prompt"] = {**rows, "mlp_delta": mlp.tolist()}
    return out


def check(model, spec) -> None:
    check_heads(model, [*spec.targets, *([spec.compensator] if spec.compensator else [])], "targets")
    why = refusal(model)
    if why is not None:
        raise InputError(why, field="method")


METHOD = Method(
    spec=SelfRepairSpec,
    run_pair=run_pair,
    values="change",  # each head's change in direct effect
    cost=lambda model, spec, seq_len: sites_cost(model, spec, seq_len) * n_draws(spec),
    same_length=lambda spec: spec.ablation != "zero",
    needs_reference=lambda spec: spec.ablation != "zero",
    check=check,
    summarize=summarize,
    evidence=lambda spec: "self-repair: each component's change in direct effect when the targets are ablated "
    "(+ = compensation, − = amplification)",
    default_view="change",
    references=("McGrath et al. 2023", "Rushing & Nanda 2024"),
)
