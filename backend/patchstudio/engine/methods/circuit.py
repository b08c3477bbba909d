"""Circuits: every edge scored by EAP or EAP-IG, the top edges re-measured exactly, and faithfulness.

The graph is ``edge_graph``'s: input embeddings -> heads (q, k and v apart) and MLPs -> logits, as
the EAP-IG code and the MIB circuit track (Mueller et al. 2025) name it. Three steps:

1. **Scores** (each prompt pair): edge attribution patching, EAP (Syed, Rager & Conmy 2023), the
   linear estimate of patching each edge alone, (sender's output on the source run - on the base
   run) . d metric / d receiver's input; with ``steps`` > 1 EAP-IG (Hanna, Pezzelle & Belinkov
   2024), the gradient averaged along the path between the two runs' input embeddings. One
   forward and one backward pass (``steps`` rows) per pair: ``edge_sweeps.receiver_gradients``.
   A cell is the estimated metric after patching that edge, as attribution patching's cells are.
2. **Exact where it counts** (once the pairs are done): the ``top_k`` edges by |mean estimated
   change| are patched alone, exactly (``edge_sweeps.edge_sweep``), on every pair.
3. **Faithfulness** (MIB's circuit localisation): circuits of the top n edges by |mean estimate|,
   n = int(p x edges) for MIB's ten fractions p (0.1% ... 100%), run on the clean prompt with every
   edge outside the circuit patched from the corrupted run (or, ``faithfulness: mean``, from the
   reference prompts' mean; ``edge_sweeps.circuit_sweep``): one pass per pair, one row per circuit.
   faithfulness(C) = (m(C) - m(empty)) / (m(full) - m(empty)), from the means over the pairs; so
   the empty circuit is exactly 0 and the full one exactly 1. Per pair, (m_i(C) - m_i(empty)) over
   the mean gap, whose mean over the pairs is the curve, with ``engine.stats.spread``'s interval.
   CPR is the area under the curve, CMD the area between it and 1, both by the trapezoid rule over
   the fractions p, as MIB's evaluation computes them. MIB prunes edges whose sender reads nothing
   or whose receiver feeds nothing in the circuit; under patching that changes no metric (such an
   edge carries the corrupted value either way), so circuits here are the top n edges as they are.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.edge_graph import Graph, cache_names as graph_cache_names, check as check_graph, sender_outputs
from patchstudio.engine.edge_sweeps import circuit_sweep, edge_scores, edge_sweep, receiver_gradients
from patchstudio.engine.methods.base import Finish, Method, PairContext, PairResult, patching_evidence
from patchstudio.engine.metrics import normalize, zero_gradient
from patchstudio.engine.patching import first_difference
from patchstudio.engine.profile import profile
from patchstudio.engine.stats import spread
from patchstudio.specs import REFERENCE_DESCRIPTION, Direction, Reference, WholeHeadsSpec

# MIB's circuit sizes, as fractions of the graph's edges (its evaluation's ``percentages``)
FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
MAX_TOP_K = 1000
# a mean gap between the full and empty circuits under this (relative to the metric's size) is float
# noise between two passes: faithfulness is undefined
ZERO_GAP = 1e-5


class CircuitSpec(WholeHeadsSpec):
    """Edge attribution (EAP, or EAP-IG with ``steps`` > 1) over the graph input -> heads (q, k, v)
    and MLPs -> logits; the ``top_k`` edges re-measured exactly; faithfulness of the top-n circuits."""

    what: ClassVar[str] = "a circuit is made of whole heads and MLPs"
    method: Literal["circuit"] = "circuit"
    direction: Direction = Field("noise", description="The edge scores' direction: 'noise' (as EAP and EAP-IG: "
                                 "corrupted senders into the clean run) or 'denoise'.")
    steps: int = Field(1, ge=1, le=64, description="1: EAP (the gradient at the base run); more: EAP-IG with this many steps.")
    top_k: int = Field(20, ge=0, le=MAX_TOP_K, description="The edges with the largest |estimate| re-measured exactly.")
    faithfulness: Literal["patching", "mean"] = Field(
        "patching", description="What replaces the edges outside a circuit: the corrupted run's senders ('patching'), "
        "or their mean over the reference prompts ('mean').")
    seed: int = Field(0, description="Seed of the generated reference set (faithfulness 'mean').")
    reference: Reference = Field("auto", description=REFERENCE_DESCRIPTION)

    @field_validator("reference")
    @classmethod
    def _reference_for_mean(cls, value, info):
        if value != "auto" and info.data.get("faithfulness") != "mean":
            raise ValueError("reference prompts are for faithfulness 'mean': leave reference at 'auto' or choose mean")
        return value

    @property
    def ablation(self) -> str:
        """What ``engine/reference.py`` reads: the edges outside a circuit are mean-ablated, or patched."""
        return "mean" if self.faithfulness == "mean" else "patching"


def ladder(n_edges: int) -> tuple[list[int], list[int]]:
    """(each fraction's circuit size, int(p x edges) as MIB takes it; the sizes to run: the empty
    circuit and every other size but the full one, which is the unpatched run)."""
    sizes = [int(p * n_edges) for p in FRACTIONS]
    return sizes, sorted(({0} | set(sizes)) - {n_edges})


def top_k(spec, n_edges: int) -> int:
    return min(spec.top_k, n_edges)


def cost(model, spec, seq_len: int) -> int:
    """Rows per pair: the gradient pass's, one per verified edge, one per circuit."""
    n = len(Graph.of(model).edges)
    return spec.steps + top_k(spec, n) + len(ladder(n)[1])


