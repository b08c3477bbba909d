"""Activation patching: one generic batched core.

Activation patching (Vig et al. 2020, "Causal mediation analysis"; Meng et al. 2022, ROME's
causal tracing; Wang et al. 2022, IOI) runs a *base* prompt while overwriting one activation with
its value from a *source* run, and reads a metric. Denoising patches clean activations into the
corrupted run (what restores the behaviour: sufficiency-style evidence); noising patches corrupted
activations into the clean run (what breaks it). Ablation is the same operation with a source made
up rather than observed (zero, mean or resampled activations).

TransformerLens's ``patching.generic_activation_patch`` runs one full forward pass per patch and
computes the full unembedding each time. This core gives the same numbers with far less work:

- **patches that cannot change anything are not run**: in a causal model the two prompts'
  activations agree at every position before the first token where they differ, so patching
  there (either direction) leaves the base metric; those cells get the base metric
  (``same_before``, given by activation patching, never by ablation);
- **one row per patch, rows join where they diverge**: all patches of a pass are rows of one
  batch; the base prompt runs as row 0, and each patch's row is appended as a copy of it at its
  layer (after the patched module's own input, for head, attention and MLP outputs), so nothing
  below a patch is recomputed, and one pass serves every layer (``engine.fast``);
- **only the positions that can change**: a patch at position p leaves positions < p unchanged
  in every layer, so patches are grouped by their first changing position and a pass computes
  only the suffix, its attention reading the prefix's keys and values from the base run;
- **only the final position at the end**: the metric reads the final position, so the last
  block's MLP runs on that position alone (checked once per model against a full pass), the
  forward stops at the last block's output, and only that position goes through ``ln_final`` and
  the unembedding columns the metric needs;
- **bounded memory**: at most ``chunk_rows`` patched rows per forward pass.

A patch is data (``hooks.Site``): a hook and a boolean mask over the activation, applied as
``where(mask, value, activation)`` per row, so every component shares this core.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from patchstudio.engine.fast import Pass, base_kv, is_causal, suffix_supported
from patchstudio.engine.forward import last_mlp_trim
from patchstudio.engine.hooks import Site, position_axis

Progress = Callable[[int], None]


def first_difference(a: Int[Tensor, "1 pos"], b: Int[Tensor, "1 pos"]) -> int:
    """The first position where two token sequences of one length differ (their length if none)."""
    differ = torch.nonzero(a.reshape(-1) != b.reshape(-1)).reshape(-1)
    return int(differ[0]) if differ.numel() else int(a.shape[-1])


def touched_positions(site: Site, seq_len: int) -> tuple[int, int] | None:
    """(first, last) position a site's mask covers, or None if it covers none."""
    axis = position_axis(site.hook)
    mask = site.mask
    if mask.ndim <= axis:  # no position axis: every position
        return (0, seq_len - 1) if bool(mask.any()) else None
    other = [d for d in range(mask.ndim) if d != axis]
    along = mask.any(dim=other) if other else mask
    hits = torch.nonzero(along).reshape(-1)
    if hits.numel() == 0:
        return None
    if along.shape[0] == 1:  # broadcast over positions
        return 0, seq_len - 1
    return int(hits[0]), int(hits[-1])


def plan_passes(
    sites: Sequence[Site], seq_len: int, *, same_before: int, suffix: bool, chunk_rows: int
) -> tuple[list[Pass], list[int]]:
    """(the passes to run, the sites skipped because they cannot change the metric).

    A site changes nothing before its first covered position, nor before ``same_before``; a site
    that covers only positions before ``same_before`` changes nothing at all. With ``suffix``
    passes are grouped by where their patches start and run from there; without it, from 0.
    """
    skipped: list[int] = []
    by_start: dict[int, list[int]] = defaultdict(list)
    for i, site in enumerate(sites):
        span = touched_positions(site, seq_len)
        if span is None or span[1] < same_before:
            skipped.append(i)
            continue
        by_start[max(span[0], same_before) if suffix else 0].append(i)
    passes = []
    size = max(1, chunk_rows)
    for start in sorted(by_start):
        rows = Pass.ordered(sites, by_start[start])
        for k in range(0, len(rows), size):
            passes.append(Pass(start, rows[k : k + size]))
    return passes, skipped


def patch_sweep(
    model,
    base_tokens: Int[Tensor, "1 pos"],
    values: dict[str, Tensor],
    sites: Sequence[Site],
    readout: Callable[[Tensor], Tensor],
    *,
    chunk_rows: int = 256,
    progress: Progress | None = None,
    same_before: int = 0,
    kv: dict[str, Tensor] | None = None,
) -> Float[Tensor, "n_sites"]:
    """The metric of the base run with each site patched to ``values[site.hook]``, one per site.

    ``values`` maps each hook to the value it is patched to (batch axis of size 1). ``readout``
    maps final-position residual vectors [rows, d_model] to the metric [rows]. ``same_before``:
    the base and source runs agree at every position before it (activation patching between two
    prompts that first differ there); patches confined to those positions are not run. It must be
    0 when ``values`` do not come from such a source run (ablation). ``kv``: the base run's keys
    and values at every layer (``fast.kv_names``) if the caller has them cached; else, where a pass
    needs them, one more forward pass computes them.
    """
    if base_tokens.shape[0] != 1:
        raise ValueError("patch_sweep runs one prompt at a time (batch size 1)")
    seq_len = int(base_tokens.shape[-1])
    out = torch.empty(len(sites))
    if not is_causal(model):
        same_before = 0  # the argument needs causal attention
    same_before = max(0, min(int(same_before), seq_len))
    suffix = suffix_supported(model, base_tokens)
    passes, skipped = plan_passes(sites, seq_len, same_before=same_before, suffix=suffix, chunk_rows=chunk_rows)
    if kv is None and any(p.start > 0 for p in passes):
        kv = base_kv(model, base_tokens)
    trim = last_mlp_trim(model, base_tokens)
    base_metric: float | None = None
    with torch.no_grad():
        for p in passes:
            metric = readout(p.run(model, base_tokens, sites, values, kv, trim)).float().cpu()
            base_metric = float(metric[0])
            out[p.rows] = metric[1:]
            if progress is not None:
                progress(len(p.rows))
        if skipped:
            if base_metric is None:  # every patch was skipped: one pass for the base run alone
                base_metric = float(readout(Pass(0).run(model, base_tokens, sites, values, None, trim))[0])
            out[skipped] = base_metric
            if progress is not None:
                progress(len(skipped))
    return out
