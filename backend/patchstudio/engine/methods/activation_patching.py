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
from patchstudio.engine.methods.base import Method, PairContext, PairResult, check_component, pair_sites, sweep_cost
from patchstudio.engine.patching import first_difference
from patchstudio.engine.profile import profile
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
    known = profile(model)
    sites = pair_sites(model, spec, ctx.pair)
    values = H.patch_values(spec.component, int(model.cfg.n_layers), base_cache, source)
    # the two prompts agree before their first difference: patches confined there change nothing
    same_before = first_difference(ctx.pair.clean, ctx.pair.corrupted)
    kv = {name: base_cache[name] for name in known.kv_names} or None  # for passes over a suffix
    return PairResult(ctx.sweep(base_tokens, values, sites, same_before=same_before, kv=kv))


def cache_names(model, spec) -> list[str]:
    """The component's hooks, and every layer's keys and values (a suffix pass reads its prefix's)."""
    return list(dict.fromkeys(H.source_hooks(spec.component, int(model.cfg.n_layers)) + profile(model).kv_names))


METHOD = Method(
    spec=ActivationPatchingSpec,
    run_pair=run_pair,
    check=check_component,
    multi_token=True,
    pair_cost=sweep_cost,
    cache_names=cache_names,
    references=("Vig et al. 2020", "Meng et al. 2022", "Wang et al. 2022"),
)
