"""Direct effect: each head's effect on the metric through the unembedding alone.

A head's output reaches the logits directly (through the residual stream, the final LayerNorm and
the unembedding) and indirectly (through every later head and MLP that reads it). The direct effect
keeps only the first route (Wang et al. 2022's direct logit attribution of a patch; McGrath et al.
2023): the sender's output takes its value on the counterfactual run, and everything else is
frozen at the base run, the final LayerNorm's scale included:

    final resid' = final resid(base) + (z_cf - z_base) @ W_O    (the sender's final position)
    metric'      = metric(unembed(ln_final(final resid') with ln_final's scale from the base run))

This is not path patching to the logits (``path_patching`` with no receivers), which freezes the
other heads but recomputes the MLPs, so its "path to the logits" also runs through every later
MLP. For the logit difference the direct effect is linear in the sender's output; for the other
metrics it is the metric of the logits the changed residual stream gives (the full vocabulary).

Cells are metric values (base metric + the sender's direct effect), like path patching's, in
(layer, head) order; "no effect" is the base run's metric. One forward pass per run is cached;
every head is then one row of one readout.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.forward import hooked
from patchstudio.engine.methods.base import Method, PairContext, PairResult
from patchstudio.engine.metrics import architecture
from patchstudio.engine.profile import profile
from patchstudio.errors import InputError
from patchstudio.specs import Direction, WholeHeadsSpec


class DirectEffectSpec(WholeHeadsSpec):
    """Each head's direct effect on the metric: its output from the counterfactual run, read
    through the final LayerNorm (scale frozen at the base run) and the unembedding only; every
    other component frozen. ``direction`` 'noise' (the default, as in path patching) puts the
    corrupted head output into the clean run; 'denoise' the reverse."""

    what: ClassVar[str] = "the direct effect is measured for heads"
    method: Literal["direct_effect"] = "direct_effect"
    direction: Direction = "noise"


def final_names(model) -> list[str]:
    n_layers = int(model.cfg.n_layers)
    return [H.z_name(l) for l in range(n_layers)] + [H.resid_post_name(n_layers - 1), *H.final_scale_names(model)]


def direct_effect_sweep(
    model,
    base_cache: dict[str, Tensor],
    cf_cache: dict[str, Tensor],
    readout: Callable[[Float[Tensor, "rows d_model"]], Float[Tensor, "rows"]],
) -> Float[Tensor, "n_layers_x_n_heads"]:
    """The metric with each head's output at the final position moved to its counterfactual value
    and read through the unembedding alone (``ln_final``'s scale from the base run)."""
    n_layers = int(model.cfg.n_layers)
    z_base = torch.stack([base_cache[H.z_name(l)][0, -1] for l in range(n_layers)])  # [L, H, d_head]
    z_cf = torch.stack([cf_cache[H.z_name(l)][0, -1] for l in range(n_layers)])
    w_o = model.W_O.detach()  # [L, H, d_head, d_model]
    delta = torch.einsum("lhd,lhdm->lhm", (z_cf - z_base).to(w_o.dtype), w_o)
    resid = base_cache[H.resid_post_name(n_layers - 1)][0, -1]  # [d_model]
    rows = resid.unsqueeze(0) + delta.reshape(-1, delta.shape[-1])
    if not H.final_scale_names(model):  # no final norm: nothing to freeze
        with torch.no_grad():
            return readout(rows).float().cpu()
    scale = base_cache[H.LN_FINAL_SCALE][0, -1]  # [1]: the base run's, at the final position

    def frozen_scale(act: Tensor, hook) -> Tensor:
        return scale.to(act.dtype).expand_as(act)

    with torch.no_grad(), hooked(model, {H.LN_FINAL_SCALE: [frozen_scale]}):
        return readout(rows).float().cpu()


def run_pair(ctx: PairContext) -> PairResult:
    _, base_cache, cf_cache = ctx.runs(ctx.spec.direction)
    values = direct_effect_sweep(ctx.model, base_cache, cf_cache, ctx.readout())
    ctx.progress(values.numel())
    return PairResult(values)


def check(model, spec) -> None:
    """A head's direct effect is its z @ W_O added to the residual stream: refuse an architecture
    where the attention output is not that sum (a norm after attention, as in Gemma 2)."""
    if not profile(model).heads_add_up:
        raise InputError(
            f"the direct effect is not available for {architecture(model)}: its attention output is not the sum "
            f"of the heads' outputs (a norm after attention rescales it), so a head's own contribution to the "
            f"residual stream is not defined by its output alone",
            field="method",
        )


METHOD = Method(
    spec=DirectEffectSpec,
    check=check,
    run_pair=run_pair,
    cost=lambda model, spec, seq_len: int(model.cfg.n_layers) * int(model.cfg.n_heads),  # rows of one readout
    cache_names=lambda model, spec: final_names(model),
    references=("Wang et al. 2022", "McGrath et al. 2023"),
)
