"""Attention patterns: where each head attends, on a spec's clean and corrupted prompts.

A pattern is softmax(q·k / sqrt(d_head)) over source positions, per destination position
(TransformerLens's ``attn.hook_pattern``: [head, dest, src]); row END (the final position) is
where the metric is read. Grouped-query models share keys across heads, but each query head has
its own pattern, so there are ``n_heads`` patterns per layer.
"""

from __future__ import annotations

from typing import Any

import torch

from patchstudio.engine import hooks as H
from patchstudio.engine.forward import run_with_cache
from patchstudio.engine.inputs import prepare_pairs
from patchstudio.specs import parse_spec

MAX_PROMPTS = 4  # patterns are kept for the first few pairs of a spec: they are per prompt, not averaged


def layer_patterns(model, spec: Any, layer: int, max_prompts: int = MAX_PROMPTS) -> dict[str, Any]:
    """Every head's pattern at ``layer`` on the first ``max_prompts`` pairs' clean and corrupted
    prompts: {"clean": [prompt][head][dest][src], "corrupted": ..., "tokens": {"clean": [...], ...}}."""
    spec = parse_spec(spec)
    n_layers = int(model.cfg.n_layers)
    if not 0 <= layer < n_layers:
        from patchstudio.errors import InputError

        raise InputError(f"layer {layer} does not exist: the model has {n_layers} layers (0 to {n_layers - 1})", field="layer")
    pairs = prepare_pairs(model, spec.prompts[:max_prompts], same_length=False)
    name = H.hook_name("pattern", layer)
    out: dict[str, Any] = {"clean": [], "corrupted": [], "tokens": {"clean": [], "corrupted": []}}
    for pair in pairs:
        for which, tokens, strs in (("clean", pair.clean, pair.clean_str), ("corrupted", pair.corrupted, pair.corrupted_str)):
            _, cache = run_with_cache(model, tokens, [name])
            out[which].append(cache[name][0].to(torch.float32).cpu().tolist())  # [head, dest, src]
            out["tokens"][which].append(list(strs))
    return out