def cache_names(model, spec) -> list[str]:
    final = H.resid_post_name(int(model.cfg.n_layers) - 1)
    return list(dict.fromkeys(graph_cache_names(model) + [final] + profile(model).kv_names))


def pass_start(ctx: PairContext, spec) -> int:
    """The first position a pass computes: the pair's first difference where a suffix pass is exact
    (the source is the pair's other prompt, the model causal), else 0."""
    seq_len = int(ctx.pair.clean.shape[-1])
    if not profile(ctx.model).suffix_supported(seq_len):
        return 0
    return min(first_difference(ctx.pair.clean, ctx.pair.corrupted), seq_len - 1)


def base_kv(ctx: PairContext, cache: dict[str, Tensor]) -> dict[str, Tensor] | None:
    return {name: cache[name] for name in profile(ctx.model).kv_names} or None


def final_resid(model, cache: dict[str, Tensor]) -> Tensor:
    return cache[H.resid_post_name(int(model.cfg.n_layers) - 1)][0, -1]


def run_pair(ctx: PairContext) -> PairResult:
    spec, model = ctx.spec, ctx.model
    graph = Graph.of(model)
    tokens, base_cache, source_cache = ctx.runs(spec.direction)
    start = pass_start(ctx, spec)
    deltas = sender_outputs(model, graph, source_cache, minus=base_cache, start=start)  # the pass's positions only
    first = H.resid_pre_name(0)
    readout = ctx.readout()
    grads, largest = receiver_gradients(model, graph, tokens, base_cache[first], source_cache[first], readout,
                                        steps=spec.steps, start=start, kv=base_kv(ctx, base_cache) if start else None)
    with torch.no_grad():
        base_metric = float(readout(final_resid(model, base_cache)[None])[0])
    ctx.progress(spec.steps)
    warnings = ()
    if zero_gradient(spec.metric, spec.direction == "noise" and spec.steps == 1, largest):
        where = f"at the {'clean' if spec.direction == 'noise' else 'corrupted'} run" if spec.steps == 1 else "along the whole path"
        warnings = (f"The metric's gradient is zero {where}, so every edge's estimate is the unpatched metric: EAP "
                    f"says nothing here (KL(clean ‖ run) at the clean run is at its minimum). Use EAP-IG (steps > 1) "
                    f"or another metric.",)
    return PairResult(edge_scores(graph, deltas, grads) + base_metric, warnings=warnings)


# --- the second step: exact edges and faithfulness, over the whole prompt set -------------------------


