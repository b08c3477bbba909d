"""Edge patching: chosen edges of the circuit graph, each patched alone, exactly.

An edge s -> r of ``edge_graph``'s graph is patched by adding (s's output on the source run - s's
output on the base run) to r's input alone (one head's q, k or v, an MLP's input, or the logits),
every other input and everything downstream computed normally: path patching (Wang et al. 2022;
Goldowsky-Dill et al. 2023) of one edge, as ACDC (Conmy et al. 2023) and the EAP-IG code's exact
scores define it. It is the exact value that the circuit method's EAP and EAP-IG estimate; the
circuit page links each edge to its run here. The edges of a spec are rows of one batched pass
(``edge_sweeps.edge_sweep``).
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from patchstudio.engine.edge_graph import Graph, check as check_graph
from patchstudio.engine.methods.base import Method, PairContext, PairResult, patching_evidence
from patchstudio.engine.methods.circuit import cache_names, exact_edges
from patchstudio.specs import Direction, WholeHeadsSpec, no_duplicates

MAX_EDGES = 5000
EDGE = re.compile(r"^(input|a\d+\.h\d+|m\d+)->(a\d+\.(?:h|kv)\d+<[qkv]>|m\d+|logits)$")


class EdgePatchingSpec(WholeHeadsSpec):
    """Each listed edge of the circuit graph patched alone (its sender's source output into its
    receiver's input only), everything else computed normally."""

    what: ClassVar[str] = "edges run between whole heads and MLPs"
    method: Literal["edge_patching"] = "edge_patching"
    direction: Direction = Field("noise", description="'noise': corrupted senders into the clean run; 'denoise': the reverse.")
    edges: tuple[str, ...] = Field(
        description="Edges by name, as the EAP-IG code names them: 'a0.h1->a1.h2<q>', 'input->m0', 'm1->logits' "
        "(under grouped-query attention keys and values are the key/value heads': 'a1.kv0<k>').",
        json_schema_extra={"minItems": 1},
    )

    @field_validator("edges")
    @classmethod
    def _named(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("give at least one edge, like 'input->a0.h0<q>'")
        if len(value) > MAX_EDGES:
            raise ValueError(f"{len(value):,} edges is over the limit of {MAX_EDGES:,}")
        for name in value:
            if not EDGE.match(name):
                raise ValueError(f"{name[:80]!r} is not an edge like 'a0.h1->a1.h2<q>', 'input->m0' or 'm1->logits'")
        return no_duplicates(value, "edge", str)


def run_pair(ctx: PairContext) -> PairResult:
    graph = Graph.of(ctx.model)
    return PairResult(exact_edges(ctx, graph, [graph.index[name] for name in ctx.spec.edges]))


def check(model, spec) -> None:
    """The model fits the graph, and every edge is in it (an InputError on ``edges`` naming the first that is not)."""
    check_graph(model)
    graph = Graph.of(model)
    for name in spec.edges:
        graph.edge(name)


METHOD = Method(
    spec=EdgePatchingSpec,
    run_pair=run_pair,
    cost=lambda model, spec, seq_len: len(spec.edges),
    axes=lambda model, spec, seq_len: (["edge"], [len(spec.edges)]),
    labels=lambda model, spec: {"edge": list(spec.edges)},
    cache_names=cache_names,
    same_length=lambda spec: False,
    check=check,
    evidence=lambda spec: f"exact edge patching, {patching_evidence(spec)}, one edge at a time",
    references=("Wang et al. 2022", "Goldowsky-Dill et al. 2023", "Conmy et al. 2023"),
)
