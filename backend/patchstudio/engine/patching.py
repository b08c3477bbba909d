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

import threading
import weakref
from collections import defaultdict
from typing import Callable, Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from patchstudio.engine.hooks import Site, resid_post_name, resid_pre_name

Progress = Callable[[int], None]
HookFn = Callable[[Tensor, object], Tensor | None]

_LOCKS: "weakref.WeakKeyDictionary[object, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The lock every hooked forward pass on ``model`` holds.

    TransformerLens hooks are attached to the (shared) model object, so two threads running hooked
    passes at once would see each other's hooks. Holding this lock makes that impossible.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


class _StopForward(Exception):
    """Raised by the read-out hook: the rest of the forward pass is not needed."""


def _compose(fns: Sequence[HookFn]) -> HookFn:
    def hook(act: Tensor, hook: object) -> Tensor:
        for fn in fns:
            out = fn(act, hook)
            if out is not None:
                act = out
        return act

    return hook


def run_hooked(model, tokens: Int[Tensor, "1 pos"], hooks: dict[str, list[HookFn]]) -> None:
    """One forward pass with ``hooks`` (several per hook point run in order), holding the model's
    lock; a hook may end the pass early by raising ``_StopForward``."""
    fwd_hooks = [(name, _compose(fns)) for name, fns in hooks.items()]
    with model_lock(model):
        try:
            with model.hooks(fwd_hooks=fwd_hooks):
                model(tokens)
        except _StopForward:
            pass


def run_to_final_resid(
    model, tokens: Int[Tensor, "1 pos"], hooks: dict[str, list[HookFn]], *, grad: bool = False
) -> Float[Tensor, "rows d_model"]:
    """Run ``tokens`` with ``hooks`` and return the residual stream at the final position after the
    last block, without computing the unembedding. With ``grad`` the result keeps its autograd graph."""
    captured: list[Tensor] = []

    def read_out(act: Tensor, hook: object) -> None:
        captured.append(act[:, -1, :] if grad else act[:, -1, :].clone())
        raise _StopForward

    all_hooks: dict[str, list[HookFn]] = defaultdict(list)
    for name, fns in hooks.items():
        all_hooks[name].extend(fns)
    all_hooks[resid_post_name(model.cfg.n_layers - 1)].append(read_out)
    run_hooked(model, tokens, all_hooks)
    if not captured:  # pragma: no cover - the read-out hook always fires on a full pass
        raise RuntimeError("the read-out hook did not fire")
    return captured[0]


_TRIM_OK: "weakref.WeakKeyDictionary[object, bool]" = weakref.WeakKeyDictionary()


def _trim_to_final(act: Tensor, hook: object) -> Tensor:
    return act[:, -1:, :]


def _last_mlp_trim(model, tokens: Tensor) -> dict[str, list[HookFn]]:
    """A hook that feeds only the final position to the last block's MLP, where that is exact.

    In a pre-LN block the MLP reads resid_mid (TL 4: ``ln2``'s input) and its output is added to
    the residual stream, so one position in gives the final position's output and the addition
    broadcasts it. Blocks built otherwise (parallel attention and MLP, no resid_mid hook) fail the
    one-time check and keep the full pass.
    """
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_mid"
    ok = _TRIM_OK.get(model)
    if ok is None:
        try:
            with torch.no_grad():
                full = run_to_final_resid(model, tokens, {})
                trimmed = run_to_final_resid(model, tokens, {name: [_trim_to_final]})
            ok = trimmed.shape == full.shape and torch.allclose(trimmed, full, atol=1e-5, rtol=1e-5)
        except Exception:  # any architecture that cannot take it just runs in full
            ok = False
        _TRIM_OK[model] = ok
    return {name: [_trim_to_final]} if ok else {}


def _widen(rows: int) -> HookFn:
    def widen(act: Tensor, hook: object) -> Tensor:
        return act.expand(rows, *act.shape[1:]).clone()

    return widen


def _setter(mask: Tensor, value: Tensor) -> HookFn:
    def set_patch(act: Tensor, hook: object) -> Tensor:
        return torch.where(mask, value.to(act.dtype), act)

    return set_patch


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
) -> Float[Tensor, "n_sites"]:
    """The metric of the base run with each site patched to ``values[site.hook]``, one per site.

    ``values`` maps each hook to the value it is patched to (batch axis of size 1). ``readout``
    maps final-position residual vectors [rows, d_model] to the metric [rows].
    """
    if base_tokens.shape[0] != 1:
        raise ValueError("patch_sweep runs one prompt at a time (batch size 1)")
    out = torch.empty(len(sites))
    by_layer: dict[int, list[int]] = defaultdict(list)
    for i, site in enumerate(sites):
        by_layer[site.layer].append(i)
    device = base_tokens.device
    last = int(model.cfg.n_layers) - 1
    trim = _last_mlp_trim(model, base_tokens)
    with torch.no_grad():
        for layer in sorted(by_layer):
            for chunk in _chunks(by_layer[layer], max(1, chunk_rows)):
                rows = len(chunk)
                hooks: dict[str, list[HookFn]] = defaultdict(list)
                hooks[resid_pre_name(layer)].append(_widen(rows))
                if layer < last:  # patches inside the last block see it whole
                    for name, fns in trim.items():
                        hooks[name].extend(fns)
                by_hook: dict[str, list[tuple[int, Tensor]]] = defaultdict(list)
                for row, i in enumerate(chunk):
                    by_hook[sites[i].hook].append((row, sites[i].mask))
                for name, entries in by_hook.items():
                    shape = torch.broadcast_shapes(*(m.shape for _, m in entries))
                    mask = torch.zeros((rows, *shape), dtype=torch.bool)
                    mask[[r for r, _ in entries]] = torch.stack([m.expand(shape) for _, m in entries])
                    hooks[name].append(_setter(mask.to(device), values[name]))
                resid = run_to_final_resid(model, base_tokens, hooks)
                out[list(chunk)] = readout(resid).float().cpu()
                if progress is not None:
                    progress(rows)
    return out
