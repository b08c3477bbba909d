"""Edges scored, patched and kept: the three passes of circuit discovery on ``edge_graph``'s graph.

- ``receiver_gradients``: the metric's gradient with respect to every receiver's own input, from
  one forward and one backward pass (``steps`` rows for EAP-IG). An edge's EAP score is its
  sender's change dotted with its receiver's gradient (Syed, Rager & Conmy 2023); with ``steps`` > 1
  the gradient is averaged at the midpoints of the straight path between the two runs' input
  embeddings (Hanna, Pezzelle & Belinkov 2024; the EAP-IG code takes the left ends of the steps).
  The passes never materialise a split residual stream: they keep each receiver's q, k and v, and
  the gradient with respect to that head's own input is the norm's vector-Jacobian product of
  (dm/dq_H) W_Q[H]^T, a few elementwise passes per layer.
- ``edge_sweep``: each edge patched alone, exactly: its receiver's input plus (the sender's output on
  the source run - on the base run), every other input and everything downstream computed normally.
  One row per edge; a row joins the batch at its receiver's block (rows join where they diverge,
  as in ``patching``), and the receiver's q/k/v is recomputed from its own input
  (``edge_graph.qkv_rows``).
- ``circuit_sweep``: one row per circuit (a set of edges); every edge outside it is patched: each
  receiver's input becomes itself plus, over its senders outside the circuit, (the sender's output
  on the source run - its output in this row, live). So a circuit of no edges is the source run
  and the full circuit the base run. As the EAP-IG code's ``evaluate_graph``, with the MIB circuit
  track's patched and mean-ablated interventions.

In a causal model two prompts that agree up to position f have equal activations there, so when
the source is the other prompt of the pair every pass covers positions f.. only (``start``), the
earlier keys and values read from the base run (``fast.suffix_hooks``): exact, as in ``patching``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.edge_graph import QKV, Graph, head_outputs, norm_weights, qkv, qkv_rows
from patchstudio.engine.fast import grow, suffix_hooks
from patchstudio.engine.forward import last_mlp_trim, run_to_final_resid
from patchstudio.engine.hooks import HookFn, Hooks, merge
from patchstudio.engine.profile import model_lock, profile

Progress = Callable[[int], None] | None


def _suffix(model, start: int, seq_len: int, kv: dict[str, Tensor] | None) -> tuple[Hooks, Hooks]:
    if start <= 0:
        return {}, {}
    if kv is None:
        raise ValueError("a pass over a suffix needs the base run's keys and values")
    return suffix_hooks(model, start, seq_len, kv)


def _tail(t: Tensor, n: int, axis: int = 1) -> Tensor:
    """The last ``n`` positions of ``t`` along ``axis`` (a pass holds a suffix, or one final position)."""
    return t.narrow(axis, t.shape[axis] - n, n)


# --- gradients: EAP and EAP-IG ------------------------------------------------------------------------


def receiver_gradients(
    model,
    graph: Graph,
    tokens: Int[Tensor, "1 pos"],
    base_input: Float[Tensor, "1 pos d_model"],
    source_input: Float[Tensor, "1 pos d_model"],
    readout: Callable[[Tensor], Tensor],
    *,
    steps: int = 1,
    start: int = 0,
    kv: dict[str, Tensor] | None = None,
) -> tuple[Float[Tensor, "receivers n d_model"], float]:
    """(d metric / d input of each receiver at positions ``start``.. (mean over the IG steps), the
    largest absolute gradient at the final residual stream).

    ``base_input``/``source_input``: the two runs' input embeddings (``blocks.0.hook_resid_pre``);
    with ``steps`` > 1 the pass runs their interpolations at the midpoints (k + 1/2) / steps."""
    seq_len = int(tokens.shape[-1])
    n_layers = graph.n_layers
    before, after = _suffix(model, start, seq_len, kv)
    captured: dict[tuple[str, int], Tensor] = {}

    def keep(key: tuple[str, int], copy: bool = False) -> HookFn:
        def hook(act: Tensor, hook) -> Tensor:
            out = act.clone() if copy else act  # a copy read by the MLP alone: its gradient is the MLP's
            captured[key] = out
            return out

        return hook

    def embeddings(act: Tensor, hook) -> Tensor:
        a, b = _tail(base_input, act.shape[1]), _tail(source_input, act.shape[1])
        if steps == 1:
            return a.expand_as(act).detach().clone().requires_grad_(True)  # a leaf: the graph exists without weights' grads
        alphas = ((torch.arange(steps, dtype=torch.float32) + 0.5) / steps).to(a.device, a.dtype)
        return (a + alphas.view(-1, 1, 1) * (b - a)).requires_grad_(True)

    first: Hooks = defaultdict(list)
    last: Hooks = defaultdict(list)
    last[H.resid_pre_name(0)].append(embeddings)
    for layer in range(n_layers):
        last[H.resid_pre_name(layer)].append(keep(("x", layer)))
        for letter in QKV:  # before the suffix pass prefixes them: the suffix's own values
            first[H.hook_name(f"head_{letter}", layer)].append(keep((letter, layer)))
        last[H.mlp_branch_in_name(layer)].append(keep(("mlp", layer), copy=True))
    hooks = merge(first, before, after, last, last_mlp_trim(model))
    with torch.enable_grad():
        final = run_to_final_resid(model, tokens, hooks, grad=True)
        total = readout(final).sum()
        keys = [(letter, layer) for layer in range(n_layers) for letter in (*QKV, "mlp")]
        *grads, final_grad = torch.autograd.grad(total, [captured[k] for k in keys] + [final], allow_unused=True)
    found = dict(zip(keys, grads))
    rows = final.shape[0]
    n = seq_len - start
    out = []
    with model_lock(model), torch.enable_grad(), profile(model).pinned():  # the weights read once
        for layer in range(n_layers):
            x = captured[("x", layer)].detach()
            # the gradient at each head's q/k/v back to its own (normed) input, then through the norm
            ups = []
            for letter in QKV:
                g = found[(letter, layer)]
                w, _ = norm_weights(model, layer, letter)
                ups.append(torch.zeros(*x.shape[:2], w.shape[0], x.shape[2], dtype=x.dtype, device=x.device) if g is None
                           else torch.einsum("rphk,hdk->rphd", g, w.to(g.dtype)))
            u = torch.cat(ups, dim=2)
            y = x[:, :, None, :].expand(-1, -1, u.shape[2], -1).clone().requires_grad_(True)
            (gx,) = torch.autograd.grad(model.blocks[layer].ln1(y), y, grad_outputs=u.to(y.dtype))
            out.append(gx.mean(0).permute(1, 0, 2))  # [receivers of the layer, n, d]
            g = found[("mlp", layer)]
            mlp = torch.zeros(n, x.shape[2], dtype=x.dtype, device=x.device)
            if g is not None:
                mlp[n - g.shape[1]:] = g.mean(0)  # the trimmed last MLP: its final position only
            out.append(mlp[None])
    logits = torch.zeros(1, n, graph.d_model, dtype=final.dtype, device=final.device)
    logits[0, -1] = final_grad.detach().mean(0)
    largest = float(final_grad.detach().abs().max()) if rows else 0.0
    return torch.cat(out + [logits]).detach(), largest


def edge_scores(graph: Graph, deltas: Float[Tensor, "senders n d_model"], grads: Float[Tensor, "receivers n d_model"]) -> Tensor:
    """Each edge's estimate, delta of its sender's output . gradient at its receiver's input, in edge order."""
    full = torch.einsum("spd,rpd->sr", deltas.to(grads.dtype), grads).float()
    return full.reshape(-1)[graph.flat_index.to(full.device)].cpu()


