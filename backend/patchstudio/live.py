"""The explore loop on a larger model: the attribution estimate first, the exact sweep after it.

Exact activation patching costs one patched run per cell (144 for a GPT-2-small head sweep, about a
second on two cores); its attribution-patching estimate (Nanda 2023; Syed, Rager & Conmy 2023;
``engine/methods/attribution_patching.py``) costs one forward and one backward pass, and estimates
every cell to first order. When an edit's exact sweep is priced above
``Settings.live_estimate_gflop`` (its naive work: every patched run a full forward pass, counted with
``engine.fast.layer_flops``), ``submit`` answers with the stored estimate first and the page posts
again for the exact result (``web/routes/explore.py``). Both are ordinary stored runs, each with its
own permalink; a spec whose exact run is stored already, a method or component attribution patching
does not cover, or a cheap sweep goes straight to the one submit rule (``ExperimentService.submit``).
"""

from __future__ import annotations

from dataclasses import dataclass

from patchstudio.analysis.triangulation import attribution_estimate_spec
from patchstudio.engine.fast import layer_flops
from patchstudio.engine.run import Plan
from patchstudio.jobs.store import JobRow
from patchstudio.service import ExperimentService
from patchstudio.specs import SpecBase
from patchstudio.store import StoredRun


@dataclass(frozen=True)
class Estimate:
    """The first answer to an edit: the stored attribution estimate of ``exact``'s sweep."""

    run: StoredRun
    passes: int  # the estimate's cost: forward-and-backward passes over the prompt pairs
    exact_runs: int  # the exact sweep's cost, in patched runs


def pass_gflop(cfg, seq: int) -> float:
    """GFLOPs of one full forward pass of one ``seq``-token row (the last block's MLP at the final position)."""
    n = int(cfg.n_layers)
    return sum(layer_flops(cfg, seq, seq, last=layer == n - 1) for layer in range(n)) / 1e9


def naive_gflop(model, checked: Plan) -> float:
    """The sweep's work if every patched run were a full forward pass (the engine does less: suffixes, trims)."""
    return sum(checked.method.cost_of(model, checked.spec, pair) * pass_gflop(model.cfg, int(pair.clean.shape[-1]))
               for pair in checked.pairs)


def estimate_of(service: ExperimentService, spec: SpecBase) -> SpecBase | None:
    """The attribution spec to answer ``spec`` with first, or None: draw ``spec`` exact at once."""
    estimate = attribution_estimate_spec(spec)
    if estimate is None or service.store.get(spec.id) is not None:
        return None
    return estimate


def submit(service: ExperimentService, spec: SpecBase, client: str) -> StoredRun | JobRow | Estimate:
    """An edit's first answer: the attribution estimate of an expensive exact sweep (computed now and
    stored), else what the one submit rule gives (a stored run, computed now, or a job). Raises
    InputError as ``submit`` does; the exact spec is checked and priced before any estimate is made."""
    parsed = service.parse(spec)
    estimate = estimate_of(service, parsed)
    if estimate is None:
        return service.submit(parsed, client)
    exact = service.price(parsed)
    model = service.model(parsed.model).model
    if naive_gflop(model, exact) <= service.settings.live_estimate_gflop:
        return service.submit_priced({parsed.id: exact}, client)[parsed.id]
    priced = service.price(estimate)
    if priced.total > service.settings.background_patched_runs:  # a first picture is never a background job
        return service.submit_priced({parsed.id: exact}, client)[parsed.id]
    if service.store.get(estimate.id) is not None:
        first = service.submit(estimate, client)  # stored: this server's own computation, or refused
    else:
        first = service.submit_priced({estimate.id: priced}, client)[estimate.id]
    return Estimate(first, priced.total, exact.total)
