"""Ablation: remove a component from the clean run and watch the metric.

A drop is necessity-style evidence, mixed with redundancy and compensation (self-repair): it is
a lower bound on one kind of causal role. What "remove" means is itself a counterfactual and part
of the claim (Chan et al. 2022, causal scrubbing; Heimersheim & Nanda 2024):

- ``zero``: the activation is set to zero (off-distribution: the model never sees zeros);
- ``mean``: its mean, per position, over a reference set (here every clean and corrupted prompt
  of the experiment), which keeps what is common to the set and removes what varies;
- ``resample``: its value on another prompt of that set, drawn with a seed (Chan et al. 2022).

The replacement values are built here and applied by the same core as activation patching.
"""

from __future__ import annotations

import random
from typing import Literal, Sequence

import torch
from pydantic import Field
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.methods.base import Method, PairContext, PairResult, check_component, sweep_cost
from patchstudio.specs import AblationKind, SpecBase


class AblationSpec(SpecBase):
    """Replace a component's activation on the clean run by zero, its mean, or a resampled value."""

    method: Literal["ablation"] = "ablation"
    ablation: AblationKind = Field(
        "mean",
        description="'zero'; 'mean' over all the spec's clean and corrupted prompts; 'resample': the value on another prompt of that set.",
    )
    seed: int = Field(0, description="Seed for 'resample'.")


def ablation_values(
    kind: str,
    pool: Sequence[dict[str, Tensor]],
    base_index: int,
    seed: int,
) -> dict[str, Tensor]:
    """Per-hook replacement activations for the prompt at ``pool[base_index]``.

    ``pool`` holds the cached activations of every reference prompt (batch axis of size 1).
    """
    base = pool[base_index]
    if kind == "zero":
        return {name: torch.zeros_like(act) for name, act in base.items()}
    if kind == "mean":
        return {name: torch.stack([p[name] for p in pool]).mean(dim=0) for name in base}
    if kind == "resample":
        return dict(pool[resample_index(len(pool), base_index, seed)])
    raise ValueError(f"unknown ablation {kind!r}: use zero, mean or resample")


def resample_index(pool_size: int, base_index: int, seed: int) -> int:
    """A seeded choice of another prompt of the pool (never the base prompt itself)."""
    if pool_size < 2:
        raise ValueError("resample ablation needs at least two prompts to draw from")
    choices = [j for j in range(pool_size) if j != base_index]
    return random.Random(seed * 1_000_003 + base_index).choice(choices)


def needs_one_length(spec) -> bool:
    """Per-position sweeps, and mean/resample values taken position by position from other prompts."""
    return spec.positions == "each" or spec.ablation != "zero"


def run_pair(ctx: PairContext) -> PairResult:
    spec, model = ctx.spec, ctx.model
    sites, _, _ = H.sites(model, spec.component, spec.positions, ctx.pair.clean.shape[-1])
    source = ablation_values(spec.ablation, ctx.pool, ctx.index, spec.seed)
    values = H.patch_values(spec.component, int(model.cfg.n_layers), ctx.clean_cache, source)
    return PairResult(ctx.sweep(ctx.pair.clean, values, sites))


METHOD = Method(
    spec=AblationSpec,
    run_pair=run_pair,
    check=check_component,
    multi_token=True,
    pair_cost=sweep_cost,
    baseline=lambda spec, clean, corrupted: clean,  # the clean run is the one ablated
    same_length=needs_one_length,
    references=("Chan et al. 2022", "Heimersheim & Nanda 2024"),
)
