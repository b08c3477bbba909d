"""Ablation: remove a component from the clean run and watch the metric.

A drop is necessity-style evidence, mixed with redundancy and the network's response: it can be
smaller than what the component does (a backup makes up for it) or larger than its direct effect
(it also acts through later components), so it bounds neither. What "remove" means is itself a
counterfactual and part of the claim (Chan et al. 2022, causal scrubbing; Heimersheim & Nanda 2024):

- ``zero``: the activation is set to zero (off-distribution: the model never sees zeros);
- ``mean``: its mean, per position, over a reference distribution (``reference``: by default
  prompts generated from the spec's own template, see ``engine/reference.py``), which keeps what
  is common to the distribution and removes what varies;
- ``resample``: its value on a prompt drawn from that distribution with ``seed`` (never the
  prompt's own clean or corrupted version; Chan et al. 2022), averaged over ``draws`` such
  prompts per pair (one draw's result moves with the seed).

The replacement values are built here and applied by the same core as activation patching.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.inputs import PreparedPair
from patchstudio.engine.methods.base import Method, PairContext, PairResult, check_component, pair_sites, sweep_cost
from patchstudio.engine.reference import ReferenceSet, resample_index, resample_indices
from patchstudio.errors import InputError
from patchstudio.specs import REFERENCE_DESCRIPTION, AblationKind, Reference, SpecBase, check_reference, draws_field

__all__ = ["AblationSpec", "ablation_sources", "ablation_values", "n_draws", "resample_index", "resample_indices", "METHOD"]


class AblationSpec(SpecBase):
    """Replace a component's activation on the clean run by zero, its mean over a reference
    distribution, or its value on prompts resampled from it (the mean over ``draws`` of them)."""

    method: Literal["ablation"] = "ablation"
    ablation: AblationKind = Field(
        "mean",
        description="'zero'; 'mean' over the reference prompts (per position); 'resample': the value on a reference "
        "prompt, averaged over 'draws' of them.",
    )
    seed: int = Field(0, description="Seed of the generated reference set and of resample's draws.")
    draws: int = draws_field()
    reference: Reference = Field("auto", description=REFERENCE_DESCRIPTION)

    @field_validator("reference")
    @classmethod
    def _reference_for_an_average(cls, value, info):
        return check_reference(value, info)


def ablation_values(
    kind: str,
    base_cache: dict[str, Tensor],
    reference: ReferenceSet | None,
    pair: PreparedPair,
    index: int,
    seed: int,
    draws: int = 1,
) -> list[dict[str, Tensor]]:
    """Per-hook replacement activations (batch axis of size 1) for prompt pair ``index`` of a
    spec, whose clean run cached ``base_cache``: one dict, or one per draw for resample. Per position
    (the pair's ``groups``), mean and resample values are taken role by role (``by_role``)."""
    if kind == "zero":
        return [{name: torch.zeros_like(act) for name, act in base_cache.items()}]
    if reference is None:
        raise ValueError(f"{kind} ablation needs a reference set")
    if kind == "mean":
        if pair.groups is not None:
            return [by_role(base_cache, pair.groups, reference.role_mean)]
        return [{name: reference.mean[name] for name in base_cache}]
    if kind == "resample":
        if pair.groups is not None:
            return [by_role(base_cache, pair.groups, lambda hook, cell, j=j: reference.at_role(hook, j, cell))
                    for j in reference.drawn(pair, index, seed, draws)]
        return [{name: drawn[name] for name in base_cache} for drawn in reference.draw(pair, index, seed, draws)]
    raise ValueError(f"unknown ablation {kind!r}: use zero, mean or resample")


def ablation_sources(ctx: PairContext) -> list[dict[str, Tensor]]:
    """``ablation_values`` for a spec with ablation, seed and draws fields."""
    spec = ctx.spec
    return ablation_values(spec.ablation, ctx.clean_cache, ctx.reference, ctx.pair, ctx.index, spec.seed, spec.draws)


def n_draws(spec) -> int:
    """Ablated runs per pair and unit: resample's draws, else one."""
    return spec.draws if spec.ablation == "resample" else 1


def by_role(base_cache: dict[str, Tensor], groups: tuple[tuple[int, ...], ...],
            value_at: Callable[[str, int], Tensor]) -> dict[str, Tensor]:
    """Per hook, the base activation with each cell's tokens (``groups``) set to ``value_at(hook,
    cell)``: the reference's activation at the same role (a sweep patches one cell at a time, so
    the other tokens are never read)."""
    out = {}
    for name, act in base_cache.items():
        value = act.clone()
        axis = 1 + H.position_axis(name)
        for cell, where in enumerate(groups):
            value.index_copy_(axis, torch.tensor(where, device=act.device), value_at(name, cell).to(act.dtype))
        out[name] = value
    return out


def check(model, spec) -> None:
    """The component exists; a pattern's mean or resample by role is refused (a pattern row weighs
    the reference prompt's own positions, which hold other roles where the name order differs)."""
    check_component(model, spec)
    if spec.component == "pattern" and spec.positions != "all" and spec.ablation != "zero":
        raise InputError(
            f"a {spec.ablation} ablation of the attention pattern by position is not aligned by role: a pattern row "
            f"weighs the reference prompt's own positions, which hold other roles where the name order differs; "
            f"ablate a head's output, q, k or v, or use zero ablation, or positions 'all'",
            field="component",
        )


def needs_one_length(spec) -> bool:
    """Mean/resample values are taken position by position from other prompts (a per-position
    sweep's cells are roles, and need no one length)."""
    return spec.ablation != "zero"


def run_pair(ctx: PairContext) -> PairResult:
    spec, model = ctx.spec, ctx.model
    sites = pair_sites(model, spec, ctx.pair)
    n_layers = int(model.cfg.n_layers)
    outs = [ctx.sweep(ctx.pair.clean, H.patch_values(spec.component, n_layers, ctx.clean_cache, source), sites)
            for source in ablation_sources(ctx)]
    return PairResult(torch.stack(outs).mean(0))


METHOD = Method(
    spec=AblationSpec,
    run_pair=run_pair,
    check=check,
    multi_token=True,
    pair_cost=lambda model, spec, pair: sweep_cost(model, spec, pair) * n_draws(spec),
    baseline=lambda spec, clean, corrupted: clean,  # the clean run is the one ablated
    same_length=needs_one_length,
    evidence=lambda spec: f"necessity-style: the component {spec.ablation}-ablated on the clean run",
    default_view="change",
    needs_reference=lambda spec: spec.ablation != "zero",
    references=("Chan et al. 2022", "Heimersheim & Nanda 2024"),
)
