"""Ablation: remove a component from the clean run and watch the metric.

A drop is necessity-style evidence, mixed with redundancy and compensation (self-repair): it is
a lower bound on one kind of causal role. What "remove" means is itself a counterfactual and part
of the claim (Chan et al. 2022, causal scrubbing; Heimersheim & Nanda 2024):

- ``zero``: the activation is set to zero (off-distribution: the model never sees zeros);
- ``mean``: its mean, per position, over a reference distribution (``reference``: by default
  prompts generated from the spec's own template, see ``engine/reference.py``), which keeps what
  is common to the distribution and removes what varies;
- ``resample``: its value on one prompt drawn from that distribution with ``seed`` (never the
  prompt's own clean or corrupted version; Chan et al. 2022).

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
from patchstudio.engine.reference import ReferenceSet, resample_index
from patchstudio.errors import InputError
from patchstudio.specs import REFERENCE_DESCRIPTION, AblationKind, Reference, SpecBase, check_reference

__all__ = ["AblationSpec", "ablation_values", "resample_index", "METHOD"]


class AblationSpec(SpecBase):
    """Replace a component's activation on the clean run by zero, its mean over a reference
    distribution, or its value on one prompt resampled from it."""

    method: Literal["ablation"] = "ablation"
    ablation: AblationKind = Field(
        "mean",
        description="'zero'; 'mean' over the reference prompts (per position); 'resample': the value on one reference prompt.",
    )
    seed: int = Field(0, description="Seed of the generated reference set and of resample's draw.")
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
) -> dict[str, Tensor]:
    """Per-hook replacement activations (batch axis of size 1) for prompt pair ``index`` of a
    spec, whose clean run cached ``base_cache``. Per position (the pair's ``groups``), mean and
    resample values are taken role by role (``by_role``)."""
    if kind == "zero":
        return {name: torch.zeros_like(act) for name, act in base_cache.items()}
    if reference is None:
        raise ValueError(f"{kind} ablation needs a reference set")
    if kind == "mean":
        if pair.groups is not None:
            return by_role(base_cache, pair.groups, reference.role_mean)
        return {name: reference.mean[name] for name in base_cache}
    if kind == "resample":
        if pair.groups is not None:
            j = reference.drawn(pair, index, seed)
            return by_role(base_cache, pair.groups, lambda hook, cell: reference.at_role(hook, j, cell))
        drawn = reference.draw(pair, index, seed)
        return {name: drawn[name] for name in base_cache}
    raise ValueError(f"unknown ablation {kind!r}: use zero, mean or resample")


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
    source = ablation_values(spec.ablation, ctx.clean_cache, ctx.reference, ctx.pair, ctx.index, spec.seed)
    values = H.patch_values(spec.component, int(model.cfg.n_layers), ctx.clean_cache, source)
    return PairResult(ctx.sweep(ctx.pair.clean, values, sites))


METHOD = Method(
    spec=AblationSpec,
    run_pair=run_pair,
    check=check,
    multi_token=True,
    pair_cost=sweep_cost,
    baseline=lambda spec, clean, corrupted: clean,  # the clean run is the one ablated
    same_length=needs_one_length,
    evidence=lambda spec: f"necessity-style: the component {spec.ablation}-ablated on the clean run",
    default_view="change",
    needs_reference=lambda spec: spec.ablation != "zero",
    references=("Chan et al. 2022", "Heimersheim & Nanda 2024"),
)
