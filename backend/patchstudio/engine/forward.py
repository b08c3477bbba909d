"""The hooked forward pass, in one place: early stop, batch widening, caching.

Every method runs the model through these functions, and every call into the model (readouts
included) holds the model's lock (``profile.model_lock``): TransformerLens hooks are attached to the
shared model object, so two threads running hooked passes at once would see each other's hooks.
What a shortcut here may assume about a model (that its final logits are ``ln_final`` and the
unembedding of the final residual, that its last MLP may be trimmed) is asked of its profile.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.fast import trim_hooks
from patchstudio.engine.hooks import HookFn, Hooks, merge
from patchstudio.engine.profile import final_logits, model_lock, own_pass, profile


class StopForward(Exception):
    """Raised by a hook: the rest of the forward pass is not needed."""


def run_hooked(model, tokens: Int[Tensor, "1 pos"], hooks: Hooks) -> None:
    """One forward pass with ``hooks``, holding the model's lock; a hook may end it early by
    raising ``StopForward``."""
    with model_lock(model):
        try:
            with model.hooks(fwd_hooks=H.fwd_hooks(hooks)):
                model(tokens)
        except StopForward:
            pass


@contextmanager
def hooked(model, hooks: Hooks) -> Iterator[None]:
    """The model's lock held, with ``hooks`` attached, for calls other than a forward pass (a
    readout's ``ln_final`` with its scale frozen, say)."""
    with model_lock(model), model.hooks(fwd_hooks=H.fwd_hooks(hooks)):
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
    position is as much work as a block. Checked once per model against the full pass
    (``ModelProfile.final_logits_ok``)."""
    if not hooks and all(H.layer_of(name) is not None for name in names) and profile(model).final_logits_ok:
        return _run_with_cache_final(model, tokens, names)
    logits, cache = own_pass(model, tokens, names, hooks)
    return logits[:, -1, :].float(), cache


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
        logits = final_logits(model, final[:, None, :])[:, -1, :]
    return logits.float(), {name: cache[name] for name in names}


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


def last_mlp_trim(model, *, tail: int = 1) -> Hooks:
    """``fast.trim_hooks`` where they are exact: the model's profile found trimming leaves the
    output unchanged (``ModelProfile.trim_ok``), and one final position is read (a readout of
    several, an answer of several tokens, cannot broadcast back and keeps the full pass)."""
    return trim_hooks(model) if tail == 1 and profile(model).trim_ok else {}
