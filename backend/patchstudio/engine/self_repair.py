"""Self-repair: how much of an ablated component's direct effect the rest of the network gives back.

Ablating a component changes the system being measured: downstream components react (the Hydra
effect, McGrath et al. 2023; Rushing & Nanda 2024, "Explorations of self-repair"). For the logit
difference, the final residual stream is a sum of component outputs and the metric is linear in
it for a fixed final LayerNorm scale s:

    metric = sum_c f(out_c, s) + const,   f(v, s) = ((v - mean v) / s) . u,
    u = ln_final.w * (W_U[:, answer] - W_U[:, wrong])

so the total effect of an ablation splits exactly into per-component changes of direct effect
(at the clean scale) plus the part due to the change of the scale itself:

    TE = metric(ablated) - metric(clean) = sum_c dDE_c + LN,   dDE_c = f(out_c^abl, s_clean) - f(out_c^clean, s_clean)
    DE = sum over the targets of dDE_c;   self-repair = TE - DE = sum over the others of dDE_c + LN

A drop smaller than the direct effect means the network compensated. Paired ablation removes a
candidate compensator along with the target and shows the new total effect.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.patching import model_lock

Head = tuple[int, int]


def _direction(model, answer: int, wrong: int) -> Tensor:
    w_u = model.W_U.detach()
    ln_w = getattr(model.ln_final, "w", None)
    diff = w_u[:, answer] - w_u[:, wrong]
    return diff * ln_w.detach() if ln_w is not None else diff


def _head_outputs(model, z: Tensor) -> Tensor:
    """[layers, heads, d_model]: each head's output at the final position (z_h @ W_O_h)."""
    return torch.einsum("lhd,lhdm->lhm", z, model.W_O.detach())


def _run(model, tokens: Tensor, hooks: list) -> dict[str, Tensor]:
    n_layers = int(model.cfg.n_layers)
    names = [H.hook_name("head", l) for l in range(n_layers)] + [f"blocks.{l}.hook_mlp_out" for l in range(n_layers)]
    names += ["ln_final.hook_scale", H.resid_post_name(n_layers - 1)]
    with model_lock(model), torch.no_grad(), model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(tokens, names_filter=names)
    z = torch.stack([cache[H.hook_name("head", l)][0, -1] for l in range(n_layers)])  # [L, H, d_head]
    return {
        "heads": _head_outputs(model, z),
        "mlps": torch.stack([cache[f"blocks.{l}.hook_mlp_out"][0, -1] for l in range(n_layers)]),
        "scale": cache["ln_final.hook_scale"][0, -1, 0],
        "resid": cache[H.resid_post_name(n_layers - 1)][0, -1],
    }


def ablation_hooks(replacements: dict[int, Tensor], heads: Sequence[Head]) -> list:
    """Hooks that set each (layer, head)'s z to its replacement value (batch axis of size 1)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = []
    for layer, hs in by_layer.items():
        def set_z(act: Tensor, hook, hs=hs, value=replacements[layer]) -> Tensor:
            act = act.clone()
            act[:, :, hs] = value[:, :, hs].to(act.dtype)
            return act

        hooks.append((H.hook_name("head", layer), set_z))
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

    def f(v: Tensor, s: Tensor) -> Tensor:
        return ((v - v.mean(-1, keepdim=True)) / s) @ u

    clean = _run(model, tokens, [])
    ablated = _run(model, tokens, ablation_hooks(replacements, targets))
    s = clean["scale"]
    d_heads = f(ablated["heads"], s) - f(clean["heads"], s)  # [L, H]
    d_mlps = f(ablated["mlps"], s) - f(clean["mlps"], s)  # [L]
    # the change of everything else (embeddings, biases) is zero; the resid sums every part
    total = f(ablated["resid"], ablated["scale"]) - f(clean["resid"], s)
    ln_part = f(ablated["resid"], ablated["scale"]) - f(ablated["resid"], s)
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
        paired = _run(model, tokens, ablation_hooks(replacements, [*targets, compensator]))
        out["paired_total_effect"] = float(f(paired["resid"], paired["scale"]) - f(clean["resid"], s))
    return out
