"""Regenerates spread_pools.json: pools of 1,024 per-prompt values from the default model, the
populations that test_spread.py's coverage simulation draws prompt sets from.

Plain TransformerLens hooks, batched by template (not the engine: the pools are its inputs' stand-in,
so they must not depend on what they test). Run: python tests/engine/data/make_spread_pools.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from patchstudio.models.prompts import ioi_pairs, reference_prompts
from patchstudio.models.registry import load_model

N = 1024
OUT = Path(__file__).with_name("spread_pools.json")


def _ids(model, words):
    return torch.tensor([int(model.to_tokens(" " + w, prepend_bos=False)[0, 0]) for w in words])


def _logit_diff(logits, answer, wrong):
    last = logits[:, -1]
    rows = torch.arange(last.shape[0])
    return last[rows, answer] - last[rows, wrong]


def patching_pool(model, layer: int, head: int) -> list[float]:
    """Denoising: the head's clean output (hook_z, every position) patched into the corrupted run,
    logit diff of the patched run; 1,024 IOI pairs over every template (batched per template)."""
    pairs = ioi_pairs(N, seed=2024)
    name = f"blocks.{layer}.attn.hook_z"
    out = torch.empty(N)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(pairs):
        by_len.setdefault(model.to_tokens(p.clean).shape[-1], []).append(i)
    for idx in by_len.values():
        clean = model.to_tokens([pairs[i].clean for i in idx])
        corrupted = model.to_tokens([pairs[i].corrupted for i in idx])
        answer, wrong = _ids(model, [pairs[i].answer for i in idx]), _ids(model, [pairs[i].wrong for i in idx])
        _, cache = model.run_with_cache(clean, names_filter=[name])

        def patch(act, hook):
            act = act.clone()
            act[:, :, head] = cache[name][:, :, head]
            return act

        with model.hooks(fwd_hooks=[(name, patch)]):
            logits = model(corrupted)
        out[idx] = _logit_diff(logits, answer, wrong)
    return out.tolist()


def self_repair_pools(model) -> dict[str, list[float]]:
    """L2H2 mean-ablated (its hook_z at every position set to the mean over 64 generated template-0
    prompts) on 1,024 template-0 IOI pairs: the total effect, L2H2's direct effect and MLP2's change
    in direct effect (both read at the clean final LayerNorm scale)."""
    pairs = ioi_pairs(N, seed=2025, template=0)
    ref = model.to_tokens(reference_prompts([p.clean for p in pairs[:1]], 64, seed=0))
    z, mlp, scale = "blocks.2.attn.hook_z", "blocks.2.hook_mlp_out", "ln_final.hook_scale"
    mean = model.run_with_cache(ref, names_filter=[z])[1][z].mean(0)
    tokens = model.to_tokens([p.clean for p in pairs])
    answer, wrong = _ids(model, [p.answer for p in pairs]), _ids(model, [p.wrong for p in pairs])

    def ablate(act, hook):
        act = act.clone()
        act[:, :, 2] = mean[:, 2]
        return act

    names = [z, mlp, scale]
    clean_logits, clean = model.run_with_cache(tokens, names_filter=names)
    with model.hooks(fwd_hooks=[(z, ablate)]):
        abl_logits, abl = model.run_with_cache(tokens, names_filter=names)
    u = (model.W_U[:, answer] - model.W_U[:, wrong]).T * model.ln_final.w  # [batch, d_model]
    s = clean[scale][:, -1]

    def direct(v):  # [batch, d_model] at the final position, through ln_final at the clean scale
        return (((v - v.mean(-1, keepdim=True)) / s) * u).sum(-1)

    head_out = lambda c: c[z][:, -1, 2] @ model.W_O[2, 2]
    return {
        "self_repair_te_L2H2": (_logit_diff(abl_logits, answer, wrong) - _logit_diff(clean_logits, answer, wrong)).tolist(),
        "self_repair_de_L2H2": (direct(head_out(abl)) - direct(head_out(clean))).tolist(),
        "self_repair_mlp2": (direct(abl[mlp][:, -1]) - direct(clean[mlp][:, -1])).tolist(),
    }


def main() -> None:
    model = load_model("default")
    with torch.no_grad():
        pools = {"patching_L2H2": patching_pool(model, 2, 2), "patching_L3H0": patching_pool(model, 3, 0),
                 **self_repair_pools(model)}
    OUT.write_text(json.dumps({k: [round(v, 6) for v in vals] for k, vals in pools.items()}, indent=0) + "\n")


if __name__ == "__main__":
    main()
