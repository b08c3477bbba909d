"""Attribution patching: a linear estimate of every patch effect from one backward pass.

Attribution patching (Nanda 2023, "Attribution patching: activation patching at industrial scale";
Syed, Rager & Conmy 2023) replaces each patched forward pass by a first-order Taylor expansion of
the metric around the base run:

    metric(patched) - metric(base)  ~  grad_A metric(base) . (A_source - A_base)

so one forward and one backward pass on the base run, plus one forward pass on the source run,
estimate the effect of patching every head, position and layer at once. It is cheap and coarse:
it assumes the metric is locally linear in the activation, which fails where attention saturates
or a component's effect is large.

With ``steps`` > 1 it is node-level integrated-gradients attribution: the gradient is averaged
over ``steps`` points (a Riemann sum) on the straight line from the base input embeddings to the
source ones, the interpolation of Hanna, Pezzelle & Belinkov 2024, which removes much of the
error of the one-point estimate. All steps run as rows of one batch. It is not their EAP-IG:
EAP-IG scores *edges*, (A_source - A_base) of a sender times the gradient at one receiver's input,
to find a circuit's paths; this scores *nodes*, each component's change times the gradient at its
own output, which (by the chain rule, at the same points) is the sum of its outgoing edges'
scores, so it says how much a component matters but not through which later component. An
edge-level EAP-IG belongs with a circuit method (issue 22).

The estimates are returned as estimated metric values (base metric + estimated change), in the
same site order and axes as ``patching.patch_sweep``, so the two can be compared cell by cell.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch
from jaxtyping import Float, Int
from pydantic import Field, field_validator
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.fast import suffix_hooks
from patchstudio.engine.forward import last_mlp_trim, run_to_final_resid
from patchstudio.engine.hooks import merge
from patchstudio.engine.patching import first_difference
from patchstudio.engine.profile import profile
from patchstudio.engine.methods.base import Method, PairContext, PairResult, by_cells
from patchstudio.engine.metrics import zero_gradient
from patchstudio.specs import Direction, SpecBase

ATTRIBUTION_COMPONENTS = ("head", "head_q", "head_k", "head_v", "resid_pre", "attn_out", "mlp_out")
SUPPORTED = frozenset(ATTRIBUTION_COMPONENTS)


class AttributionPatchingSpec(SpecBase):
    """Linear estimate of activation patching from one backward pass (Nanda 2023; Syed et al. 2023),
    or node-level integrated-gradients attribution with ``steps`` > 1 (see the module docstring)."""

    method: Literal["attribution_patching"] = "attribution_patching"
    direction: Direction = "denoise"
    steps: int = Field(1, ge=1, le=64, description="1: gradient at the base run; more: node-level integrated gradients over that many points.")

    @field_validator("component")
    @classmethod
    def _supported(cls, value: str) -> str:
        if value not in ATTRIBUTION_COMPONENTS:
            raise ValueError(f"attribution patching supports {', '.join(ATTRIBUTION_COMPONENTS)}; not {value!r}")
        return value


def _reduce(component: str, per_position: bool, values: Tensor) -> Tensor:
    """Sum an elementwise product [rows, ...activation] to one number per position and head (or
    per head, with every position summed)."""
    if H.activation_kind(component) == "head_vector":  # [rows, pos, head, d_head]
        per_pos = values.sum(-1)  # [rows, pos, head]
        return per_pos if per_position else per_pos.sum(1)
    per_pos = values.sum(-1)  # stream: [rows, pos]
    return per_pos if per_position else per_pos.sum(1, keepdim=True)


def attribution_sweep(
    model,
    base_tokens: Int[Tensor, "1 pos"],
    base_cache: dict[str, Tensor],
    source_cache: dict[str, Tensor],
    component: str,
    positions: Any,
    readout: Callable[[Float[Tensor, "rows d_model"]], Float[Tensor, "rows"]],
    *,
    steps: int = 1,
    stats: dict[str, float] | None = None,
    same_before: int = 0,
    kv: dict[str, Tensor] | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> Float[Tensor, "n_sites"]:
    """Estimated metric after patching each site (``hooks.sites`` order) of ``component``.

    ``base_cache``/``source_cache`` hold each layer's activation at the component's hook (and
    ``blocks.0.hook_resid_pre`` for ``steps`` > 1) from the base and source runs. ``readout``
    maps final-position residual vectors to the metric. The cost is one forward and one backward
    pass (with ``steps`` rows); the backward pass computes activation gradients only. ``stats``,
    when given, receives ``largest_gradient``: the largest absolute gradient of the metric with
    respect to the final residual stream (0: every estimate is the base metric).

    ``same_before``: the base and source prompts agree at every position before it; ``kv``: the
    base run's keys and values (``ModelProfile.kv_names``). Given both (and ``steps`` 1), the forward and
    backward passes cover only the positions from the first difference on, the earlier keys and
    values read from ``kv`` (a suffix pass, as in ``patching``). Exact: source minus base is zero
    at the earlier positions, so their gradients multiply zero, and a later position's gradient
    flows only through later positions.

    Per position (``positions`` other than "all"), a cell is the positions of one of ``groups`` (a
    role's, ``inputs.role_axis``), their estimates summed; without them, each position.
    """
    if component not in SUPPORTED:
        raise ValueError(f"attribution patching supports {sorted(SUPPORTED)}, not {component!r}")
    n_layers = int(model.cfg.n_layers)
    names = [H.hook_name(component, layer) for layer in range(n_layers)]
    captured: dict[str, Tensor] = {}

    def keeper(name: str):
        def keep(act: Tensor, hook) -> Tensor:
            captured[name] = act  # keyed by our name: TL reports aliased hooks under theirs
            return act

        return keep

    hooks: dict[str, list] = {name: [keeper(name)] for name in names}
    seq_len = int(base_tokens.shape[-1])
    start = 0
    if steps == 1 and kv is not None and same_before > 0 and profile(model).suffix_supported(seq_len):
        start = min(int(same_before), seq_len - 1)  # the final position is always computed: the readout
    if start > 0:  # the captures come after the suffix hooks (which cut z and the stream to the suffix)
        before, after = suffix_hooks(model, start, seq_len, kv)
        hooks = merge(before, after, hooks)
    if steps > 1:
        # Riemann sum at the midpoints of the path from the base to the source input embeddings.
        first = H.resid_pre_name(0)
        start, end = base_cache[first], source_cache[first]
        alphas = ((torch.arange(steps, dtype=torch.float32) + 0.5) / steps).to(start.device, start.dtype)

        def interpolate(act: Tensor, hook) -> Tensor:
            # a leaf of the graph: for resid_pre, layer 0's activation *is* this path, and the
            # gradient is taken with respect to it
            return (start + alphas.view(-1, 1, 1) * (end - start)).requires_grad_(True)

        hooks.setdefault(first, []).insert(0, interpolate)
    if component != "mlp_out":  # the last MLP's other positions reach no readout: final position only
        hooks = merge(hooks, last_mlp_trim(model))
    with torch.enable_grad():
        resid = run_to_final_resid(model, base_tokens, hooks, grad=True)
        total = readout(resid).sum()
        *grads, resid_grad = torch.autograd.grad(total, [captured[n] for n in names] + [resid])
    if stats is not None:  # how large the metric's gradient is at the final residual stream
        stats["largest_gradient"] = float(resid_grad.abs().max())
    if steps > 1:  # the IG rows are interpolations; the base metric needs its own (gradient-free) pass
        with torch.no_grad():
            base_metric = float(readout(run_to_final_resid(model, base_tokens, {}))[0])
    else:
        base_metric = float(total.detach())
    estimates = []
    for name, grad in zip(names, grads):
        mean_grad = grad.detach().sum(0, keepdim=True) / grad.shape[0]  # average over the IG steps
        n = grad.shape[1]  # positions the pass computed: all, or the suffix (q, k, v: all, the prefix's delta 0)
        delta = (source_cache[name] - base_cache[name])[:, seq_len - n :]
        per_position = positions != "all"
        per_site = _reduce(component, per_position, mean_grad * delta)[0]
        if per_position:
            if n < seq_len:  # positions before the suffix: no change, estimate 0
                per_site = torch.cat([per_site.new_zeros((seq_len - n, *per_site.shape[1:])), per_site])
            per_site = by_cells(per_site, groups)
        estimates.append(per_site.reshape(-1))
    return torch.stack(estimates).reshape(-1).float().cpu() + base_metric


def run_pair(ctx: PairContext) -> PairResult:
    spec = ctx.spec
    base_tokens, base_cache, source_cache = ctx.runs(spec.direction)
    stats: dict[str, float] = {}
    # for a pass over the suffix (integrated gradients run whole: their rows leave the base run)
    kv = ({name: base_cache[name] for name in profile(ctx.model).kv_names} or None) if spec.steps == 1 else None
    values = attribution_sweep(
        ctx.model, base_tokens, base_cache, source_cache, spec.component, spec.positions, ctx.readout(),
        steps=spec.steps, stats=stats, same_before=first_difference(ctx.pair.clean, ctx.pair.corrupted), kv=kv,
        groups=ctx.pair.groups,
    )
    ctx.progress(spec.steps)
    warnings = ()
    at_clean = spec.direction == "noise" and spec.steps == 1  # IG rows leave the clean run
    if zero_gradient(spec.metric, at_clean, stats["largest_gradient"]):
        run = "clean" if spec.direction == "noise" else "corrupted"
        where = f"at the {run} run" if spec.steps == 1 else "along the whole path"
        warnings = (
            f"The metric's gradient is zero {where} (e.g. KL(clean ‖ run) at the clean run when noising), so every "
            f"estimate equals the unpatched metric: the linear estimate says nothing here. Use integrated gradients (steps > 1), "
            f"exact activation patching, or another metric.",
        )
    return PairResult(values, warnings=warnings)


def cache_names(model, spec) -> list[str]:
    names = [H.hook_name(spec.component, layer) for layer in range(int(model.cfg.n_layers))]
    if spec.steps > 1:  # integrated gradients interpolate the input embeddings (and run whole)
        return names + [H.resid_pre_name(0)] if spec.component != "resid_pre" else names
    return list(dict.fromkeys(names + profile(model).kv_names))  # keys and values: a pass over the suffix reads its prefix's


METHOD = Method(
    spec=AttributionPatchingSpec,
    run_pair=run_pair,
    cost=lambda model, spec, seq_len: spec.steps,  # one forward+backward pass with ``steps`` rows
    cache_names=cache_names,
    references=("Nanda 2023", "Syed, Rager & Conmy 2023", "Hanna, Pezzelle & Belinkov 2024"),
)
