"""Self-repair on the default model: the decomposition is exact and each part equals a hand computation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from patchstudio.engine.run import run
from patchstudio.engine.reference import REFERENCE_SIZE
from patchstudio.engine.stats import t_quantile
from references import resample_draws
from patchstudio.models.prompts import ioi_pairs, reference_prompts
from patchstudio.specs import parse_spec

PAIRS = [p.to_dict() for p in ioi_pairs(3, seed=5, template=0)]
TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    from patchstudio.models.registry import load_model

    return load_model("default")


def _ids(model, pair):
    return (model.to_tokens(pair["clean"]), model.to_tokens(pair["corrupted"]),
            int(model.to_tokens(" " + pair["answer"], prepend_bos=False)[0, 0]),
            int(model.to_tokens(" " + pair["wrong"], prepend_bos=False)[0, 0]))


def _plain(model, heads, kind="mean", draw=0):
    """Per prompt: (clean logit diff, ablated logit diff, clean cache, ablated cache), heads ablated by plain hooks.

    Mean ablation averages over the reference set generated from the prompts' template ('auto');
    resample takes that set's prompt of the documented rule's draw number ``draw`` (8 draws)."""
    tokens = [_ids(model, p) for p in PAIRS]
    generated = reference_prompts([p["clean"] for p in PAIRS], 2 * REFERENCE_SIZE, seed=0)[:REFERENCE_SIZE]
    pool = [model.to_tokens(t) for t in generated]
    out = []
    for i, (clean, corrupted, ans, wrong) in enumerate(tokens):
        hooks = []
        for layer in sorted({l for l, _ in heads}):
            name = f"blocks.{layer}.attn.hook_z"
            with torch.no_grad():  # one batch: every reference prompt has the same length
                acts = list(model.run_with_cache(torch.cat(pool), names_filter=[name])[1][name].split(1))
            if kind == "resample":
                own = {j for j, t in enumerate(pool) if torch.equal(t, clean) or torch.equal(t, corrupted)}
                repl = acts[resample_draws(len(pool), i, 0, 8, exclude=own)[draw]]
            else:
                repl = torch.stack(acts).mean(0) if kind == "mean" else torch.zeros_like(acts[0])
            hs = [h for l, h in heads if l == layer]

            def hook(act, hook, repl=repl, hs=hs):
                act = act.clone()
                act[:, :, hs] = repl[:, :, hs]
                return act

            hooks.append((name, hook))
        with torch.no_grad():
            clean_logits, clean_cache = model.run_with_cache(clean)
            with model.hooks(fwd_hooks=hooks):
                abl_logits, abl_cache = model.run_with_cache(clean)
        out.append((float(clean_logits[0, -1, ans] - clean_logits[0, -1, wrong]),
                    float(abl_logits[0, -1, ans] - abl_logits[0, -1, wrong]), clean_cache, abl_cache, ans, wrong))
    return out


@pytest.mark.parametrize("kind", ["mean", "zero"])
def test_total_and_direct_effects_equal_hand_computations(model, kind):
    target = (3, 5)
    result = run(model, {"method": "self_repair", "ablation": kind, "prompts": PAIRS, "targets": [{"layer": 3, "head": 5}]})
    runs = _plain(model, [target], kind)
    te = sum(a - c for c, a, *_ in runs) / len(runs)
    assert result.extras["total_effect"] == pytest.approx(te, abs=TOL)
    assert result.extras["ablated"] == pytest.approx(result.clean + te, abs=TOL)
    # direct effect by hand: the target's output change through ln_final (clean scale) and the unembedding
    de = 0.0
    for _, _, cc, ac, ans, wrong in runs:
        u = model.ln_final.w * (model.W_U[:, ans] - model.W_U[:, wrong])
        name = "blocks.3.attn.hook_z"
        dv = (ac[name][0, -1, 5] - cc[name][0, -1, 5]) @ model.W_O[3, 5]
        de += float((((dv - dv.mean()) / cc["ln_final.hook_scale"][0, -1, 0]) @ u).detach())
    de /= len(runs)
    assert result.extras["direct_effect"] == pytest.approx(de, abs=TOL)
    assert result.values[3][5] == pytest.approx(de, abs=TOL)
    assert result.extras["self_repair"] == pytest.approx(te - de, abs=TOL)


def test_resample_self_repair_averages_its_draws_by_hand(model):
    """Each prompt's TE is the mean over its 8 draws of the plain-hook ablation with that draw."""
    result = run(model, {"method": "self_repair", "ablation": "resample", "prompts": PAIRS, "targets": [{"layer": 3, "head": 5}]})
    by_draw = [_plain(model, [(3, 5)], "resample", draw=k) for k in range(8)]
    per_prompt = [sum(runs[i][1] - runs[i][0] for runs in by_draw) / 8 for i in range(len(PAIRS))]
    assert result.extras["per_prompt"]["total_effect"] == pytest.approx(per_prompt, abs=TOL)
    assert result.extras["total_effect"] == pytest.approx(sum(per_prompt) / len(PAIRS), abs=TOL)
    one = run(model, {"method": "self_repair", "ablation": "resample", "draws": 1, "prompts": PAIRS,
                      "targets": [{"layer": 3, "head": 5}]})
    assert one.extras["per_prompt"]["total_effect"] == pytest.approx([r[1] - r[0] for r in by_draw[0]], abs=TOL)


