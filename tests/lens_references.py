"""Plain-hook references for the logit lens and direct logit attribution, for any model.

Neither uses the engine: every value is read from the model's own forward pass (its own final norm,
unembedding and soft cap), with hooks that put a residual stream where the final one was.

- The lens: the final residual stream (last ``hook_resid_post``) replaced, at every position, by the
  cached stream of one layer; the model's own logits at each position are that layer's reading.
- Direct logit attribution: with the final norm's scale frozen at the run's own (``ln_final.hook_scale``
  set to its cached value), a part's contribution is the logit difference minus the logit
  difference with that part taken out of the final stream at the last position.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from references import Pair

SCALE = "ln_final.hook_scale"


def final_name(model) -> str:
    return f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post"


def stream_names(model) -> list[str]:
    n = int(model.cfg.n_layers)
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(n)] + [final_name(model)]


def per_position(logits: Tensor, metric: str, answer: int, wrong: int, clean_lp: Tensor) -> Tensor:
    """[pos, vocab] logits -> the metric at each position (KL against the clean run's own at each position)."""
    logits = logits.double()
    if metric in ("logit_diff", "normalized_logit_diff"):
        return logits[:, answer] - logits[:, wrong]
    lp = logits.log_softmax(-1)
    if metric == "prob":
        return lp[:, answer].exp()
    if metric == "loss":
        return -lp[:, answer]
    if metric == "kl":
        ref = clean_lp.double()
        return (ref.exp() * (ref - lp)).sum(-1)
    raise AssertionError(metric)


def lens(model, pairs: Sequence[Pair], metric: str, run: str = "clean") -> Tensor:
    """[n_layers + 1, pos]: the mean over the pairs of each layer's stream read as the final one."""
    out = []
    for pair in pairs:
        tokens = pair.clean if run == "clean" else pair.corrupted
        with torch.no_grad():
            clean_lp = model(pair.clean)[0].log_softmax(-1)
            _, cache = model.run_with_cache(tokens)
            rows = []
            for name in stream_names(model):
                stream = cache[name]
                logits = model.run_with_hooks(tokens, fwd_hooks=[(final_name(model), lambda act, hook, s=stream: s.clone())])[0]
                rows.append(per_position(logits, metric, pair.answer[0], pair.wrong[0], clean_lp))
        out.append(torch.stack(rows))
    return torch.stack(out).mean(0).float()


def parts(model, cache: dict) -> dict[str, Tensor]:
    """Every part of the final stream at the last position, by name: 'L0H1', 'L0 attn bias', 'L0 MLP', 'embed', 'pos_embed'."""
    n, heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    out = {}
    for layer in range(n):
        z = cache[f"blocks.{layer}.attn.hook_z"][0, -1]  # [head, d_head]
        for h in range(heads):
            out[f"L{layer}H{h}"] = z[h] @ model.W_O[layer, h]
        if getattr(model, "b_O", None) is not None:
            out[f"L{layer} attn bias"] = model.b_O[layer]
        out[f"L{layer} MLP"] = cache[f"blocks.{layer}.hook_mlp_out"][0, -1]
    out["embed"] = cache["hook_embed"][0, -1]
    if "hook_pos_embed" in cache:
        out["pos_embed"] = cache["hook_pos_embed"][0, -1]
    return {k: v.detach() for k, v in out.items()}


def attribution(model, pairs: Sequence[Pair], run: str = "clean") -> dict[str, float]:
    """Each part's direct contribution to the logit difference (mean over the pairs), plus 'bias'
    (the final stream set to 0 at the last position: the norm's bias and the unembedding's) and
    'metric' (the run's own logit difference)."""
    totals: dict[str, float] = {}
    for pair in pairs:
        tokens = pair.clean if run == "clean" else pair.corrupted
        a, w = pair.answer[0], pair.wrong[0]
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
        frozen = [(SCALE, lambda act, hook, s=cache[SCALE]: s.clone())] if SCALE in cache else []

        def logit_diff(change) -> float:
            def edit(act, hook):
                act = act.clone()
                act[:, -1] = change(act[:, -1])
                return act

            with torch.no_grad():
                logits = model.run_with_hooks(tokens, fwd_hooks=[(final_name(model), edit), *frozen])[0, -1]
            return float(logits[a].double() - logits[w].double())

        full = logit_diff(lambda x: x)
        values = {name: full - logit_diff(lambda x, p=part: x - p) for name, part in parts(model, cache).items()}
        values["bias"] = logit_diff(lambda x: torch.zeros_like(x))
        with torch.no_grad():
            own = model(tokens)[0, -1]
        values["metric"] = float(own[a].double() - own[w].double())
        for name, v in values.items():
            totals[name] = totals.get(name, 0.0) + v / len(pairs)
    return totals


def heads_grid(model, values: dict[str, float]) -> Tensor:
    n, heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    return torch.tensor([[values[f"L{layer}H{h}"] for h in range(heads)] for layer in range(n)])
