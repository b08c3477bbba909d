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

from patchstudio.engine.fast import Pass, block_stage, pass_overhead_flops, row_flops
from patchstudio.engine.forward import last_mlp_trim, run_to_final_resid, run_with_cache
from patchstudio.engine.hooks import Hooks, Site, position_axis
from patchstudio.engine.profile import profile

Progress = Callable[[int], None]


def first_difference(a: Int[Tensor, "1 pos"], b: Int[Tensor, "1 pos"]) -> int:
    """The first position where two token sequences of one length differ (their length if none)."""
    differ = torch.nonzero(a.reshape(-1) != b.reshape(-1)).reshape(-1)
    return int(differ[0]) if differ.numel() else int(a.shape[-1])


def site_spans(sites: Sequence[Site], seq_len: int) -> list[tuple[int, int] | None]:
    """(first, last) position each site's mask covers, or None if it covers none (vectorised over
    the sites that share a hook and a mask shape)."""
    out: list[tuple[int, int] | None] = [None] * len(sites)
    groups: dict[tuple[str, tuple[int, ...]], list[int]] = defaultdict(list)
    for i, site in enumerate(sites):
        groups[(site.hook, tuple(site.mask.shape))].append(i)
    for (hook, shape), idx in groups.items():
        masks = torch.stack([sites[i].mask for i in idx]).bool()
        axis = 1 + position_axis(hook)
        if masks.ndim <= axis:  # no position axis: every position
            for i, hit in zip(idx, masks.reshape(len(idx), -1).any(1).tolist()):
                out[i] = (0, seq_len - 1) if hit else None
            continue
        other = [d for d in range(1, masks.ndim) if d != axis]
        along = masks.any(dim=other) if other else masks  # [sites, positions]
        n_pos = along.shape[1]
        hit = along.any(1).tolist()
        first = along.int().argmax(1).tolist()
        last = (n_pos - 1 - along.flip(1).int().argmax(1)).tolist()
        for k, i in enumerate(idx):
            if hit[k]:
                out[i] = (0, seq_len - 1) if n_pos == 1 else (first[k], last[k])  # size 1: broadcast
    return out


def plan_passes(
    sites: Sequence[Site], seq_len: int, *, same_before: int, suffix: bool, chunk_rows: int, cfg=None
) -> tuple[list[Pass], list[int]]:
    """(the passes to run, the sites skipped because they cannot change the metric).

    A site changes nothing before its first covered position, nor before ``same_before``; a site
    that covers only positions before ``same_before`` changes nothing at all. With ``suffix``,
    sites are grouped by the position they start changing, and each group runs from there;
    neighbouring groups share a pass (from the earliest start) where the model's cost estimate
    (``cfg``; ``engine.fast``) says a pass saved is worth the positions recomputed. Without it,
    every pass runs from position 0.
    """
    skipped: list[int] = []
    by_start: dict[int, list[int]] = defaultdict(list)
    for i, span in enumerate(site_spans(sites, seq_len)):
        if span is None or span[1] < same_before:
            skipped.append(i)
            continue
        by_start[max(span[0], same_before) if suffix else 0].append(i)
    size = max(1, chunk_rows)
    buckets = _merge_starts(sites, by_start, seq_len, size, cfg) if cfg is not None else [[s] for s in sorted(by_start)]
    passes = []
    for bucket in buckets:
        rows = Pass.ordered(sites, [i for s in bucket for i in by_start[s]])
        for k in range(0, len(rows), size):
            passes.append(Pass(bucket[0], rows[k : k + size]))
    return passes, skipped


MERGE_WINDOW = 64  # most neighbouring start groups one pass may take (bounds the planning time)