# --- exact edges ---------------------------------------------------------------------------------------


def edge_sweep(
    model,
    graph: Graph,
    tokens: Int[Tensor, "1 pos"],
    deltas: Float[Tensor, "senders pos d_model"],
    final: Float[Tensor, "d_model"],
    edges: Sequence[int],
    readout: Callable[[Tensor], Tensor],
    *,
    chunk_rows: int = 256,
    start: int = 0,
    kv: dict[str, Tensor] | None = None,
    progress: Progress = None,
) -> Float[Tensor, "edges"]:
    """The metric with each edge (indices into ``graph.edges``) patched alone: its receiver's input
    plus ``deltas[sender]`` (the sender's source output minus its base output). ``final``: the base
    run's final residual stream at the last position (edges into the logits need no pass)."""
    out = torch.empty(len(edges))
    by_layer: dict[int, list[int]] = defaultdict(list)
    direct = []
    for i, e in enumerate(edges):
        r = graph.receivers[graph.edges[e][1]]
        (direct if r.input == "logits" else by_layer[r.layer]).append(i)
    with torch.no_grad(), profile(model).pinned():  # the hooks read the weights: checked once
        if direct:
            senders = torch.tensor([graph.edges[edges[i]][0] for i in direct])
            out[direct] = readout(final[None] + deltas[senders, -1].to(final.dtype)).float().cpu()
            if progress is not None:
                progress(len(direct))
        order = [i for layer in sorted(by_layer) for i in by_layer[layer]]
        size = max(1, chunk_rows)
        for k in range(0, len(order), size):
            rows = order[k : k + size]
            metric = _edge_pass(model, graph, tokens, deltas, [edges[i] for i in rows], readout, start, kv)
            out[rows] = metric
            if progress is not None:
                progress(len(rows))
    return out


