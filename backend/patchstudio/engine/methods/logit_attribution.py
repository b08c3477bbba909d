"""Direct logit attribution: the logit difference split among every head, MLP and the embeddings.

The final residual stream at the last position is a sum of parts: the token embedding, the position
embedding (models with learned positions), each head's output z @ W_O, each layer's attention
output bias b_O, and each MLP's output. With the final norm's scale frozen at the run's own value
there (``engine.final_norm``), the logits are affine in that sum, so the logit difference splits
exactly (Elhage et al. 2021; Wang et al. 2022's direct logit attribution; TransformerLens's
``decompose_resid`` read through ``apply_ln_to_stack``):

    logit_diff = sum over parts c of  N(c) . u   +   N(0) . u   +   b_U[answer] - b_U[wrong]
    N(x) = ln_final(x) - ln_final(0), scale frozen   (LayerNorm: (x - mean x) / scale * w; RMSNorm: x / scale * w)
    u    = W_U[:, answer] - W_U[:, wrong]

N(0) . u is the final norm's bias (LayerNorm's b; 0 for RMSNorm) and the last term the unembedding's.
A model without a final norm (Tracr) reads the sum as it is. The parts plus the two bias terms are
checked against the run's logit difference; a warning says where they do not add up.

Cells are each head's contribution in (layer, head) order, 0 = none; the other parts are the
result's ``extras``. Unlike ``direct_effect``, nothing moves between runs: one run (the spec's
``run``) is read as it is, and the share view divides by that run's logit difference (what the parts
sum to), not by the clean−corrupted gap. What it cannot show: a part's contribution is read at the norm's scale
with every part present, not what the logits would be without it (removing a part changes the
scale and every later component that reads it: ablation and path patching measure that).
Only the logit difference is a sum of parts; Gemma 2 (a norm after attention, a logit soft cap) is refused.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import field_validator
from torch import Tensor

from patchstudio.engine import final_norm
from patchstudio.engine import hooks as H
from patchstudio.engine.forward import hooked
from patchstudio.engine.methods.base import Method, PairContext, PairResult, ShareOf
from patchstudio.engine.methods.logit_lens import ReadRun, read_cache
from patchstudio.engine.metrics import architecture
from patchstudio.engine.precision import noise_floor
from patchstudio.engine.profile import profile
from patchstudio.errors import InputError
from patchstudio.specs import WholeHeadsSpec

METHOD_WORDS = "direct logit attribution"


class LogitAttributionSpec(WholeHeadsSpec):
    """Every head's, MLP's and embedding's direct contribution to the logit difference of the ``run``
    (clean or corrupted), read through the final norm with its scale frozen at that run's value."""

    what: ClassVar[str] = "direct logit attribution's cells are heads (the MLPs and embeddings are listed beside them)"
    method: Literal["logit_attribution"] = "logit_attribution"
    run: ReadRun = "clean"

    @field_validator("metric")
    @classmethod
    def _logit_diff(cls, value: str) -> str:
        if value != "logit_diff":
            raise ValueError(
                f"{METHOD_WORDS} splits the logit difference, which is a sum of the parts' contributions once the "
                f"final norm's scale is frozen; {value} is not a sum of parts: use logit_diff (the share view reads "
                f"each part as a share of the run's logit difference, which the parts sum to)"
            )
        return value


def readout_rows(model) -> int:
    """Rows of the one readout: every head, each layer's attention bias and MLP, the embeddings, 0 and the sum."""
    n_layers = int(model.cfg.n_layers)
    return n_layers * (int(model.cfg.n_heads) + 2) + (2 if learned_positions(model) else 1) + 2


def learned_positions(model) -> bool:
    return getattr(model.cfg, "positional_embedding_type", None) == "standard" and H.POS_EMBED in profile(model).hook_names


def part_names(model) -> list[str]:
    n_layers = int(model.cfg.n_layers)
    names = [H.z_name(layer) for layer in range(n_layers)] + [H.mlp_out_name(layer) for layer in range(n_layers)]
    names += [H.EMBED, *([H.POS_EMBED] if learned_positions(model) else []), H.resid_post_name(n_layers - 1)]
    return names + final_norm.scale_names(model)


