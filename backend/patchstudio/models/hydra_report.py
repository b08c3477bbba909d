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

How the compensator responds (``backup_effects``, summarised by ``backup_response``), per prompt, since the means hide the spread:
its growth as a share of |DE(target)| and TE/DE under mean ablation (quartiles over the prompts);
a graded probe, the target's output at the final position scaled by alpha (1 = clean, 0 = none)
with nothing else changed, and the compensator's growth at each alpha; and resample ablation (the
target's ``hook_z`` from another reference prompt, ``RESAMPLE_DRAWS`` seeded draws per prompt).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from . import prompts

REPORT_SEED = 4321  # held out: no training or other evaluation seed uses it
REPORT_N_PER_TEMPLATE = 16  # x 4 held-out templates = 64 prompts
REPORT_N_REFERENCE = 32
GRADED_ALPHAS = (0.75, 0.5, 0.25, 0.0)  # the target's final-position output scaled by these
RESAMPLE_DRAWS = 8  # resample ablation: reference prompts drawn per prompt, averaged


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
        self.reference = [cache[n] for n in names]  # [reference, pos, heads, d_head] per layer
        self.means = [z.mean(0) for z in self.reference]  # [pos, heads, d_head] per layer
        answer, wrong = _ids(model, [p.answer for p in pairs]), _ids(model, [p.wrong for p in pairs])
        w_u = model.W_U.detach()
        u = (w_u[:, answer] - w_u[:, wrong]).T  # [batch, d_model]
        ln_w = getattr(model.ln_final, "w", None)
        self.u = u * ln_w.detach() if ln_w is not None else u


def _run(model, batch: _Batch, heads: list[tuple[int, int]], replace=None) -> dict[str, Tensor]:
    """Final-position head outputs [batch, L, H, d_model], final LN scale [batch], final resid, with
    ``heads``' hook_z replaced: by ``replace(layer, hs, z)`` (z: [batch, pos, len(hs), d_head]),
    default their mean over the reference prompts."""
    n_layers = int(model.cfg.n_layers)
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        by_layer[layer].append(head)
    hooks = []
    for layer, hs in by_layer.items():

        def set_z(act: Tensor, hook, layer=layer, hs=hs) -> Tensor:
            act = act.clone()
            value = batch.means[layer][None, :, hs] if replace is None else replace(layer, hs, act[:, :, hs])
            act[:, :, hs] = value.to(act.dtype)
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


def _effects(model, batch: _Batch, clean: dict[str, Tensor], heads: list[tuple[int, int]], replace=None) -> tuple[Tensor, Tensor]:
    """(TE per prompt [n], change of each head's direct effect per prompt [n, L, H])."""
    a = _run(model, batch, heads, replace)
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


def _quartiles(x: Tensor) -> list[float]:
    """The 25th, 50th and 75th percentiles over prompts (linear interpolation)."""
    q = torch.quantile(x.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return [round(float(v), 6) for v in q]


@torch.no_grad()
def backup_effects(
    model, batches: list[_Batch], clean: list[dict[str, Tensor]], target: tuple[int, int], backup: tuple[int, int],
    seed: int, alphas: tuple[float, ...] = GRADED_ALPHAS, draws: int = RESAMPLE_DRAWS,
) -> dict[str, Tensor]:
    """Per prompt of ``batches``: TE, the target's DE and ``backup``'s growth (change of its direct
    effect) under mean ablation of the target ([n] each: ``total_effect``, ``direct_effect``,
    ``growth``); the target's DE and the backup's growth with the target's final-position output
    scaled by each alpha ([alphas, n]: ``graded_direct_effect``, ``graded_growth``); and TE, DE and
    growth under resample ablation, the mean over ``draws`` seeded draws (``resample_*``)."""
    layer, head = target

    def over(make) -> tuple[Tensor, Tensor, Tensor]:  # make(batch) -> a replace function, or None: the mean
        parts = [_effects(model, b, c, [target], make(b)) for b, c in zip(batches, clean)]
        d = torch.cat([p[1] for p in parts])
        return torch.cat([p[0] for p in parts]), d[:, layer, head], d[:, backup[0], backup[1]]

    def scaled(alpha: float):
        def replace(_layer: int, _hs: list[int], z: Tensor) -> Tensor:
            z = z.clone()
            z[:, -1] = alpha * z[:, -1]
            return z

        return replace

    def resampled(batch: _Batch, draw: int):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + draw)
        rows = torch.randint(batch.reference[layer].shape[0], (batch.tokens.shape[0],), generator=generator)
        return lambda l, hs, z: batch.reference[l][rows][:, :, hs]

    te, de, growth = over(lambda b: None)
    graded = [over(lambda b, a=a: scaled(a)) for a in alphas]
    drawn = [over(lambda b, k=k: resampled(b, k)) for k in range(draws)]
    r_te, r_de, r_growth = (torch.stack([d[i] for d in drawn]).mean(0) for i in range(3))
    return {"total_effect": te, "direct_effect": de, "growth": growth,
            "graded_direct_effect": torch.stack([g[1] for g in graded]), "graded_growth": torch.stack([g[2] for g in graded]),
            "resample_total_effect": r_te, "resample_direct_effect": r_de, "resample_growth": r_growth}  # fmt: skip


def effects_on(model, groups: list[tuple[list[prompts.PromptPair], list[prompts.PromptPair]]], target: tuple[int, int],
               backup: tuple[int, int], seed: int = 0, **options) -> dict[str, Tensor]:
    """``backup_effects`` on groups of (prompt pairs, their reference prompts), each group of one
    template: the prompts of all groups in order."""
    batches = [_Batch(model, pairs, reference) for pairs, reference in groups]
    return backup_effects(model, batches, [_run(model, b, []) for b in batches], target, backup, seed, **options)


def backup_response(effects: dict[str, Tensor], alphas: tuple[float, ...] = GRADED_ALPHAS, draws: int = RESAMPLE_DRAWS) -> dict:
    """What metrics.json keeps of ``backup_effects``: per-prompt quartiles of the backup's growth /
    |DE| and of TE / DE (mean and resample ablation), the graded probe's means and the quartiles of
    growth / DE lost at each alpha, resample ablation's means."""
    x = effects
    return {
        "compensator_growth_ratio_quartiles": _quartiles(x["growth"] / x["direct_effect"].abs()),
        "te_over_de_quartiles": _quartiles(x["total_effect"] / x["direct_effect"]),
        "graded_alphas": list(alphas),
        "graded_target_direct_effect": [float(v) for v in x["graded_direct_effect"].mean(1)],
        "graded_compensator_growth": [float(v) for v in x["graded_growth"].mean(1)],
        "graded_growth_ratio_quartiles": [_quartiles(g / d.abs()) for g, d in zip(x["graded_growth"], x["graded_direct_effect"])],
        "resample_draws": draws,
        "resample_total_effect": float(x["resample_total_effect"].mean()),
        "resample_direct_effect": float(x["resample_direct_effect"].mean()),
        "resample_compensator_growth": float(x["resample_growth"].mean()),
        "resample_compensator_growth_ratio_quartiles": _quartiles(x["resample_growth"] / x["resample_direct_effect"].abs()),
        "resample_te_over_de_quartiles": _quartiles(x["resample_total_effect"] / x["resample_direct_effect"]),
    }


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
    response = backup_response(backup_effects(model, batches, clean, target, comp, seed))
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
        **response,
    }  # fmt: skip
