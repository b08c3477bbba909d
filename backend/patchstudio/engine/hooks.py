"""Component names -> TransformerLens hook names, hook sets, and the patch masks over each activation.

This is the one place hook strings live: every other module builds and reads hook names through
the functions here. An activation at a hook has a batch axis followed by the axes below; a patch
is a boolean mask over those axes (broadcastable), so one generic core (``engine.patching``) can
apply any patch: ``where(mask, source, activation)``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

HookFn = Callable[[Tensor, object], Tensor | None]
Hooks = dict[str, list[HookFn]]

BLOCKS = "blocks."

# component -> (hook suffix under blocks.L, kind of activation)
_HOOKS: dict[str, tuple[str, str]] = {
    "head": ("attn.hook_z", "head_vector"),
    "head_q": ("attn.hook_q", "head_vector"),
    "head_k": ("attn.hook_k", "head_vector"),
    "head_v": ("attn.hook_v", "head_vector"),
    "pattern": ("attn.hook_pattern", "pattern"),
    "resid_pre": ("hook_resid_pre", "stream"),
    # TL 4's hook_resid_mid is ln2's input: an out-of-place edit there reaches the MLP but not the
    # residual stream. Patch the stream itself through attn_out: resid_mid = resid_pre + attn_out.
    "resid_mid": ("hook_attn_out", "stream"),
    "resid_post": ("hook_resid_post", "stream"),
    "attn_out": ("hook_attn_out", "stream"),
    "mlp_out": ("hook_mlp_out", "stream"),
    # A block's contribution is replaced at its output: resid_post = resid_pre + delta.
    "layer": ("hook_resid_post", "stream"),
}

def _in_block(layer: int, point: str) -> str:
    return f"{BLOCKS}{layer}.{point}"


def hook_name(component: str, layer: int) -> str:
    return _in_block(layer, _HOOKS[component][0])


def resid_pre_name(layer: int) -> str:
    return _in_block(layer, "hook_resid_pre")


def resid_post_name(layer: int) -> str:
    return _in_block(layer, "hook_resid_post")


def resid_mid_name(layer: int) -> str:
    """TL 4's ``hook_resid_mid``: the last block's MLP input (read, or trimmed, never patched)."""
    return _in_block(layer, "hook_resid_mid")


def layer_of(hook: str) -> int | None:
    """The block a hook point lies in (``blocks.3.attn.hook_z`` -> 3), or None (embeddings, ln_final)."""
    if not hook.startswith(BLOCKS):
        return None
    return int(hook[len(BLOCKS) :].split(".", 1)[0])


def in_attention(hook: str) -> bool:
    """Whether a hook point lies inside a block's attention module."""
    layer = layer_of(hook)
    return layer is not None and hook.startswith(_in_block(layer, "attn."))


def z_name(layer: int) -> str:
    return hook_name("head", layer)


def mlp_out_name(layer: int) -> str:
    return hook_name("mlp_out", layer)


LN_FINAL_SCALE = "ln_final.hook_scale"
EMBED = "hook_embed"  # the token embedding, before positions are added
POS_EMBED = "hook_pos_embed"  # the learned position embedding (fires only in models that have one)


def activation_kind(component: str) -> str:
    return _HOOKS[component][1]


def n_heads_for(model, component: str) -> int:
    """Heads along the activation's head axis (fewer for k/v under grouped-query attention)."""
    kv = getattr(model.cfg, "n_key_value_heads", None)
    if component in ("head_k", "head_v") and kv:
        return int(kv)
    return int(model.cfg.n_heads)


@dataclass(frozen=True)
class Site:
    """One patch: at ``hook`` (in block ``layer``), overwrite the elements where ``mask`` is true."""

    layer: int
    hook: str
    mask: Tensor  # bool, over the activation's non-batch axes (broadcastable)


def sites(model, component: str, positions: Any, seq_len: int,
          groups: Sequence[Sequence[int]] | None = None) -> tuple[list[Site], list[str], list[int]]:
    """Every patch of a sweep, in row-major order of its axes (the engine asks
    ``profile(model).sites``, which builds them once per model and shape).

    Returns (sites, axis names, axis sizes). Axes follow TransformerLens's patching module:
    (layer, head) for heads at all positions, (layer, pos, head) per position, (layer, pos) for
    stream components per position, (layer,) for a stream component at every position.
    For ``pattern`` the ``pos`` axis is the destination (query) position. Per position
    (``positions`` other than "all"), a cell of the ``pos`` axis patches the token positions of
    one of ``groups`` (a role's, ``inputs.role_axis``); without them, each position on its own.
    """
    n_layers = int(model.cfg.n_layers)
    kind = activation_kind(component)
    out: list[Site] = []
    per_pos = positions != "all"
    cells: list[Any] = [list(g) for g in groups] if groups is not None else list(range(seq_len))
    if kind in ("head_vector", "pattern"):
        n_heads = n_heads_for(model, component)
        axes = ["layer", "pos", "head"] if per_pos else ["layer", "head"]
        sizes = [n_layers, len(cells), n_heads] if per_pos else [n_layers, n_heads]
        for layer in range(n_layers):
            name = hook_name(component, layer)
            for pos in cells if per_pos else [None]:
                for head in range(n_heads):
                    if kind == "head_vector":  # [pos, head, d_head]
                        mask = torch.zeros(seq_len, n_heads, 1, dtype=torch.bool)
                        mask[slice(None) if pos is None else pos, head] = True
                    else:  # [head, dest_pos, src_pos]
                        mask = torch.zeros(n_heads, seq_len, 1, dtype=torch.bool)
                        mask[head, slice(None) if pos is None else pos] = True
                    out.append(Site(layer, name, mask))
        return out, axes, sizes
    # stream: [pos, d_model]
    for layer in range(n_layers):
        name = hook_name(component, layer)
        for pos in cells if per_pos else [None]:
            mask = torch.zeros(seq_len, 1, dtype=torch.bool)
            mask[slice(None) if pos is None else pos] = True
            out.append(Site(layer, name, mask))
    if per_pos:
        return out, ["layer", "pos"], [n_layers, len(cells)]
    return out, ["layer"], [n_layers]