def attribute(model, cache: dict[str, Tensor], readout) -> tuple[Tensor, dict[str, Any]]:
    """(each head's contribution [layer * head], the other parts and the sum check) at the final position."""
    n_layers = int(model.cfg.n_layers)
    z = torch.stack([cache[H.z_name(layer)][0, -1] for layer in range(n_layers)])  # [layer, head, d_head]
    w_o = model.W_O.detach()
    heads = torch.einsum("lhd,lhdm->lhm", z.to(w_o.dtype), w_o).reshape(-1, w_o.shape[-1])
    b_o = getattr(model, "b_O", None)
    attn_bias = b_o.detach().to(heads.dtype) if b_o is not None else heads.new_zeros(n_layers, heads.shape[-1])
    mlp = torch.stack([cache[H.mlp_out_name(layer)][0, -1] for layer in range(n_layers)])
    embeds = [cache[H.EMBED][0, -1], *([cache[H.POS_EMBED][0, -1]] if learned_positions(model) else [])]
    final = cache[H.resid_post_name(n_layers - 1)][0, -1]
    rows = torch.cat([heads, attn_bias, mlp, torch.stack(embeds).to(heads.dtype),
                      torch.stack([torch.zeros_like(final), final]).to(heads.dtype)])
    with torch.no_grad(), hooked(model, final_norm.frozen(model, cache)):
        read = readout(rows).double().cpu()
    bias, metric = float(read[-2]), float(read[-1])  # N(0).u + the unembedding's, and the run's logit difference
    parts = read[:-2] - bias
    n_heads = heads.shape[0]
    head_parts, attn_parts = parts[:n_heads], parts[n_heads:n_heads + n_layers]
    mlp_parts, embed_parts = parts[n_heads + n_layers:n_heads + 2 * n_layers], parts[n_heads + 2 * n_layers:]
    b_u = getattr(model, "b_U", None)
    unembed_bias = float(b_u[readout.answer] - b_u[readout.wrong]) if b_u is not None else 0.0
    total = float(parts.sum()) + bias
    extras = {
        "embed": float(embed_parts[0]),
        "pos_embed": float(embed_parts[1]) if len(embed_parts) > 1 else None,
        "attn_bias": attn_parts.tolist() if b_o is not None else None,
        "mlp": mlp_parts.tolist(),
        "norm_bias": bias - unembed_bias,
        "unembed_bias": unembed_bias,
        "total": total,
        "metric": metric,
        "scale": float(cache[H.LN_FINAL_SCALE][0, -1, 0]) if final_norm.has_scale(model) else None,
        "tolerance": max(1e-4, 8 * noise_floor(model, float(parts.abs().sum()) + abs(bias))),
    }
    return head_parts.float(), extras


def run_pair(ctx: PairContext) -> PairResult:
    values, extras = attribute(ctx.model, read_cache(ctx), ctx.readout())
    ctx.progress(readout_rows(ctx.model))
    warnings = ()
    miss = extras["total"] - extras["metric"]
    if abs(miss) > extras["tolerance"]:
        warnings = (
            f"Prompt {ctx.index + 1}: the parts add up to {extras['total']:.4f}, but the {ctx.spec.run} run's logit "
            f"difference is {extras['metric']:.4f} (off by {miss:+.3g}): this model's final residual stream is not "
            f"the sum of the parts read here, so the attribution leaves part of the logit difference out.",
        )
    return PairResult(values, extras=extras, warnings=warnings)


def summarize(extras: list[dict], spec, clean_mean: float) -> dict[str, Any]:
    """The parts beside the heads, as means over the prompts, and the sum check's largest miss."""
    n = len(extras)

    def mean(key: str) -> Any:
        first = extras[0][key]
        if first is None:
            return None
        if isinstance(first, list):
            return [sum(e[key][i] for e in extras) / n for i in range(len(first))]
        return sum(e[key] for e in extras) / n

    out = {key: mean(key) for key in ("embed", "pos_embed", "attn_bias", "mlp", "norm_bias", "unembed_bias", "total",
                                       "metric", "scale")}
    out["largest_miss"] = max(abs(e["total"] - e["metric"]) for e in extras)
    out["adds_up"] = all(abs(e["total"] - e["metric"]) <= e["tolerance"] for e in extras)
    return out


def check(model, spec) -> None:
    """Refuse what is not a sum of parts: a norm after attention (the heads' outputs do not add up
    to the attention output) or a logit soft cap (the logits are not affine in the stream)."""
    final_norm.check_freezable(model, METHOD_WORDS)
    found = profile(model)
    reasons = []
    if not found.heads_add_up:
        reasons.append("its attention output is not the sum of the heads' outputs (a norm after attention rescales it)")
    if found.soft_cap is not None:
        reasons.append(f"its logits are soft-capped (cap {found.soft_cap:g}), so they are not a sum of the parts' logits")
    if reasons:
        raise InputError(f"{METHOD_WORDS} is not available for {architecture(model)}: {'; and '.join(reasons)}",
                         field="method")


def share_of(spec, clean: float, corrupted: float) -> ShareOf:
    """The share view's denominator: the parts sum to the read run's logit difference (not to the
    clean−corrupted gap), so a part's share of it is its fraction of that run's logit difference."""
    return ShareOf(clean if spec.run == "clean" else corrupted, f"the {spec.run} run's logit difference",
                   "which the parts sum to")


METHOD = Method(
    spec=LogitAttributionSpec,
    check=check,
    run_pair=run_pair,
    values="change",  # contributions: 0 = none
    default_view="change",
    cost=lambda model, spec, seq_len: readout_rows(model),
    cache_names=lambda model, spec: part_names(model),
    summarize=summarize,
    share_of=share_of,
    evidence=lambda spec: (
        f"{METHOD_WORDS} of the {spec.run} run: each part of the final residual stream (every head, MLP, the "
        f"embeddings, the biases) read through the final norm, its scale frozen at the {spec.run} run's value at the "
        f"final position, and the unembedding; a decomposition of one run, not an intervention"
    ),
    references=("Elhage et al. 2021", "Wang et al. 2022"),
)