def finish(done: Finish) -> dict[str, Any]:
    first = done.pairs[0]
    spec, model = first.spec, first.model
    graph = Graph.of(model)
    n_edges = len(graph.edges)
    base = torch.tensor(done.clean if spec.direction == "noise" else done.corrupted, dtype=torch.float64)
    estimate = done.per_prompt.double() - base[:, None]  # each pair's estimated change per edge
    # edges by |mean estimate|, largest first; a stable sort keeps ties in graph order
    order = torch.sort(-estimate.mean(0).abs(), stable=True).indices.tolist()
    top = order[: top_k(spec, n_edges)]
    exact = [exact_edges(ctx, graph, top).tolist() for ctx in done.pairs] if top else []
    sizes, run_sizes = ladder(n_edges)
    curves, full = zip(*(_circuits(ctx, graph, order, run_sizes) for ctx in done.pairs))
    return {
        "graph": graph_info(graph),
        "ranking": order,  # edges by |mean estimate|, largest first (ties in graph order): circuits are its prefixes
        "exact": _exact_summary(spec, top, exact, done) if top else None,
        "faithfulness": faithfulness_summary(spec, sizes, run_sizes, torch.tensor(curves, dtype=torch.float64),
                                             torch.tensor(full, dtype=torch.float64)),
    }


def exact_edges(ctx: PairContext, graph: Graph, edges: list[int]) -> Tensor:
    """The pair's metric with each of ``edges`` patched alone, exactly (``edge_patching``'s cells too)."""
    spec, model = ctx.spec, ctx.model
    tokens, base_cache, source_cache = ctx.runs(spec.direction)
    start = pass_start(ctx, spec)
    deltas = sender_outputs(model, graph, source_cache, minus=base_cache, start=start)
    values = edge_sweep(model, graph, tokens, deltas, final_resid(model, base_cache), edges, ctx.readout(),
                        chunk_rows=ctx.chunk_rows, start=start, kv=base_kv(ctx, base_cache) if start else None,
                        progress=ctx.progress)
    return values


def _circuits(ctx: PairContext, graph: Graph, order: list[int], sizes: list[int]) -> tuple[list[float], float]:
    """(the metric of each circuit of ``sizes`` top edges on this pair's clean prompt, the unpatched
    clean run's metric in the same pass)."""
    spec, model = ctx.spec, ctx.model
    if spec.faithfulness == "mean":
        source, start = sender_outputs(model, graph, ctx.reference.mean), 0
    else:
        start = pass_start(ctx, spec)
        source = sender_outputs(model, graph, ctx.corrupted_cache, start=start)
    ranked = torch.tensor(order, dtype=torch.long)
    circuits = torch.zeros(len(sizes), len(graph.edges), dtype=torch.bool)
    for i, n in enumerate(sizes):
        circuits[i, ranked[:n]] = True
    values, base = circuit_sweep(model, graph, ctx.pair.clean, source, circuits, ctx.readout(), chunk_rows=ctx.chunk_rows,
                                 start=start, kv=base_kv(ctx, ctx.clean_cache) if start else None, progress=ctx.progress)
    return values.tolist(), base


@lru_cache(maxsize=16)
def graph_info(graph: Graph) -> dict[str, Any]:
    """The graph's nodes and receivers, and each edge's (sender, receiver) indices, for drawing: one
    per graph shape, shared by its results (read only; 32,491 lists for GPT-2 small, ~20 ms to build)."""
    return {
        "n_layers": graph.n_layers, "n_heads": graph.n_heads, "n_key_value_heads": graph.n_kv,
        "parallel_attn_mlp": graph.parallel, "d_model": graph.d_model,
        "senders": [{"name": n.name, "kind": n.kind, "layer": n.layer, "head": n.head} for n in graph.senders],
        "receivers": [{"name": r.name, "input": r.input, "layer": r.layer, "index": r.index, "heads": list(r.heads),
                       "node": r.node} for r in graph.receivers],
        "edges": [list(e) for e in graph.edges],
    }


def _normalized(spec, values: Tensor, done: Finish) -> Tensor:
    """The result's units: under normalized_logit_diff, the same set-level normalisation as its cells."""
    if spec.metric != "normalized_logit_diff":
        return values
    return normalize(values, sum(done.clean) / len(done.clean), sum(done.corrupted) / len(done.corrupted))