def extend_positions(
    component: str, values: dict[str, Tensor], sites: list[Site], extra: int
) -> tuple[dict[str, Tensor], list[Site]]:
    """Values and sites for a run of the prompt followed by ``extra`` teacher-forced tokens (an answer
    of several tokens): each value and mask is padded along its position axes, masks with False, so
    the extra positions are never patched. (A causal model's activations at the prompt's positions do
    not depend on what follows, so the prompt's cached values are still the ones to patch.)"""
    if extra == 0:
        return values, sites

    def pad(t: Tensor, axes: tuple[int, ...]) -> Tensor:
        for axis in axes:
            shape = list(t.shape)
            shape[axis] = extra
            t = torch.cat([t, torch.zeros(shape, dtype=t.dtype, device=t.device)], dim=axis)
        return t

    # pattern: value [batch, head, dest, src], mask [head, dest, 1]; else value [batch, pos, ...], mask [pos, ...]
    value_axes, mask_axes = ((2, 3), (1,)) if activation_kind(component) == "pattern" else ((1,), (0,))
    padded = {name: pad(v, value_axes) for name, v in values.items()}
    return padded, [Site(s.layer, s.hook, pad(s.mask, mask_axes)) for s in sites]


def _read_name(component: str, layer: int) -> str:
    """The hook whose value *is* the component (it differs from the patched hook for resid_mid)."""
    return resid_mid_name(layer) if component == "resid_mid" else hook_name(component, layer)


def source_hooks(component: str, n_layers: int) -> list[str]:
    """The hooks whose values a sweep over ``component`` needs from the source and base runs."""
    names = [_read_name(component, layer) for layer in range(n_layers)]
    if component in ("layer", "resid_mid"):
        names += [resid_pre_name(layer) for layer in range(n_layers)]
    return names


def patch_values(component: str, n_layers: int, base: dict[str, Tensor], source: dict[str, Tensor]) -> dict[str, Tensor]:
    """The value each patched hook takes, from the base run's and the source run's activations.

    Mostly this is the source activation itself. Two components are patched at another hook,
    using the fact that rows are identical to the base run until the patched layer:
    ``layer`` sets resid_post = base resid_pre + the source block's contribution
    (resid_post - resid_pre); ``resid_mid`` sets attn_out = source resid_mid - base resid_pre,
    which makes the residual stream after attention equal the source's.
    """
    out = {}
    for layer in range(n_layers):
        name, pre = hook_name(component, layer), resid_pre_name(layer)
        if component == "layer":
            out[name] = base[pre] + (source[name] - source[pre])
        elif component == "resid_mid":
            out[name] = source[_read_name(component, layer)] - base[pre]
        else:
            out[name] = source[name]
    return out


def position_axis(hook: str) -> int:
    """The position axis of the activation at ``hook``, counted without the batch axis (for the
    pattern, the destination position: a patch there changes that position's output only)."""
    return 1 if hook.endswith("attn.hook_pattern") else 0


# Hook points inside a block that the exact shortcuts of ``engine.fast`` use (TL 4's bridge names).


def q_name(layer: int) -> str:
    return hook_name("head_q", layer)


def k_name(layer: int) -> str:
    return hook_name("head_k", layer)


def v_name(layer: int) -> str:
    return hook_name("head_v", layer)


def attn_out_name(layer: int) -> str:
    return hook_name("attn_out", layer)


def attn_in_name(layer: int) -> str:
    """The attention module's input (after ln1)."""
    return _in_block(layer, "attn.hook_in")


def qkv_in_names(layer: int) -> list[str]:
    """The inputs of the q, k and v projections."""
    return [_in_block(layer, f"attn.{p}.hook_in") for p in ("q", "k", "v")]


def mlp_in_name(layer: int) -> str:
    """The MLP module's input (after ln2)."""
    return _in_block(layer, "mlp.hook_in")


def mlp_branch_in_name(layer: int) -> str:
    """The MLP branch's input before its norm (ln2's input: resid_mid in a sequential block, resid_pre
    in a parallel one). An out-of-place edit there reaches the MLP alone, not the residual stream."""
    return _in_block(layer, "ln2.hook_in")


# --- hook sets: {hook name: [hook functions]} ----------------------------------------------------


def compose(fns: Sequence[HookFn]) -> HookFn:
    """Several hooks at one hook point, run in order; each may return a replacement activation."""

    def hook(act: Tensor, hook: object) -> Tensor:
        for fn in fns:
            out = fn(act, hook)
            if out is not None:
                act = out
        return act

    return hook


def fwd_hooks(hooks: Hooks | None) -> list[tuple[str, HookFn]]:
    """A hook set as TransformerLens takes it (``model.hooks(fwd_hooks=...)``): one hook per point."""
    return [(name, compose(fns)) for name, fns in (hooks or {}).items()]


def merge(*hook_sets: Hooks) -> Hooks:
    """Hook sets combined; at a shared hook point, the earlier set's hooks run first."""
    out: Hooks = defaultdict(list)
    for hooks in hook_sets:
        for name, fns in hooks.items():
            out[name].extend(fns)
    return out
