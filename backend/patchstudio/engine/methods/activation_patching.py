"""Activation patching: copy a component's activation from one run into the other.

Activation patching (Vig et al. 2020, "Causal mediation analysis"; Meng et al. 2022, ROME's causal
tracing; Wang et al. 2022, IOI) runs a *base* prompt while overwriting one activation with its
value from a *source* run, and reads a metric. Denoising patches clean activations into the
corrupted run (what restores the behaviour: sufficiency-style evidence); noising patches
corrupted activations into the clean run (what breaks it: necessity-style evidence). The sweep
itself is ``engine.patching.patch_sweep``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from patchstudio.engine import hooks as H
from patchstudio.engine.methods.base import Method, PairContext, PairResult, check_component, sweep_cost
from patchstudio.specs import Direction, SpecBase


class ActivationPatchingSpec(SpecBase):
    """Copy a component's activation from one run into the other (Vig et al. 2020; Meng et al. 2022)."""

    method: Literal["activation_patching"] = "activation_patching"
    direction: Direction = Field(
        "denoise",
        description="'denoise': clean activation into the corrupted run; 'noise': corrupted activation into the clean run.",
    )


def run_pair(ctx: PairContext) -> PairResult:
    spec, model = ctx.spec, ctx.model
    base_tokens, base_cache, source = ctx.runs(spec.direction)
    sites, _, _ = H.sites(model, spec.component, spec.positions, ctx.pair.clean.shape[-1])
    values = H.patch_values(spec.component, int(model.cfg.n_layers), base_cache, source)
    return PairResult(ctx.sweep(base_tokens, values, sites))


METHOD = Method(
    spec=ActivationPatchingSpec,
    run_pair=run_pair,
    check=check_component,
    multi_token=True,
    pair_cost=sweep_cost,
    references=("Vig et al. 2020", "Meng et al. 2022", "Wang et al. 2022"),
)
