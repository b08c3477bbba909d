"""A plain-hook reference for edges and circuits: full forward passes, the model's own modules and
logits, no norm or weight recomputed by hand.

Each receiver reads its own input through a **carrier row**: the batch holds the run (row 0) and
one extra row per receiver of a block; at the block's input each carrier is set to row 0's
residual stream plus that receiver's change, so the model itself computes the receiver's q, k or
v (or its MLP's output) from it, and the hooks copy that one value into row 0. An MLP's carrier
also takes row 0's attention output, so its MLP reads row 0's resid_mid plus the change. The
logits' change is added to row 0's final residual stream. Senders' outputs are read off row 0 as
it runs (a head's: z_H W_O[H]), so a circuit's edges can carry live values.

Nothing here comes from ``edge_graph`` but the graph's list of receivers and edges (names, and
which receivers a block has), which is the input being scored, not the computation.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from patchstudio.engine.edge_graph import Graph

Offsets = Callable[[int, dict], Tensor | None]  # (receiver, live sender outputs so far) -> its input's change [pos, d]


def sender_outputs(model, tokens: Tensor) -> dict:
    """Every sender's output on a run, by sender index (``Graph.senders`` order), [pos, d_model]."""
    n, h = model.cfg.n_layers, model.cfg.n_heads
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.attn.hook_z" for l in range(n)] + [f"blocks.{l}.hook_mlp_out" for l in range(n)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    out = {0: cache["blocks.0.hook_resid_pre"][0]}
    for l in range(n):
        z = cache[f"blocks.{l}.attn.hook_z"][0]
        for head in range(h):
            out[1 + l * (h + 1) + head] = z[:, head] @ model.W_O[l, head]
        out[1 + l * (h + 1) + h] = cache[f"blocks.{l}.hook_mlp_out"][0]
    return out


def run_split(model, tokens: Tensor, offsets: Offsets, embeddings: Tensor | None = None) -> Tensor:
    """Row 0's final-position logits when each receiver reads its input plus ``offsets``, asked
    when the receiver reads (so a change may depend on the live outputs of every earlier sender).
    With ``embeddings`` [1, pos, d] the run starts from them instead of the tokens' own."""
    graph = Graph.of(model)
    n_layers, h = graph.n_layers, graph.n_heads
    carriers = max(len(graph.at_layer(l)) for l in range(n_layers))
    rows = 1 + carriers
    live: dict = {}

    def start(act, hook):
        base = act if embeddings is None else embeddings
        live[0] = base[0]
        return base[:1].expand(rows, *act.shape[1:]).clone()

    parallel = graph.parallel

    def block_in(layer):
        def hook(act, hook):
            out = act[:1].expand(rows, *act.shape[1:]).clone()
            for j, r in enumerate(graph.at_layer(layer)):
                if graph.receivers[r].input == "mlp" and not parallel:
                    continue  # it reads the stream after this block's heads: set at the attention's output
                change = offsets(r, live)
                if change is not None:
                    out[1 + j] = out[1 + j] + change
            return out
        return hook

    def copy_in(layer, letter):
        def hook(act, hook):
            out = act.clone()
            for j, r in enumerate(graph.at_layer(layer)):
                rec = graph.receivers[r]
                if rec.input == letter:
                    out[0, :, rec.index] = act[1 + j, :, rec.index]
            return out
        return hook

    def mlp_carrier_attn(layer):
        j = [graph.receivers[r].input for r in graph.at_layer(layer)].index("mlp")
        r = graph.at_layer(layer)[j]

        def hook(act, hook):
            out = act.clone()
            out[1 + j] = act[0]  # the carrier's resid_mid: row 0's, plus the MLP's change
            if not parallel:
                change = offsets(r, live)
                if change is not None:
                    out[1 + j] = out[1 + j] + change
            return out
        return hook

    def heads_live(layer):
        def hook(act, hook):
            for head in range(h):
                live[1 + layer * (h + 1) + head] = act[0, :, head] @ model.W_O[layer, head]
        return hook

    def mlp_out(layer):
        j = [graph.receivers[r].input for r in graph.at_layer(layer)].index("mlp")

        def hook(act, hook):
            out = act.clone()
            out[0] = act[1 + j]
            live[1 + layer * (h + 1) + h] = out[0]
            return out
        return hook

    def logits_in(act, hook):
        change = offsets(len(graph.receivers) - 1, live)
        out = act.clone()
        if change is not None:
            out[0] = out[0] + change
        return out

    hooks = [("blocks.0.hook_resid_pre", start)]
    for l in range(n_layers):
        hooks.append((f"blocks.{l}.hook_resid_pre", block_in(l)))
        hooks += [(f"blocks.{l}.attn.hook_{letter}", copy_in(l, letter)) for letter in "qkv"]
        hooks.append((f"blocks.{l}.attn.hook_z", heads_live(l)))
        hooks.append((f"blocks.{l}.hook_attn_out", mlp_carrier_attn(l)))
        hooks.append((f"blocks.{l}.hook_mlp_out", mlp_out(l)))
    hooks.append((f"blocks.{n_layers - 1}.hook_resid_post", logits_in))
    return model.run_with_hooks(tokens, fwd_hooks=hooks)[0, -1]


def logit_diff(logits: Tensor, answer: int, wrong: int) -> Tensor:
    return logits[answer] - logits[wrong]


def one_edge(edge: tuple[int, int], change: Tensor) -> Offsets:
    """Only ``edge``'s receiver reads a changed input: its sender's ``change``."""
    return lambda r, live: change if r == edge[1] else None


def edge_value(model, tokens, edge, deltas, answer, wrong) -> float:
    with torch.no_grad():
        return float(logit_diff(run_split(model, tokens, one_edge(edge, deltas[edge[0]])), answer, wrong))


def edge_gradient(model, tokens, edge, deltas, answer, wrong, embeddings: Tensor | None = None) -> float:
    """d/dt of the metric with the edge's receiver reading its input plus t x its sender's delta, at t = 0."""
    t = torch.zeros((), requires_grad=True)
    metric = logit_diff(run_split(model, tokens, one_edge(edge, t * deltas[edge[0]]), embeddings), answer, wrong)
    (g,) = torch.autograd.grad(metric, [t])
    return float(g)


def circuit_value(model, tokens, graph: Graph, keep: set[int], source: dict, answer, wrong) -> float:
    """The metric with every edge outside ``keep`` (edge indices) carrying its sender's ``source``
    output instead of its live one."""
    patched: dict[int, list[int]] = {}
    for i, (s, r) in enumerate(graph.edges):
        if i not in keep:
            patched.setdefault(r, []).append(s)

    def offsets(r, live):
        return sum(source[s] - live[s] for s in patched[r]) if r in patched else None

    with torch.no_grad():
        return float(logit_diff(run_split(model, tokens, offsets), answer, wrong))