def _edge_pass(model, graph: Graph, tokens: Tensor, deltas: Tensor, edges: list[int], readout, start: int,
               kv: dict[str, Tensor] | None) -> Tensor:
    """One forward pass: row 0 the base run, then one row per edge (sorted by their receivers' block)."""
    before, after = _suffix(model, start, int(tokens.shape[-1]), kv)
    growth: Hooks = defaultdict(list)
    first: Hooks = defaultdict(list)
    last: Hooks = defaultdict(list)
    base_x: dict[int, Tensor] = {}
    by_layer: dict[int, list[int]] = defaultdict(list)
    for e in edges:
        by_layer[graph.receivers[graph.edges[e][1]].layer].append(e)
    row = 1
    for layer, members in sorted(by_layer.items()):
        growth[H.resid_pre_name(layer)].append(grow(len(members)))
        last[H.resid_pre_name(layer)].append(_keep_row0(base_x, layer))
        groups: dict[str, list[tuple[int, int, int]]] = defaultdict(list)  # input -> (row, sender, head)
        for j, e in enumerate(members):
            s, r = graph.edges[e]
            groups[graph.receivers[r].input].append((row + j, s, graph.receivers[r].index))
        for letter in QKV:
            if groups[letter]:
                first[H.hook_name(f"head_{letter}", layer)].append(_qkv_rows_setter(model, layer, letter, groups[letter], deltas, base_x))
        if groups["mlp"]:
            last[H.mlp_branch_in_name(layer)].append(_add_rows(groups["mlp"], deltas))
        row += len(members)
    hooks = merge(growth, first, before, after, last, last_mlp_trim(model))
    return readout(run_to_final_resid(model, tokens, hooks)).float().cpu()[1:]


def _keep_row0(store: dict[int, Tensor], layer: int) -> HookFn:
    def keep(act: Tensor, hook) -> Tensor:
        store[layer] = act[:1]
        return act

    return keep


def _qkv_rows_setter(model, layer: int, letter: str, members: list[tuple[int, int, int]], deltas: Tensor,
                     base_x: dict[int, Tensor]) -> HookFn:
    rows = torch.tensor([m[0] for m in members])
    senders = torch.tensor([m[1] for m in members])
    heads = torch.tensor([m[2] for m in members])

    def set_rows(act: Tensor, hook) -> Tensor:
        x = base_x[layer]  # every edge row is the base run until this block
        n = act.shape[1]
        delta = _tail(deltas[senders], n).to(act.device)
        new = qkv_rows(model, layer, letter, x.expand(len(members), -1, -1), delta, heads.to(act.device))
        out = act.clone()
        out[rows.to(act.device), :, heads.to(act.device)] = new.to(act.dtype)
        return out

    return set_rows


def _add_rows(members: list[tuple[int, int, int]], deltas: Tensor) -> HookFn:
    rows = torch.tensor([m[0] for m in members])
    senders = torch.tensor([m[1] for m in members])

    def add(act: Tensor, hook) -> Tensor:
        out = act.clone()  # out of place: the MLP alone reads it
        idx = rows.to(act.device)
        out[idx] = act[idx] + _tail(deltas[senders], act.shape[1]).to(act.device, act.dtype)
        return out

    return add


# --- circuits --------------------------------------------------------------------------------------------


def circuit_sweep(
    model,
    graph: Graph,
    tokens: Int[Tensor, "1 pos"],
    source: Float[Tensor, "senders pos d_model"],
    circuits: Tensor,
    readout: Callable[[Tensor], Tensor],
    *,
    chunk_rows: int = 256,
    start: int = 0,
    kv: dict[str, Tensor] | None = None,
    progress: Progress = None,
) -> tuple[Float[Tensor, "circuits"], float]:
    """(the metric with each circuit kept (``circuits``: [n, edges] bool, True = in the circuit) and
    every other edge patched to its sender's ``source`` output, the base run's metric)."""
    out = torch.empty(circuits.shape[0])
    base = float("nan")
    size = max(1, chunk_rows)
    with torch.no_grad(), profile(model).pinned():  # the hooks read the weights: checked once
        for k in range(0, circuits.shape[0], size):
            metric = _circuit_pass(model, graph, tokens, source, circuits[k : k + size], readout, start, kv)
            base, out[k : k + size] = float(metric[0]), metric[1:]
            if progress is not None:
                progress(min(size, circuits.shape[0] - k))
    return out, base