def test_headline_numbers_carry_per_prompt_values_and_intervals(model):
    """TE per prompt by plain hooks; each interval holds at least the Student t interval of those
    values (t from the quantile function tested against tables in test_spread.py); the parts of
    every prompt add up to its TE."""
    result = run(model, {"method": "self_repair", "prompts": PAIRS, "targets": [{"layer": 2, "head": 2}],
                         "compensator": {"layer": 2, "head": 7}})
    x, n = result.extras, len(PAIRS)
    runs = _plain(model, [(2, 2)])
    assert x["per_prompt"]["total_effect"] == pytest.approx([a - c for c, a, *_ in runs], abs=TOL)
    for key in ("total_effect", "direct_effect", "self_repair", "ln_scale_part", "paired_total_effect",
                "compensator_total_effect", "paired_excess"):
        vals = x["per_prompt"][key]
        mean = sum(vals) / n
        sd = (sum((v - mean) ** 2 for v in vals) / (n - 1)) ** 0.5
        half = t_quantile(0.975, n - 1) * sd / n ** 0.5
        low, high = x["ci"][key]
        assert mean == pytest.approx(x[key], abs=1e-9)
        assert low <= mean - half + 1e-9 and high >= mean + half - 1e-9 and high - low > 1e-6, key
    for i in range(n):
        heads = sum(sum(row) for row in result.per_prompt[i]) - result.per_prompt[i][2][2]
        parts = x["per_prompt"]["direct_effect"][i] + heads + sum(x["per_prompt"]["mlp_delta"][i]) + x["per_prompt"]["ln_scale_part"][i]
        assert parts == pytest.approx(x["per_prompt"]["total_effect"][i], abs=TOL)
    assert len(x["mlp_delta_ci"]) == int(model.cfg.n_layers)
    for (low, high), v in zip(x["mlp_delta_ci"], x["mlp_delta"]):
        assert low <= v <= high


def test_the_decomposition_is_exact(model):
    result = run(model, {"method": "self_repair", "prompts": PAIRS, "targets": [{"layer": 2, "head": 2}, {"layer": 2, "head": 7}]})
    extras = result.extras
    heads = sum(sum(row) for row in result.values)
    assert heads + sum(extras["mlp_delta"]) + extras["ln_scale_part"] == pytest.approx(extras["total_effect"], abs=TOL)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in result.values[0] + result.values[1])  # upstream: unchanged
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in result.extras["mlp_delta"][:2])


def test_paired_ablation_equals_ablating_both(model):
    result = run(model, {"method": "self_repair", "prompts": PAIRS, "targets": [{"layer": 2, "head": 2}],
                         "compensator": {"layer": 2, "head": 7}})
    runs = _plain(model, [(2, 2), (2, 7)])
    assert result.extras["paired_total_effect"] == pytest.approx(sum(a - c for c, a, *_ in runs) / len(runs), abs=TOL)
    # the compensator alone, by plain hooks; a bug that ablated the targets again (or nothing) fails here
    alone = _plain(model, [(2, 7)])
    comp_te = sum(a - c for c, a, *_ in alone) / len(alone)
    assert result.extras["compensator_total_effect"] == pytest.approx(comp_te, abs=TOL)
    assert abs(comp_te - result.extras["total_effect"]) > 1e-2 and abs(comp_te) > 1e-2
    assert result.extras["paired_excess"] == pytest.approx(
        result.extras["paired_total_effect"] - result.extras["total_effect"] - comp_te, abs=TOL)


def test_bad_self_repair_specs_name_the_problem(model):
    with pytest.raises(ValidationError, match="at least one target head"):
        parse_spec({"method": "self_repair", "prompts": PAIRS, "targets": []})
    with pytest.raises(ValidationError, match="metric must be 'logit_diff'"):
        parse_spec({"method": "self_repair", "prompts": PAIRS, "targets": [{"layer": 0, "head": 0}], "metric": "prob"})
    from patchstudio.engine.inputs import InputError

    with pytest.raises(InputError, match="head L9 H0 does not exist"):
        run(model, {"method": "self_repair", "prompts": PAIRS, "targets": [{"layer": 9, "head": 0}]})
