"""Training with heads knocked out or singled out: whole-head dropout on ``hook_z`` (zeroed, or
replaced by a batch mean aligned on each row's last token) and training only some heads' q/k/v/o
slices. The hydra recipe uses both, with the consistency loss of objective.py, which is what
plants its backup head (recipes.py).
"""

from __future__ import annotations

import torch

from .recipes import BuiltinRecipe

def aligned_mean(act: torch.Tensor, last: torch.Tensor | None) -> torch.Tensor:
    """The batch mean of act [batch, pos, ...] at each position, positions counted back from each
    row's last context token ``last`` [batch] (None: from the start): IOI texts differ in length
    but end alike ("... S gave a drink to"), as the prompts of one template do."""
    if last is None:
        return act.mean(0, keepdim=True).expand_as(act)
    b, n = act.shape[:2]
    back = last[:, None] - torch.arange(n)[None, :]  # [b, pos]: steps before the last token
    valid = back >= 0
    index = back.clamp(min=0)
    sums = torch.zeros((n, *act.shape[2:]), dtype=act.dtype).index_add_(0, index[valid], act[valid])
    counts = torch.zeros(n, dtype=act.dtype).index_add_(0, index[valid], torch.ones(int(valid.sum()), dtype=act.dtype))
    means = sums / counts.clamp(min=1).reshape(-1, *[1] * (act.dim() - 2))
    return torch.where(valid.reshape(b, n, *[1] * (act.dim() - 2)), means[index], act)


def head_dropout_hooks(model, recipe: BuiltinRecipe, generator: torch.Generator, ends: dict) -> list:
    """Forward hooks on hook_z that ablate whole heads per example (see BuiltinRecipe); they act
    only while the model is in training mode, so evaluation in between sees the whole model."""
    if recipe.head_dropout <= 0 and recipe.layer_dropout <= 0:
        return []
    if recipe.head_dropout_mode not in ("zero", "mean"):
        raise ValueError(f"head_dropout_mode must be 'zero' or 'mean', got {recipe.head_dropout_mode!r}")
    n_layers = int(model.cfg.n_layers)
    layers = tuple(range(n_layers) if recipe.head_dropout_layers is None else recipe.head_dropout_layers)
    p, q, mode = recipe.head_dropout, recipe.layer_dropout, recipe.head_dropout_mode

    n_heads = int(model.cfg.n_heads)
    choice: dict = {}

    def drop(act: torch.Tensor, hook) -> torch.Tensor:  # act: [batch, pos, heads, d_head]
        if not model.training:
            return act
        if recipe.drop_one:
            layer = int(hook.name.split(".")[1])
            if layer == layers[0]:  # one draw per forward pass, shared by the dropout layers
                b = act.shape[0]
                pool = [k * n_heads + h for k in range(len(layers)) for h in (recipe.head_dropout_heads or range(n_heads))]
                which = torch.tensor(pool)[torch.randint(len(pool), (b,), generator=generator)]
                on = torch.rand(b, generator=generator) < p
                choice["which"], choice["on"] = which, on
            k = list(layers).index(layer)
            heads = torch.arange(n_heads)[None, :] + k * n_heads
            dropped = (heads == choice["which"][:, None]) & choice["on"][:, None]
        else:
            dropped = torch.rand(act.shape[0], act.shape[2], generator=generator) < p
        if q > 0:
            dropped = dropped | (torch.rand(act.shape[0], 1, generator=generator) < q)
        dropped = dropped[:, None, :, None]
        if mode == "zero":
            return act.masked_fill(dropped, 0.0)
        return torch.where(dropped, aligned_mean(act.detach(), ends.get("last")), act)

    return [(f"blocks.{layer}.attn.hook_z", drop) for layer in layers]


def head_slices(model, heads: tuple[tuple[int, int], ...]):
    """(parameters, restore): train only the query/key/value/output slices of ``heads``. The
    attention weights of their layers are handed to the optimiser whole; ``restore``, called after
    every step, puts every other entry (weight decay moves them too) back to its starting value."""
    d_head = int(model.cfg.d_head)
    state = model.state_dict(keep_vars=True)
    kept: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []  # (param, trainable mask, start)
    for layer in sorted({l for l, _ in heads}):
        for part in ("q", "k", "v", "o"):
            for kind in ("weight", "bias"):
                name = f"blocks.{layer}.attn.{part}.{kind}"
                if name not in state or (part == "o" and kind == "bias"):  # o's bias is shared by every head
                    continue
                p = state[name]
                mask = torch.zeros_like(p, dtype=torch.bool)
                for l, h in heads:
                    if l != layer:
                        continue
                    cut = slice(h * d_head, (h + 1) * d_head)
                    if part == "o":
                        mask[:, cut] = True  # [d_model, heads * d_head]: the head's columns
                    else:
                        mask[cut] = True  # [heads * d_head, (d_model)]: the head's rows
                p.register_hook(lambda grad, mask=mask: grad * mask)  # Adam and the clipping see these slices only
                kept.append((p, mask, p.detach().clone()))
    params = [p for p, _, _ in kept]
    frozen = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in frozen)

    @torch.no_grad()
    def restore() -> None:
        for p, mask, start in kept:
            p.copy_(torch.where(mask, p, start))

    return params, restore

