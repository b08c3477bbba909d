"""Activation patching: one generic batched core.

Activation patching (Vig et al. 2020, "Causal mediation analysis"; Meng et al. 2022, ROME's
causal tracing; Wang et al. 2022, IOI) runs a *base* prompt while overwriting one activation with
its value from a *source* run, and reads a metric. Denoising patches clean activations into the
corrupted run (what restores the behaviour: sufficiency-style evidence); noising patches corrupted
activations into the clean run (what breaks it). Ablation is the same operation with a source made
up rather than observed (zero, mean or resampled activations).

TransformerLens's ``patching.generic_activation_patch`` runs one full forward pass per patch and
computes the full unembedding each time. This core gives the same numbers with far less work:

- **one row per patch**: all patches at one layer run as a batch in one forward pass;
- **no recomputation below the patched layer**: the base prompt runs with batch 1 up to
  ``blocks.L.hook_resid_pre``, where a hook widens the residual stream to one row per patch;
  rows only diverge where the patch is applied, so the layers below run once;
- **only the final position at the end**: the metric reads the final position, so the last
  block's MLP runs on that position alone (checked once per model against a full pass), the
  forward stops at the last block's output, and only that position goes through ``ln_final`` and
  the unembedding columns the metric needs;
- **bounded memory**: at most ``chunk_rows`` rows per forward pass.

A patch is data (``hooks.Site``): a hook and a boolean mask over the activation, applied as
``where(mask, value, activation)`` per row, so every component shares this core.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from patchstudio.engine.forward import Hooks, last_mlp_trim, merge, run_to_final_resid, setter, widen
from patchstudio.engine.hooks import Site, resid_pre_name

Progress = Callable[[int], None]


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def patch_sweep(
    model,
    base_tokens: Int[Tensor, "1 pos"],
    values: dict[str, Tensor],
    sites: Sequence[Site],
    readout: Callable[[Tensor], Tensor],
    *,
    chunk_rows: int = 256,
    progress: Progress | None = None,
    tail: int = 1,
) -> Float[Tensor, "n_sites"]:
    """The metric of the base run with each site patched to ``values[site.hook]``, one per site.

    ``values`` maps each hook to the value it is patched to (batch axis of size 1). ``readout``
    maps final-position residual vectors [rows, d_model] to the metric [rows]; with ``tail`` > 1
    (an answer of several tokens fed after the prompt) it gets the last ``tail`` positions,
    [rows, tail, d_model].
    """
    if base_tokens.shape[0] != 1:
        raise ValueError("patch_sweep runs one prompt at a time (batch size 1)")
    out = torch.empty(len(sites))
    by_layer: dict[int, list[int]] = defaultdict(list)
    for i, site in enumerate(sites):
        by_layer[site.layer].append(i)
    device = base_tokens.device
    last = int(model.cfg.n_layers) - 1
    trim = last_mlp_trim(model, base_tokens, tail)
    with torch.no_grad():
        for layer in sorted(by_layer):
            for chunk in _chunks(by_layer[layer], max(1, chunk_rows)):
                rows = len(chunk)
                # patches inside the last block see it whole
                hooks: Hooks = merge({resid_pre_name(layer): [widen(rows)]}, trim if layer < last else {})
                by_hook: dict[str, list[tuple[int, Tensor]]] = defaultdict(list)
                for row, i in enumerate(chunk):
                    by_hook[sites[i].hook].append((row, sites[i].mask))
                for name, entries in by_hook.items():
                    shape = torch.broadcast_shapes(*(m.shape for _, m in entries))
                    mask = torch.zeros((rows, *shape), dtype=torch.bool)
                    mask[[r for r, _ in entries]] = torch.stack([m.expand(shape) for _, m in entries])
                    hooks[name].append(setter(mask.to(device), values[name]))
                resid = run_to_final_resid(model, base_tokens, hooks, tail=tail)
                out[list(chunk)] = readout(resid).float().cpu()
                if progress is not None:
                    progress(rows)
    return out
