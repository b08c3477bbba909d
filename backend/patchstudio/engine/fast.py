"""Exact shortcuts for the batched patching core, as hooks on one forward pass.

Nothing here changes a value; each shortcut only avoids computing what is provably the same as
in the base run. ``engine.patching.patch_sweep`` decides which ones apply and builds a ``Pass``.

**Rows join where they diverge.** A pass starts as one row, the unpatched base run (row 0, kept
to the end: its metric is the base metric). The rows of the patches at layer L are appended as
copies of row 0 at the point where they first differ from it, so every row computes only what
follows its patch, and one pass can hold the patches of every layer (the layers below the
earliest one run once, for row 0). The residual stream grows at ``blocks.L.hook_resid_pre`` (or
``hook_resid_post`` for patches there); when the patch sits after the attention (a head's z, the
attention output) or the MLP (its output), the new rows are dropped again at that module's input
and re-added at its output, so the patched layer's attention (and MLP) runs for them once, in row 0.

**Only the suffix that can change.** In a causal model, a patch at position p changes nothing at
positions < p, in any layer; when the two prompts agree up to position f, activation patching
changes nothing before f either. A pass whose patches all start at or after position s runs only
positions s.. of the sequence: the residual stream is cut at ``blocks.0.hook_resid_pre`` (after
the positional embedding), and each attention layer reads the prefix's keys and values from the
base run (a KV cache, as auto-circuit does). Through TransformerLens 4's bridge this is done with
hooks on the attention's projections: the attention input is given its full length (a zero-stride
tensor, nothing is copied), the q/k/v projections read the real suffix, k and v are prefixed
with the base run's cached prefix and q with zeros, so the attention computes over the full
sequence with the right positions (rotary included) and the causal mask it builds itself; z is cut
back to the suffix before the output projection. The prefix queries' rows are wasted (they are a
``s x seq`` corner of the score matrix, not projections) and dropped. Whether a model's attention
takes these hooks is checked once per model against a full pass (``ModelProfile.suffix_ok``);
where it does not, passes run the whole sequence, and only the skipped patches are saved.

**Only the final position at the end.** The last block's MLP is fed the final position alone
(``trim_hooks``), where a one-time check (``ModelProfile.trim_ok``) finds that exact.

Nothing here runs the model: these are the hooks and the cost model; ``engine.patching`` runs the
passes, and ``engine.profile`` checks the shortcuts once per model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import torch
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.hooks import HookFn, Hooks, merge

# Where, inside block L, a patch makes its rows differ from the base row; ordered as the block runs.
RESID_PRE, ATTENTION, Z, ATTN_OUT, MLP_OUT, RESID_POST = range(6)


@lru_cache(maxsize=4096)  # a sweep asks once per patch, over a few dozen distinct hooks
def block_stage(hook: str) -> int:
    """The stage of block L at which a patch at ``hook`` takes effect (unknown hooks: the block's start)."""
    layer = H.layer_of(hook)
    if layer is None:
        return RESID_PRE
    stages = {
        H.resid_pre_name(layer): RESID_PRE,
        H.z_name(layer): Z,
        H.attn_out_name(layer): ATTN_OUT,
        H.mlp_out_name(layer): MLP_OUT,
        H.resid_post_name(layer): RESID_POST,
    }
    return stages.get(hook, ATTENTION if H.in_attention(hook) else RESID_PRE)


def _cat_copies_of_row0(act: Tensor, n: int) -> Tensor:
    return torch.cat([act, act[:1].expand(n, *act.shape[1:])])


def grow(n: int) -> HookFn:
    """Append ``n`` copies of row 0 (the base row) to the batch."""

    def grow_hook(act: Tensor, hook: object) -> Tensor:
        return _cat_copies_of_row0(act, n)

    return grow_hook


def shrink(n: int) -> HookFn:
    """Drop the last ``n`` rows (copies of row 0 that a module need not compute)."""

    def shrink_hook(act: Tensor, hook: object) -> Tensor:
        return act[: act.shape[0] - n]

    return shrink_hook


def row_setter(first: int, mask: Tensor, value: Tensor, pos_axis: int) -> HookFn:
    """Set rows ``first : first + len(mask)`` to ``value`` where ``mask`` is true.

    ``mask`` is [rows, *activation axes] and ``value`` [1, *activation axes], both over the whole
    sequence; the activation may cover only its last positions (a suffix pass, or the final
    position after the last-MLP trim), so both are cut to the positions it holds.
    """
    axis = 1 + pos_axis

    def set_rows(act: Tensor, hook: object) -> Tensor:
        n_pos = act.shape[axis]
        m, v = mask, value
        if m.shape[axis] not in (1, n_pos):
            m = m.narrow(axis, m.shape[axis] - n_pos, n_pos)
        if v.shape[axis] not in (1, n_pos):
            v = v.narrow(axis, v.shape[axis] - n_pos, n_pos)
        out = act.clone()
        rows = slice(first, first + m.shape[0])
        out[rows] = torch.where(m, v.to(act.dtype), act[rows])
        return out

    return set_rows


# --- the suffix pass -------------------------------------------------------------------------


def suffix_hooks(model, start: int, seq_len: int, kv: dict[str, Tensor]) -> tuple[Hooks, Hooks]:
    """(hooks that run before the patches, hooks that run after them) for a pass over positions
    ``start``.. of a ``seq_len``-token prompt, reading positions < ``start`` from ``kv``."""
    # slices are made contiguous: with several rows, act[:, start:] is not, and some output
    # projections (GPT-2's Conv1D) call .view on their input
    before: Hooks = {H.resid_pre_name(0): [lambda act, hook: act[:, start:].contiguous()]}
    after: Hooks = {}
    for layer in range(int(model.cfg.n_layers)):
        stash: list[Tensor] = []

        def attn_in(act: Tensor, hook: object, stash=stash) -> Tensor:
            stash[:] = [act]  # the real suffix, read by the projections below
            return act.new_zeros(()).expand(act.shape[0], seq_len, *act.shape[2:])

        def projection_in(act: Tensor, hook: object, stash=stash) -> Tensor:
            return stash[0]

        def prefix_zeros(act: Tensor, hook: object) -> Tensor:  # queries of the prefix: unused
            return torch.cat([act.new_zeros(()).expand(act.shape[0], start, *act.shape[2:]), act], dim=1)

        def prefix_from(cached: Tensor) -> HookFn:
            prefix = cached[:, :start]

            def prefix_cached(act: Tensor, hook: object) -> Tensor:
                return torch.cat([prefix.expand(act.shape[0], *prefix.shape[1:]).to(act.dtype), act], dim=1)

            return prefix_cached

        before[H.attn_in_name(layer)] = [attn_in]
        for name in H.qkv_in_names(layer):
            before[name] = [projection_in]
        before[H.q_name(layer)] = [prefix_zeros]
        before[H.k_name(layer)] = [prefix_from(kv[H.k_name(layer)])]
        before[H.v_name(layer)] = [prefix_from(kv[H.v_name(layer)])]
        after[H.z_name(layer)] = [lambda act, hook: act[:, start:].contiguous()]
    return before, after


def _trim_to_final(act: Tensor, hook: object) -> Tensor:
    return act[:, -1:, :]


def trim_hooks(model) -> Hooks:
    """A hook that feeds only the final position to the last block's MLP.

    In a sequential block the MLP reads resid_mid (TL 4: ``ln2``'s input) and its output is added
    to the residual stream, so one position in gives the final position's output and the addition
    broadcasts it. Exact only where the profile's check says so (``ModelProfile.trim_ok``: not
    for parallel attention and MLP, GPT-NeoX and GPT-J, which have no resid_mid hook) and for one
    final position (an answer of several tokens cannot broadcast): ``forward.last_mlp_trim``.
    """
    return {H.resid_mid_name(int(model.cfg.n_layers) - 1): [_trim_to_final]}


# --- the cost of a pass, for planning ---------------------------------------------------------


def layer_flops(cfg, n_query: int, seq: int, stage: int = RESID_PRE, last: bool = False) -> int:
    """FLOPs (2 per multiply-add) of one block for one row over ``n_query`` positions of a
    ``seq``-token prompt, from the patch ``stage`` on (the last block's MLP: the final position)."""
    d, d_attn, d_mlp = int(cfg.d_model), int(cfg.n_heads) * int(cfg.d_head), int(cfg.d_mlp or 4 * cfg.d_model)
    d_kv = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) * int(cfg.d_head)
    projections = 2 * n_query * d * (d_attn + 2 * d_kv)
    scores = 2 * 2 * n_query * seq * d_attn
    out = 2 * n_query * d_attn * d
    mlp = 2 * (3 if getattr(cfg, "gated_mlp", False) else 2) * (1 if last else n_query) * d * d_mlp
    if stage >= MLP_OUT:
        return 0
    if stage >= ATTN_OUT:
        return mlp
    if stage >= Z:
        return out + mlp
    return projections + scores + out + mlp