def _exact_summary(spec, top: list[int], exact: list[list[float]], done: Finish) -> dict[str, Any]:
    per_prompt = _normalized(spec, torch.tensor(exact, dtype=torch.float64), done)
    std, low, high = spread(per_prompt)
    return {"edges": top, "values": per_prompt.mean(0).tolist(), "per_prompt": per_prompt.tolist(),
            "std": std.tolist(), "ci_low": low.tolist(), "ci_high": high.tolist()}


def areas(fractions: list[float], curve: list[float]) -> tuple[float, float]:
    """(CPR, CMD): the trapezoid areas under the curve and between it and 1, over the fractions."""
    cpr = cmd = 0.0
    for i in range(len(fractions) - 1):
        width = fractions[i + 1] - fractions[i]
        cpr += width * (curve[i] + curve[i + 1]) / 2
        cmd += width * (abs(1 - curve[i]) + abs(1 - curve[i + 1])) / 2
    return cpr, cmd


def faithfulness_summary(spec, sizes: list[int], run_sizes: list[int], metrics: Tensor, full: Tensor) -> dict[str, Any]:
    """The curve at each fraction from the pairs' metrics ([pairs, run_sizes]) and unpatched metrics."""
    n_edges = sizes[-1]
    at = {n: metrics[:, i] for i, n in enumerate(run_sizes)}
    at[n_edges] = full
    empty = at[0]
    gap = float((full - empty).mean())
    out: dict[str, Any] = {
        "intervention": spec.faithfulness, "fractions": list(FRACTIONS), "sizes": sizes, "n_edges": n_edges,
        "metric_empty": float(empty.mean()), "metric_full": float(full.mean()),
        "per_prompt_empty": empty.tolist(), "per_prompt_full": full.tolist(),
        "metric": [float(at[n].mean()) for n in sizes],
    }
    if abs(gap) < ZERO_GAP * max(1.0, float(full.abs().max())):
        return {**out, "curve": None, "why": "the full and empty circuits have the same metric: faithfulness is undefined"}
    # per pair: its change from the empty circuit over the mean gap, so the mean over pairs is the curve
    per_prompt = torch.stack([(at[n] - empty) / gap for n in sizes], dim=1)
    curve = [float((at[n] - empty).mean()) / gap for n in sizes]
    per_areas = torch.tensor([areas(list(FRACTIONS), row) for row in per_prompt.tolist()], dtype=torch.float64)
    std, low, high = spread(torch.cat([per_prompt, per_areas], dim=1))
    k = len(sizes)
    cpr, cmd = areas(list(FRACTIONS), curve)
    return {
        **out, "curve": curve, "per_prompt": per_prompt.tolist(), "std": std[:k].tolist(),
        "ci_low": low[:k].tolist(), "ci_high": high[:k].tolist(),
        "cpr": {"value": cpr, "std": float(std[k]), "ci_low": float(low[k]), "ci_high": float(high[k])},
        "cmd": {"value": cmd, "per_prompt_mean": float(per_areas[:, 1].mean()), "std": float(std[k + 1]),
                "ci_low": float(low[k + 1]), "ci_high": float(high[k + 1])},
    }


# --- the method ---------------------------------------------------------------------------------------


def check(model, spec) -> None:
    check_graph(model)


def evidence(spec) -> str:
    how = "EAP" if spec.steps == 1 else f"EAP-IG ({spec.steps} steps)"
    return f"edge attribution ({how}), a linear estimate of {patching_evidence(spec)}, one edge at a time"


METHOD = Method(
    spec=CircuitSpec,
    run_pair=run_pair,
    cost=cost,
    axes=lambda model, spec, seq_len: (["edge"], [len(Graph.of(model).edges)]),
    labels=lambda model, spec: {"edge": list(Graph.of(model).names)},
    cache_names=cache_names,
    same_length=lambda spec: spec.faithfulness == "mean",  # mean ablation: the reference's positions
    check=check,
    evidence=evidence,
    default_view="change",
    needs_reference=lambda spec: spec.faithfulness == "mean",
    finish=finish,
    references=("Syed, Rager & Conmy 2023", "Hanna, Pezzelle & Belinkov 2024", "Conmy et al. 2023",
                "Mueller et al. 2025 (MIB)"),
)