def _circuit_pass(model, graph: Graph, tokens: Tensor, source: Tensor, circuits: Tensor, readout, start: int,
                  kv: dict[str, Tensor] | None) -> Tensor:
    """Row 0 the base run (nothing patched), then one row per circuit."""
    seq_len = int(tokens.shape[-1])
    n = seq_len - start
    rows = 1 + circuits.shape[0]
    n_send, n_recv = len(graph.senders), len(graph.receivers)
    device = source.device
    patched = torch.zeros(rows, n_send * n_recv, device=device, dtype=source.dtype)
    patched[1:, graph.flat_index.to(device)] = (~circuits.to(device)).to(source.dtype)
    patched = patched.view(rows, n_send, n_recv)
    src = _tail(source, n)
    # sender s's source output minus its live output in each row, filled as the pass reaches s
    diff = torch.zeros(rows, n_send, n, graph.d_model, device=device, dtype=source.dtype)
    xs: dict[int, Tensor] = {}
    before, after = _suffix(model, start, seq_len, kv)
    first: Hooks = defaultdict(list)
    last: Hooks = defaultdict(list)

    def inputs(layer_receivers: list[int]) -> Tensor:
        """Each row's change to each receiver's input: [rows, receivers, n, d]."""
        k = max(graph.n_senders_of(graph.receivers[r]) for r in layer_receivers)
        return torch.einsum("jsr,jspd->jrpd", patched[:, :k, layer_receivers], diff[:, :k])

    def start_rows(act: Tensor, hook) -> Tensor:
        diff[:, 0] = src[0] - act[:1]  # the input: the same embeddings in every row
        return act.expand(rows, *act.shape[1:]).clone()

    last[H.resid_pre_name(0)].append(start_rows)
    for layer in range(graph.n_layers):
        at = graph.at_layer(layer)
        last[H.resid_pre_name(layer)].append(_keep_all(xs, layer))
        for letter in QKV:
            receivers = [r for r in at if graph.receivers[r].input == letter]
            first[H.hook_name(f"head_{letter}", layer)].append(_split_setter(model, layer, letter, receivers, inputs, xs))
        mlp = [r for r in at if graph.receivers[r].input == "mlp"]
        last[H.mlp_branch_in_name(layer)].append(_mlp_setter(mlp, inputs))
        heads = slice(1 + layer * (graph.n_heads + 1), 1 + layer * (graph.n_heads + 1) + graph.n_heads)
        last[H.z_name(layer)].append(_heads_live(model, layer, heads, src, diff))
        last[H.mlp_out_name(layer)].append(_mlp_live(heads.stop, src, diff))
    hooks = merge(first, before, after, last, last_mlp_trim(model))
    final = run_to_final_resid(model, tokens, hooks)
    logits = len(graph.receivers) - 1
    final = final + torch.einsum("js,jsd->jd", patched[:, :, logits], diff[:, :, -1]).to(final.dtype)
    return readout(final).float().cpu()


def _keep_all(store: dict[int, Tensor], layer: int) -> HookFn:
    def keep(act: Tensor, hook) -> Tensor:
        store[layer] = act
        return act

    return keep


def _split_setter(model, layer: int, letter: str, receivers: list[int], inputs, xs: dict[int, Tensor]) -> HookFn:
    def set_split(act: Tensor, hook) -> Tensor:
        delta = inputs(receivers).permute(0, 2, 1, 3)[1:]  # [rows - 1, n, heads, d]: row 0 is left alone
        new = qkv(model, layer, letter, xs[layer][1:], _tail(delta, act.shape[1]))
        return torch.cat([act[:1], new.to(act.dtype)])

    return set_split


def _mlp_setter(receivers: list[int], inputs) -> HookFn:
    def set_mlp(act: Tensor, hook) -> Tensor:
        delta = _tail(inputs(receivers)[:, 0], act.shape[1])
        return act + delta.to(act.dtype)  # out of place; row 0's delta is zero

    return set_mlp


def _heads_live(model, layer: int, heads: slice, src: Tensor, diff: Tensor) -> HookFn:
    def live(act: Tensor, hook) -> None:
        diff[:, heads] = src[heads][None] - head_outputs(model, layer, act).to(diff.dtype)

    return live


def _mlp_live(index: int, src: Tensor, diff: Tensor) -> HookFn:
    def live(act: Tensor, hook) -> None:
        n = act.shape[1]  # the trimmed last MLP: the final position alone (all the logits read)
        diff[:, index, -n:] = src[index, -n:][None] - act.to(diff.dtype)

    return live