def row_flops(cfg, layer: int, stage: int, start: int, seq: int) -> int:
    """FLOPs one patched row needs: its block from the patch on, then every later block, over the
    positions ``start``.. of the prompt."""
    n, n_query = int(cfg.n_layers), seq - start
    own = 0 if stage == RESID_POST else layer_flops(cfg, n_query, seq, stage, last=layer == n - 1)
    return own + sum(layer_flops(cfg, n_query, seq, last=later == n - 1) for later in range(layer + 1, n))


# A pass costs more than its rows: every block's weights are read once (memory-bound for small
# batches; about 6 FLOPs' time per byte on a CPU, its peak FLOP/s over its memory bandwidth) and
# the bridge's Python runs once per block (about 1 ms, some 60 MFLOPs' time).
FLOPS_PER_WEIGHT_BYTE = 6
PYTHON_FLOPS_PER_BLOCK = 60e6


def pass_overhead_flops(cfg) -> float:
    d, d_attn, d_mlp = int(cfg.d_model), int(cfg.n_heads) * int(cfg.d_head), int(cfg.d_mlp or 4 * cfg.d_model)
    d_kv = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) * int(cfg.d_head)
    params = d * (2 * d_attn + 2 * d_kv) + (3 if getattr(cfg, "gated_mlp", False) else 2) * d * d_mlp
    return int(cfg.n_layers) * (4 * params * FLOPS_PER_WEIGHT_BYTE + PYTHON_FLOPS_PER_BLOCK)