def _merge_starts(sites, by_start: dict[int, list[int]], seq_len: int, size: int, cfg) -> list[list[int]]:
    """Consecutive runs of the sorted starts, one pass (or chunked passes) each, with the least
    estimated cost: a pass's overhead plus each row's FLOPs from the run's first start."""
    starts = sorted(by_start)
    overhead = pass_overhead_flops(cfg)
    # a row's FLOPs are linear in the positions it computes: per position, and fixed
    linear: dict[tuple[int, int], tuple[float, float]] = {}
    per_pos, fixed, rows = [], [], []
    for s in starts:
        p = f = 0.0
        for i in by_start[s]:
            key = (sites[i].layer, block_stage(sites[i].hook))
            if key not in linear:
                one = row_flops(cfg, *key, seq_len - 1, seq_len)
                two = row_flops(cfg, *key, seq_len - 2, seq_len) if seq_len >= 2 else one
                linear[key] = (two - one, 2 * one - two)
            p, f = p + linear[key][0], f + linear[key][1]
        per_pos.append(p)
        fixed.append(f)
        rows.append(len(by_start[s]))
    best = [0.0] + [float("inf")] * len(starts)
    cut = [0] * (len(starts) + 1)
    for j in range(1, len(starts) + 1):
        p = f = r = 0.0
        for i in range(j, max(0, j - MERGE_WINDOW), -1):  # run starts[i-1 .. j-1] from starts[i-1]
            p, f, r = p + per_pos[i - 1], f + fixed[i - 1], r + rows[i - 1]
            cost = best[i - 1] + -(-r // size) * overhead + p * (seq_len - starts[i - 1]) + f
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    buckets, j = [], len(starts)
    while j > 0:
        buckets.append(starts[cut[j] : j])
        j = cut[j]
    return buckets[::-1]


def run_pass(model, p: Pass, tokens: Tensor, sites: Sequence[Site], values: dict[str, Tensor],
             kv: dict[str, Tensor] | None, trim: Hooks, tail: int = 1) -> Tensor:
    """Final-position residuals [1 + len(rows), d_model] of one pass: row 0 the base run, then
    ``p.rows`` (with ``tail`` > 1 the last ``tail`` positions, [1 + len(rows), tail, d_model])."""
    hooks = p.hooks(model, sites, values, int(tokens.shape[-1]), kv, trim)
    return run_to_final_resid(model, tokens, hooks, tail=tail)


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
    same_before: int = 0,
    kv: dict[str, Tensor] | None = None,
) -> Float[Tensor, "n_sites"]:
    """The metric of the base run with each site patched to ``values[site.hook]``, one per site.

    ``values`` maps each hook to the value it is patched to (batch axis of size 1). ``readout``
    maps final-position residual vectors [rows, d_model] to the metric [rows]; with ``tail`` > 1
    (an answer of several tokens fed after the prompt) it gets the last ``tail`` positions,
    [rows, tail, d_model]. ``same_before``: the base and source runs agree at every position before
    it (activation patching between two prompts that first differ there); patches confined to
    those positions are not run. It must be 0 when ``values`` do not come from such a source run
    (ablation). ``kv``: the base run's keys and values at every layer (``ModelProfile.kv_names``) for
    ``base_tokens`` if the caller has them cached; else, where a pass needs them, one more forward
    pass computes them.
    """
    if base_tokens.shape[0] != 1:
        raise ValueError("patch_sweep runs one prompt at a time (batch size 1)")
    seq_len = int(base_tokens.shape[-1])
    out = torch.empty(len(sites))
    known = profile(model)
    if not known.causal:
        same_before = 0  # the argument needs causal attention
    same_before = max(0, min(int(same_before), seq_len))
    passes, skipped = plan_passes(sites, seq_len, same_before=same_before, suffix=known.suffix_supported(seq_len),
                                  chunk_rows=chunk_rows, cfg=model.cfg)
    if kv is None and any(p.start > 0 for p in passes):
        kv = run_with_cache(model, base_tokens, known.kv_names)[1]
    trim = last_mlp_trim(model, tail=tail)
    base_metric: float | None = None
    with torch.no_grad():
        for p in passes:
            metric = readout(run_pass(model, p, base_tokens, sites, values, kv, trim, tail=tail)).float().cpu()
            base_metric = float(metric[0])
            out[p.rows] = metric[1:]
            if progress is not None:
                progress(len(p.rows))
        if skipped:
            if base_metric is None:  # every patch was skipped: one pass for the base run alone
                base_metric = float(readout(run_pass(model, Pass(0), base_tokens, sites, values, None, trim, tail=tail))[0])
            out[skipped] = base_metric
            if progress is not None:
                progress(len(skipped))
    return out
