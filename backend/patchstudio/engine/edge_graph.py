"""The graph circuits are made of: input embeddings -> heads and MLPs -> logits, with every edge named.

Edge attribution patching (Syed, Rager & Conmy 2023), its integrated-gradients form EAP-IG (Hanna,
Pezzelle & Belinkov 2024), ACDC (Conmy et al. 2023) and the MIB circuit track (2025) all score the
same graph, named as the EAP-IG code's ``Graph`` names it:

- **senders** (what writes to the residual stream): ``input`` (the embeddings, token and position),
  every head ``a{L}.h{H}`` (its output z_H W_O[H]; the bias b_O belongs to no head) and every MLP
  ``m{L}``, in forward order;
- **receivers** (what reads it): each head's query, key and value inputs apart (``a{L}.h{H}<q>``;
  under grouped-query attention the key and value inputs are the key/value heads', ``a{L}.kv{G}<k>``,
  each shared by its group of query heads: patching one changes that input for the whole group,
  as ``path_patching.activation_head`` names it), each MLP's input ``m{L}`` and the ``logits``;
- **edges**: every sender to every receiver later in the forward pass: ``input`` and layers < L
  to layer L's heads; those and layer L's heads to ``m{L}`` (not in parallel blocks, where the MLP
  reads the block's input too); everything to the logits. So a receiver's senders are a prefix of
  the senders' forward order.

A receiver's input is the residual stream it reads, before its norm: the sum of its senders'
outputs plus constant biases. Patching an edge s -> r sets r's input to itself plus (s's output on
the other run - s's output on this one), leaving every other reader of the stream alone. The
heads of one layer share a norm and a stream, so their inputs are split here: each receiver's
q, k or v is recomputed from its own input through the layer's own norm and its own rows of W_Q,
W_K or W_V (``qkv``), which is what the model computes when the inputs agree (``check``, once per
model, on probe tokens). The MLP's input is edited where only the MLP reads it
(``hooks.mlp_branch_in_name``), the logits' at the final residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.forward import run_with_cache
from patchstudio.engine.profile import profile, same_within_dtype
from patchstudio.errors import InputError

Input = Literal["q", "k", "v", "mlp", "logits"]
QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Node:
    """A sender: ``input``, a head or an MLP (``layer`` -1 for the input)."""

    name: str
    kind: Literal["input", "head", "mlp"]
    layer: int
    head: int | None = None


@dataclass(frozen=True)
class Receiver:
    """One input that reads the residual stream: a head's q (``index``: the query head), a key/value
    head's k or v (``index``: the key/value head), an MLP's input, or the logits (layer n_layers)."""

    name: str
    input: Input
    layer: int
    index: int | None
    heads: tuple[int, ...]  # the query heads that read this input (one, or a GQA group; none for MLP, logits)
    node: str  # the node it feeds: 'a1.h2', 'm1', 'logits' (a GQA group's first query head)


@dataclass(frozen=True)
class Graph:
    """The edge graph of a model shape (``Graph.of(model)``)."""

    n_layers: int
    n_heads: int
    n_kv: int
    parallel: bool
    d_model: int

    @classmethod
    def of(cls, model) -> Graph:
        """The graph of ``model``'s shape (one per shape: its edges are listed once)."""
        cfg = model.cfg
        n_heads = int(cfg.n_heads)
        return _of_shape(cls, int(cfg.n_layers), n_heads, int(getattr(cfg, "n_key_value_heads", None) or n_heads),
                         bool(getattr(cfg, "parallel_attn_mlp", False)), int(cfg.d_model))

    @property
    def grouped(self) -> bool:
        return self.n_kv < self.n_heads

    @cached_property
    def senders(self) -> tuple[Node, ...]:
        out = [Node("input", "input", -1)]
        for layer in range(self.n_layers):
            out += [Node(f"a{layer}.h{h}", "head", layer, h) for h in range(self.n_heads)]
            out.append(Node(f"m{layer}", "mlp", layer))
        return tuple(out)

    def kv_name(self, layer: int, g: int) -> str:
        return f"a{layer}.kv{g}" if self.grouped else f"a{layer}.h{g}"

    def group(self, g: int) -> tuple[int, ...]:
        size = self.n_heads // self.n_kv
        return tuple(range(g * size, (g + 1) * size))

    @cached_property
    def receivers(self) -> tuple[Receiver, ...]:
        out = []
        for layer in range(self.n_layers):
            out += [Receiver(f"a{layer}.h{h}<q>", "q", layer, h, (h,), f"a{layer}.h{h}") for h in range(self.n_heads)]
            for letter in ("k", "v"):
                out += [Receiver(f"{self.kv_name(layer, g)}<{letter}>", letter, layer, g, self.group(g),
                                 f"a{layer}.h{self.group(g)[0]}") for g in range(self.n_kv)]
            out.append(Receiver(f"m{layer}", "mlp", layer, None, (), f"m{layer}"))
        out.append(Receiver("logits", "logits", self.n_layers, None, (), "logits"))
        return tuple(out)

    def n_senders_of(self, r: Receiver) -> int:
        """How many senders feed ``r``: its senders are the first this many, in forward order."""
        before_layer = 1 + r.layer * (self.n_heads + 1)
        if r.input == "mlp" and not self.parallel:
            return before_layer + self.n_heads  # the layer's own heads come before its MLP
        return min(before_layer, len(self.senders))

    @cached_property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """(sender, receiver) index pairs, sender-major (each sender's edges in the receivers' order)."""
        prefix = [self.n_senders_of(r) for r in self.receivers]
        return tuple((s, r) for s in range(len(self.senders)) for r in range(len(self.receivers)) if s < prefix[r])

    @cached_property
    def names(self) -> tuple[str, ...]:
        """'a0.h1->a1.h2<q>', 'input->m0', 'm1->logits': the EAP-IG code's edge names."""
        return tuple(f"{self.senders[s].name}->{self.receivers[r].name}" for s, r in self.edges)

    @cached_property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @cached_property
    def mask(self) -> Tensor:
        """[senders, receivers] bool: which pairs are edges."""
        m = torch.zeros(len(self.senders), len(self.receivers), dtype=torch.bool)
        for s, r in self.edges:
            m[s, r] = True
        return m

    @cached_property
    def flat_index(self) -> Tensor:
        """Each edge's position in the [senders, receivers] matrix, flattened row-major (edge order)."""
        return torch.tensor([s * len(self.receivers) + r for s, r in self.edges], dtype=torch.long)

    def at_layer(self, layer: int) -> list[int]:
        """The receivers in block ``layer`` (the logits: ``n_layers``), in the receivers' order."""
        return [i for i, r in enumerate(self.receivers) if r.layer == layer]

    def edge(self, name: str) -> tuple[int, int]:
        """(sender, receiver) of an edge by name; InputError (field ``edges``) if the graph has none."""
        i = self.index.get(name)
        if i is None:
            kv = "aL.kvG" if self.grouped else "aL.hH"
            shape = f"{self.n_layers} layers of {self.n_heads} heads" + (f", {self.n_kv} key/value heads" if self.grouped else "")
            raise InputError(f"edge {name[:80]!r} is not in this model's graph ({shape}): an edge runs from 'input', "
                             f"'aL.hH' or 'mL' to a later 'aL.hH<q>', '{kv}<k>', '{kv}<v>', 'mL' or 'logits', "
                             f"e.g. 'input->a0.h0<q>'", field="edges")
        return self.edges[i]


