"""The hooked forward pass, in one place: the model's lock, early stop, batch widening, caching.

Every method runs the model through these functions, and every call into the model (readouts
included) holds the model's lock: TransformerLens hooks are attached to the shared model object,
so two threads running hooked passes at once would see each other's hooks.
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from patchstudio.engine import hooks as H

HookFn = Callable[[Tensor, object], Tensor | None]
Hooks = dict[str, list[HookFn]]

_LOCKS: "weakref.WeakKeyDictionary[object, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The (re-entrant) lock every call into ``model`` holds."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


class StopForward(Exception):
    """Raised by a hook: the rest of the forward pass is not needed."""


def compose(fns: Sequence[HookFn]) -> HookFn:
    """Several hooks at one hook point, run in order; each may return a replacement activation."""

    def hook(act: Tensor, hook: object) -> Tensor:
        for fn in fns:
            out = fn(act, hook)
            if out is not None:
                act = out
        return act

    return hook


def merge(*hook_sets: Hooks) -> Hooks:
    """Hook sets combined; at a shared hook point, the earlier set's hooks run first."""
    out: Hooks = defaultdict(list)
    for hooks in hook_sets:
        for name, fns in hooks.items():
            out[name].extend(fns)
    return out


def run_hooked(model, tokens: Int[Tensor, "1 pos"], hooks: Hooks) -> None:
    """One forward pass with ``hooks``, holding the model's lock; a hook may end it early by
    raising ``StopForward``."""
    fwd_hooks = [(name, compose(fns)) for name, fns in hooks.items()]
    with model_lock(model):
        try:
            with model.hooks(fwd_hooks=fwd_hooks):
                model(tokens)
        except StopForward:
            pass


@contextmanager
def hooked(model, hooks: Hooks) -> Iterator[None]:
    """The model's lock held, with ``hooks`` attached, for calls other than a forward pass (a
    readout's ``ln_final`` with its scale frozen, say)."""
    fwd_hooks = [(name, compose(fns)) for name, fns in hooks.items()]
    with model_lock(model), model.hooks(fwd_hooks=fwd_hooks):
        yield


def run_to_final_resid(
    model, tokens: Int[Tensor, "1 pos"], hooks: Hooks, *, grad: bool = False, tail: int = 1
) -> Float[Tensor, "rows d_model"]:
    """Run ``tokens`` with ``hooks`` and return the residual stream at the final position after the
    last block, without computing the unembedding. With ``grad`` the result keeps its autograd graph.
    With ``tail`` > 1: the last ``tail`` positions, [rows, tail, d_model] (teacher-forced answers)."""
    captured: list[Tensor] = []

    def read_out(act: Tensor, hook: object) -> None:
        out = act[:, -1, :] if tail == 1 else act[:, -tail:, :]
        captured.append(out if grad else out.clone())
        raise StopForward

    run_hooked(model, tokens, merge(hooks, {H.resid_post_name(model.cfg.n_layers - 1): [read_out]}))
    if not captured:  # pragma: no cover - the read-out hook always fires on a full pass
        raise RuntimeError("the read-out hook did not fire")
    return captured[0]


def run_with_cache(model, tokens: Int[Tensor, "1 pos"], names: Sequence[str], hooks: Hooks | None = None):
    """(final-position logits [1, vocab] as float, {name: activation}) of a gradient-free pass.

    Only the final position is unembedded (a sweep reads no other) when every cached name lies
    inside the blocks and no hooks are given; on a GPT-2-sized model the full unembedding of every
    position is as much work as a block. Checked once per model against the full pass."""
    if not hooks and all(name.startswith("blocks.") for name in names) and _final_logits_ok(model, tokens):
        return _run_with_cache_final(model, tokens, names)
    fwd_hooks = [(name, compose(fns)) for name, fns in (hooks or {}).items()]
    with model_lock(model), torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
        logits, cache = model.run_with_cache(tokens, names_filter=list(names))
    return logits[:, -1, :].float(), {name: cache[name] for name in names}


def run_with_cache_pair(model, a: Int[Tensor, "1 pos"], b: Int[Tensor, "1 pos"], names: Sequence[str]):
    """``run_with_cache`` of two prompts, as one batch of two when they have one length (one pass
    with matmuls twice as tall: at a few dozen tokens a batch-1 pass runs far below the machine's
    matmul rate). Returns the two (logits, cache) pairs, each with a batch axis of 1."""
    if a.shape != b.shape or a.shape[0] != 1:
        return run_with_cache(model, a, names), run_with_cache(model, b, names)
    logits, cache = run_with_cache(model, torch.cat([a, b]), names)
    return ((logits[:1], {name: value[:1] for name, value in cache.items()}),
            (logits[1:], {name: value[1:] for name, value in cache.items()}))  # fmt: skip