# --- one pass ----------------------------------------------------------------------------------


@dataclass
class Pass:
    """One forward pass: row 0 is the base run, then one row per patch.

    ``start`` is the first position computed (0: the whole sequence); every patch of the pass
    leaves positions < ``start`` unchanged. ``rows`` are indices into the sweep's sites, in row
    order: sorted by layer, and by hook within a layer (``ordered`` does that).
    """

    start: int
    rows: list[int] = field(default_factory=list)

    @staticmethod
    def ordered(sites: Sequence[H.Site], indices: Sequence[int]) -> list[int]:
        hook_rank: dict[str, int] = {}
        for i in indices:
            hook_rank.setdefault(sites[i].hook, len(hook_rank))
        return sorted(indices, key=lambda i: (sites[i].layer, hook_rank[sites[i].hook], i))

    def hooks(self, model, sites: Sequence[H.Site], values: dict[str, Tensor], seq_len: int,
              kv: dict[str, Tensor] | None, trim: Hooks) -> Hooks:
        growth: Hooks = {}
        setters: Hooks = {}
        row = 1
        layers = dict.fromkeys(sites[i].layer for i in self.rows)
        for layer in layers:
            idx = [i for i in self.rows if sites[i].layer == layer]
            n = len(idx)
            stage = min(block_stage(sites[i].hook) for i in idx)
            if stage == RESID_POST:
                growth[H.resid_post_name(layer)] = [grow(n)]
            else:
                growth[H.resid_pre_name(layer)] = [grow(n)]
                # the new rows equal row 0 up to the patch: the modules before it run without them
                if stage >= Z:
                    growth[H.attn_in_name(layer)] = [shrink(n)]
                    growth[H.z_name(layer) if stage == Z else H.attn_out_name(layer)] = [grow(n)]
                if stage == MLP_OUT:
                    growth[H.mlp_in_name(layer)] = [shrink(n)]
                    growth[H.mlp_out_name(layer)] = [grow(n)]
            for hook_name in dict.fromkeys(sites[i].hook for i in idx):
                members = [i for i in idx if sites[i].hook == hook_name]
                value = values[hook_name]
                shape = torch.broadcast_shapes(*(sites[i].mask.shape for i in members))
                mask = torch.stack([sites[i].mask.expand(shape) for i in members]).to(value.device)
                setters.setdefault(hook_name, []).append(row_setter(row, mask, value, H.position_axis(hook_name)))
                row += len(members)
        before: Hooks = {}
        after: Hooks = {}
        if self.start > 0:
            if kv is None:
                raise ValueError("a suffix pass needs the base run's keys and values")
            before, after = suffix_hooks(model, self.start, seq_len, kv)
        return merge(growth, before, setters, after, trim)