@lru_cache(maxsize=16)
def _of_shape(cls, n_layers: int, n_heads: int, n_kv: int, parallel: bool, d_model: int) -> Graph:
    return cls(n_layers, n_heads, n_kv, parallel, d_model)


# --- what the model writes and reads ---------------------------------------------------------------


def cache_names(model) -> list[str]:
    """The hooks whose values give every sender's output (``sender_outputs``)."""
    n = int(model.cfg.n_layers)
    return [H.resid_pre_name(0)] + [H.z_name(layer) for layer in range(n)] + [H.mlp_out_name(layer) for layer in range(n)]


def head_outputs(model, layer: int, z: Float[Tensor, "rows pos head d_head"]) -> Float[Tensor, "rows head pos d_model"]:
    """Each head's write to the residual stream, z_H W_O[H] (b_O is no head's)."""
    return torch.einsum("rphk,hkd->rhpd", z, profile(model).stacked("W_O")[layer].to(z.dtype))


@torch.no_grad()
def sender_outputs(model, graph: Graph, cache: dict[str, Tensor], minus: dict[str, Tensor] | None = None,
                   start: int = 0) -> Float[Tensor, "senders pos d_model"]:
    """Every sender's output on one cached run (batch axis 1; a reference set's mean works the same),
    at positions ``start``.. . Given ``minus`` (another run's cache), the difference of the two runs'
    outputs: every output is linear in the cached activation, so it is taken once, from the
    difference of the activations."""

    def read(name: str) -> Tensor:
        a = cache[name][0, start:]
        return a if minus is None else a - minus[name][0, start:]

    n = graph.n_layers
    z = torch.stack([read(H.z_name(layer)) for layer in range(n)])  # [layers, pos, heads, d_head]
    heads = torch.einsum("lphk,lhkd->lhpd", z, profile(model).stacked("W_O").to(z.dtype))
    mlps = torch.stack([read(H.mlp_out_name(layer)) for layer in range(n)])[:, None]  # [layers, 1, pos, d]
    blocks = torch.cat([heads, mlps.to(heads.dtype)], dim=1).flatten(0, 1)  # a0.h0 .. a0.hH, m0, a1.h0 ..
    return torch.cat([read(H.resid_pre_name(0))[None].to(blocks.dtype), blocks])