def _run_with_cache_final(model, tokens: Int[Tensor, "1 pos"], names: Sequence[str]):
    cache: dict[str, Tensor] = {}

    def keep(name: str) -> HookFn:
        def keep_hook(act: Tensor, hook: object) -> None:  # by the asked name (the bridge has aliases)
            cache[name] = act.detach()

        return keep_hook

    with model_lock(model), torch.no_grad():
        final = run_to_final_resid(model, tokens, {name: [keep(name)] for name in names})
        logits = model.unembed(model.ln_final(final[:, None, :]))[:, -1, :]
    return logits.float(), {name: cache[name] for name in names}


_FINAL_LOGITS_OK: "weakref.WeakKeyDictionary[object, bool]" = weakref.WeakKeyDictionary()


def _final_logits_ok(model, tokens: Tensor) -> bool:
    """Whether ln_final and the unembedding of the final residual give the model's own final logits
    (not so where the forward pass does more after them, e.g. a logit soft cap)."""
    ok = _FINAL_LOGITS_OK.get(model)
    if ok is None:
        ok = False
        try:
            with model_lock(model), torch.no_grad():
                full = model(tokens)[:, -1, :].float()
                cut, _ = _run_with_cache_final(model, tokens, [])
            ok = cut.shape == full.shape and torch.allclose(cut, full, atol=1e-4, rtol=1e-5)
        except Exception:  # anything that does not take it keeps the model's own pass
            ok = False
        _FINAL_LOGITS_OK[model] = ok
    return ok


def widen(rows: int) -> HookFn:
    """A hook that turns a batch of 1 into ``rows`` identical rows (the layers below run once)."""

    def widen_hook(act: Tensor, hook: object) -> Tensor:
        return act.expand(rows, *act.shape[1:]).clone()

    return widen_hook


def setter(mask: Tensor, value: Tensor) -> HookFn:
    """A hook that sets the activation to ``value`` where ``mask`` is true (both broadcast per row)."""

    def set_patch(act: Tensor, hook: object) -> Tensor:
        return torch.where(mask.to(act.device), value.to(act.dtype), act)

    return set_patch


_TRIM_OK: "weakref.WeakKeyDictionary[object, bool]" = weakref.WeakKeyDictionary()


def _trim_to_final(act: Tensor, hook: object) -> Tensor:
    return act[:, -1:, :]


def has_hook(model, name: str) -> bool:
    return name in getattr(model, "hook_dict", {})


def same_within_dtype(a: Tensor, b: Tensor) -> bool:
    """Equal up to rounding: 1e-5 in float32, a few units of the last place in half precision."""
    eps = torch.finfo(a.dtype).eps if a.is_floating_point() else 0.0
    tol = max(1e-5, 8 * eps)
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)


def last_mlp_trim(model, tokens: Tensor, tail: int = 1) -> Hooks:
    """A hook that feeds only the final position to the last block's MLP, where that is exact.

    In a sequential block the MLP reads resid_mid (TL 4: ``ln2``'s input) and its output is added
    to the residual stream, so one position in gives the final position's output and the addition
    broadcasts it. A readout of several final positions (``tail`` > 1: an answer of several
    tokens) cannot broadcast, so it keeps the full pass. Blocks built otherwise are detected from
    the model: with parallel attention and MLP there is no resid_mid hook (GPT-NeoX, GPT-J), and
    anything else that a trimmed MLP input would change fails a one-time check against a full
    pass; those keep the full (exact, slower) pass.
    """
    name = H.resid_mid_name(model.cfg.n_layers - 1)
    ok = _TRIM_OK.get(model)
    if ok is None:
        ok = has_hook(model, name) and not getattr(model.cfg, "parallel_attn_mlp", False)
        if ok:
            try:
                with torch.no_grad():
                    full = run_to_final_resid(model, tokens, {})
                    trimmed = run_to_final_resid(model, tokens, {name: [_trim_to_final]})
                ok = same_within_dtype(trimmed, full)
            except (RuntimeError, ValueError, IndexError):  # shapes the block cannot take: full pass
                ok = False
        _TRIM_OK[model] = ok
    return {name: [_trim_to_final]} if ok and tail == 1 else {}


_RESID_MID_OK: "weakref.WeakKeyDictionary[object, bool]" = weakref.WeakKeyDictionary()


def resid_mid_is_stream(model) -> bool:
    """Whether the block has a residual stream between attention and MLP that equals
    resid_pre + attn_out, so that patching it through attn_out is exact (checked once per model).
    Parallel blocks (GPT-NeoX) have no such point."""
    ok = _RESID_MID_OK.get(model)
    if ok is None:
        mid = H.resid_mid_name(0)
        ok = has_hook(model, mid) and not getattr(model.cfg, "parallel_attn_mlp", False)
        if ok:
            n = min(8, int(model.cfg.n_ctx))
            tokens = (torch.arange(n) % int(model.cfg.d_vocab)).reshape(1, n).to(model.cfg.device)
            _, cache = run_with_cache(model, tokens, [mid, H.resid_pre_name(0), H.hook_name("attn_out", 0)])
            ok = same_within_dtype(cache[mid], cache[H.resid_pre_name(0)] + cache[H.hook_name("attn_out", 0)])
        _RESID_MID_OK[model] = ok
    return ok
