"""Measure self-repair (the Hydra effect) of a model on held-out IOI prompts.

The same numbers go into a built-in model's metrics.json and are re-measured by the tests.

For each held-out IOI template, ``n_per_template`` prompts (held-out templates x held-out name
pairs, seeded) are run clean, and every single head is mean-ablated in turn: its ``hook_z``
replaced, at every position, by its per-position mean over a *reference set* of
``n_reference`` other prompts of the same template (never the prompt itself). The decomposition
is the engine's (``patchstudio.engine.methods.self_repair``), batched over prompts: with the final
LayerNorm scale held at its clean value s and u = ln_final.w * (W_U[:, IO] - W_U[:, S]),

    f(v) = ((v - mean v) / s) . u,     dDE_c = f(out_c^ablated) - f(out_c^clean)

for each head c (its output at the final position), TE = the change of logit(IO) - logit(S),
DE(target) = dDE_target. The *target* is the head with the largest mean direct effect lost
under its own ablation (-DE largest); the *compensator* is the head whose dDE grows most when
the target is ablated. A paired ablation removes both.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from . import prompts

REPORT_SEED = 4321  # held out: no training or other evaluation seed uses it
REPORT_N_PER_TEMPLATE = 16  # x 4 held-out templates = 64 prompts
REPORT_N_REFERENCE = 32


def _ids(model, words: list[str]) -> Tensor:
    tid = model.tokenizer.convert_tokens_to_ids
    return torch.tensor([tid(w) for w in words])


class _Batch:
    """One template's prompts: tokens, the logit-diff direction per prompt, the reference means."""

    def __init__(self, model, pairs: list[prompts.PromptPair], reference: list[prompts.PromptPair]):
        n_layers = int(model.cfg.n_layers)
        self.tokens = model.to_tokens([p.clean for p in pairs])
        ref_tokens = model.to_tokens([p.clean for p in reference])
        assert ref_tokens.shape[1] == self.tokens.shape[1], "reference prompts must share the template's length"
        names = [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
        _, cache = model.run_with_cache(ref_tokens, names_filter=names)
        self.means = [cache[n].mean(0) for n in names]  # [pos, heads, d_head] per layer
        answer, wrong = _ids(model, [p.answer for p in pairs]), _ids(model, [p.wrong for p in pairs])
        w_u = model.W_U.detach()
        u = (w_u[:, answer] - w_u[:, wrong]).T  # [batch, d_model]
        ln_w = getattr(model.ln_final, "w", None)
        self.u = u * ln_w.detach() if ln_w is not None else u


def _run(model, batch: _Batch, heads: list[tuple[int, int]]) -> dict[str, Tensor]:
    """Final-position head outputs [batch, L, H, d_model], final LN scale [batch], final resid."""
    n_layers = int(model.cfg.n_layers)
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        by_layer[layer].append(head)
    hooks = []
    for layer, hs in by_layer.items():

        def set_z(act: Tensor, hook, hs=hs, value=batch.means[layer]) -> Tensor:
            act = act.clone()
            act[:, :, hs] = value[None, :, hs].to(act.dtype)
            return act

        hooks.append((f"blocks.{layer}.attn.hook_z", set_z))
    names = [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
    names += ["ln_final.hook_scale", f"blocks.{n_layers - 1}.hook_resid_post"]
    with model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(batch.tokens, names_filter=names)
    z = torch.stack([cache[f"blocks.{l}.attn.hook_z"][:, -1] for l in range(n_layers)], 1)  # [b, L, H, dh]
    return {
        "heads": torch.einsum("blhd,lhdm->blhm", z, model.W_O.detach()),
        "scale": cache["ln_final.hook_scale"][:, -1, 0],
        "resid": cache[f"blocks.{n_layers - 1}.hook_resid_post"][:, -1],
    }


def _f(v: Tensor, s: Tensor, u: Tensor) -> Tensor:
    """Direct effect on the logit diff of vectors v [batch, ..., d_model] at LN scale s [batch]."""
    centred = v - v.mean(-1, keepdim=True)
    shape = (-1,) + (1,) * (v.dim() - 1)
    return torch.einsum("b...m,bm->b...", centred / s.reshape(shape), u)


def _effects(model, batch: _Batch, clean: dict[str, Tensor], heads: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """(TE per prompt [n], change of each head's direct effect per prompt [n, L, H])."""
    a = _run(model, batch, heads)
    te = _f(a["resid"], a["scale"], batch.u) - _f(clean["resid"], clean["scale"], batch.u)
    d = _f(a["heads"], clean["scale"], batch.u) - _f(clean["heads"], clean["scale"], batch.u)
    return te, d


@torch.no_grad()
def ablation_effects(
    model, pairs: list[prompts.PromptPair], reference: list[prompts.PromptPair], heads: list[tuple[int, int]]
) -> dict[str, Tensor]:
    """Mean-ablate ``heads`` (means over ``reference``; all prompts of one template) on each clean
    prompt of ``pairs``: per prompt, the total effect ``total_effect`` [n], each head's change of
    direct effect ``head_delta`` [n, L, H], the ablation values ``means`` ({layer: [pos, H, d_head]})."""
    batch = _Batch(model, pairs, reference)
    te, d = _effects(model, batch, _run(model, batch, []), heads)
    return {"total_effect": te, "head_delta": d, "means": dict(enumerate(batch.means))}


@torch.no_grad()
def measure(
    model,
    n_per_template: int = REPORT_N_PER_TEMPLATE,
    n_reference: int = REPORT_N_REFERENCE,
    seed: int = REPORT_SEED,
    templates: tuple[int, ...] = prompts.HELDOUT_TEMPLATES,
) -> dict:
    """Held-out IOI accuracy and logit diff, and the self-repair of the model's strongest head
    (see the module docstring). All figures are means over every prompt of every template."""
    was_training = model.training
    model.eval()
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    all_heads = [(l, h) for l in range(n_layers) for h in range(n_heads)]
    batches = []
    for t in templates:
        pairs = prompts.ioi_pairs(n_per_template, seed=seed + t, split="heldout", template=t)
        reference = prompts.ioi_pairs(n_reference, seed=seed + 1000 + t, split="heldout", template=t)
        batches.append(_Batch(model, pairs, reference))

    clean = [_run(model, b, []) for b in batches]
    clean_diff = torch.cat([_f(c["resid"], c["scale"], b.u) for c, b in zip(clean, batches)])

    def ablate(heads: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        parts = [_effects(model, b, c, heads) for b, c in zip(batches, clean)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    # Every single-head ablation: its own DE, its TE, and the largest rise of another head's DE.
    single = {}
    for head in all_heads:
        te, d = ablate([head])
        single[head] = (te, d)
    de = torch.tensor([[single[(l, h)][1][:, l, h].mean() for h in range(n_heads)] for l in range(n_layers)])
    te_all = torch.tensor([[single[(l, h)][0].mean() for h in range(n_heads)] for l in range(n_layers)])
    target = divmod(int(de.argmin()), n_heads)
    te_t, d_t = single[target]
    growth = d_t.mean(0).clone()
    growth[target] = float("-inf")
    comp = divmod(int(growth.argmax()), n_heads)
    te_c = single[comp][0]
    te_pair, _ = ablate([target, comp])

    def best_growth(head):
        g = single[head][1].mean(0).clone()
        g[head] = float("-inf")
        return float(g.max())

    de_t = float(de[target])
    comp_growth = float(growth[comp])
    drop_t, drop_c, drop_pair = -float(te_t.mean()), -float(te_c.mean()), -float(te_pair.mean())
    model.train(was_training)
    return {
        "eval": {"n_prompts": len(clean_diff), "n_per_template": n_per_template, "n_reference": n_reference,
                 "seed": seed, "templates": list(templates), "ablation": "mean over the reference set, per position"},
        "ioi_accuracy": float((clean_diff > 0).float().mean()),
        "ioi_logit_diff": float(clean_diff.mean()),
        "target": {"layer": target[0], "head": target[1]},
        "target_direct_effect": de_t,
        "target_total_effect": float(te_t.mean()),
        "target_self_repair": float(te_t.mean()) - de_t,
        "compensator": {"layer": comp[0], "head": comp[1]},
        "compensator_growth": comp_growth,
        "compensator_growth_ratio": comp_growth / abs(de_t),
        "compensator_total_effect": float(te_c.mean()),
        "paired_total_effect": float(te_pair.mean()),
        "paired_drop_minus_single_drops": drop_pair - (drop_t + drop_c),
        "direct_effects": [[round(float(v), 6) for v in row] for row in de],
        "total_effects": [[round(float(v), 6) for v in row] for row in te_all],
        "max_growth_by_ablated_head": [[round(best_growth((l, h)), 6) for h in range(n_heads)] for l in range(n_layers)],
    }  # fmt: skip