def norm_weights(model, layer: int, letter: str) -> tuple[Tensor, Tensor | None]:
    """(W [heads, d_model, d_head], b [heads, d_head] or None) of one input of a layer's attention."""
    found = profile(model)
    w = found.stacked(f"W_{letter.upper()}")[layer]
    b = found.stacked(f"b_{letter.upper()}")
    return w, (b[layer] if b is not None else None)


def qkv(model, layer: int, letter: str, x: Float[Tensor, "rows pos d_model"],
        delta: Float[Tensor, "rows pos heads d_model"] | None, heads: Tensor | None = None) -> Float[Tensor, "rows pos heads d_head"]:
    """A layer's q, k or v of every head (or of ``heads``), each computed from its own input: the
    block's input ``x`` plus that head's ``delta``, through the layer's norm and the head's own
    weights. With ``delta`` zero this is the model's own value (``check``)."""
    w, b = norm_weights(model, layer, letter)
    if heads is not None:
        w, b = w[heads], (b[heads] if b is not None else None)
    y = x[:, :, None, :].expand(-1, -1, w.shape[0], -1)
    if delta is not None:
        y = y + delta.to(x.dtype)
    normed = model.blocks[layer].ln1(y)
    out = torch.einsum("rphd,hdk->rphk", normed, w.to(normed.dtype))
    return out + b.to(out.dtype) if b is not None else out


def qkv_rows(model, layer: int, letter: str, x: Float[Tensor, "rows pos d_model"], delta: Float[Tensor, "rows pos d_model"],
             heads: Tensor) -> Float[Tensor, "rows pos d_head"]:
    """Row i's q, k or v of head ``heads[i]`` alone, from x[i] + delta[i] (one edge per row)."""
    w, b = norm_weights(model, layer, letter)
    normed = model.blocks[layer].ln1(x + delta.to(x.dtype))
    out = torch.einsum("rpd,rdk->rpk", normed, w[heads].to(normed.dtype))
    return out + b[heads][:, None, :].to(out.dtype) if b is not None else out


# --- whether the model is what the graph assumes -----------------------------------------------------

_CHECKED = "edge_graph"  # the reason the graph does not fit the model ("" if it does), kept on its profile


def check(model) -> None:
    """Refuse (InputError on ``model``) a model whose residual stream is not the sum of the graph's
    senders, or whose heads' inputs cannot be split as ``qkv`` does. Found once per model, on the
    profile's probe tokens, and kept in ``profile(model).found``."""
    found = profile(model)
    if _CHECKED not in found.found:
        with found.lock:
            if _CHECKED not in found.found:
                found.found[_CHECKED] = _why_not(model)
    why = found.found[_CHECKED]
    if why:
        raise InputError(f"circuits are not defined on this model: {why}", field="model")


def _why_not(model) -> str:
    found = profile(model)
    if not found.heads_add_up:
        return ("a head's output reaches the residual stream through a norm (as Gemma 2's post-attention norm), so no "
                "edge carries one head's output alone")
    n, parallel = found.n_layers, bool(getattr(model.cfg, "parallel_attn_mlp", False))
    names = [H.resid_pre_name(layer) for layer in range(n)] + [H.resid_post_name(n - 1)]
    names += [H.attn_out_name(layer) for layer in range(n)] + [H.mlp_out_name(layer) for layer in range(n)]
    names += [H.mlp_branch_in_name(layer) for layer in range(n)]
    names += [H.hook_name(f"head_{letter}", layer) for layer in range(n) for letter in QKV]
    missing = [name for name in names if name not in found.hook_names]
    if missing:
        return f"the model has no hook point {missing[0]}"
    _, cache = run_with_cache(model, found.probe_tokens, list(dict.fromkeys(names)))
    with torch.no_grad(), found.pinned():
        for layer in range(n):
            pre, attn, mlp = cache[H.resid_pre_name(layer)], cache[H.attn_out_name(layer)], cache[H.mlp_out_name(layer)]
            after = cache[H.resid_pre_name(layer + 1)] if layer + 1 < n else cache[H.resid_post_name(n - 1)]
            if not same_within_dtype(after, pre + attn + mlp):
                return f"block {layer}'s output is not its input plus its attention and MLP outputs"
            if not same_within_dtype(cache[H.mlp_branch_in_name(layer)], pre if parallel else pre + attn):
                return f"block {layer}'s MLP does not read the residual stream"
            for letter in QKV:
                ours = qkv(model, layer, letter, pre, None)
                if not same_within_dtype(ours, cache[H.hook_name(f"head_{letter}", layer)]):
                    return f"block {layer}'s {letter} is not its norm and weights applied to the residual stream"
    return ""
