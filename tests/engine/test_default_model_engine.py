"""Metrics and ablations on the shipped default model, against values computed by hand from its
full logits and plain hooks."""

from __future__ import annotations

import pytest
import torch

from patchstudio.engine.run import run
from patchstudio.models.prompts import ioi_pairs

PAIRS = [p.to_dict() for p in ioi_pairs(3, seed=11, template=0)]


@pytest.fixture(scope="module")
def model():
    from patchstudio.models.registry import load_model

    return load_model("default")


def _ids(model, pair):
    clean, corrupted = model.to_tokens(pair["clean"]), model.to_tokens(pair["corrupted"])
    ans = int(model.to_tokens(" " + pair["answer"], prepend_bos=False)[0, 0])
    wrong = int(model.to_tokens(" " + pair["wrong"], prepend_bos=False)[0, 0])
    return clean, corrupted, ans, wrong


def _by_hand(metric, logits, clean_logits, ans, wrong):
    final, clean_final = logits[0, -1].double(), clean_logits[0, -1].double()
    if metric == "logit_diff":
        return float(final[ans] - final[wrong])
    probs, clean_probs = torch.softmax(final, -1), torch.softmax(clean_final, -1)
    if metric == "prob":
        return float(probs[ans])
    if metric == "loss":
        return float(-torch.log(probs[ans]))
    return float((clean_probs * (clean_probs.log() - probs.log())).sum())


@pytest.mark.parametrize("metric", ["logit_diff", "prob", "loss", "kl"])
def test_baselines_equal_hand_computed_metrics(model, metric):
    clean_vals, corrupted_vals = [], []
    for pair in PAIRS:
        clean, corrupted, ans, wrong = _ids(model, pair)
        with torch.no_grad():
            clean_logits, corrupted_logits = model(clean), model(corrupted)
        clean_vals.append(_by_hand(metric, clean_logits, clean_logits, ans, wrong))
        corrupted_vals.append(_by_hand(metric, corrupted_logits, clean_logits, ans, wrong))
    result = run(model, {"prompts": PAIRS, "component": "layer", "metric": metric})
    assert result.per_prompt_clean == pytest.approx(clean_vals, abs=1e-4)
    assert result.per_prompt_corrupted == pytest.approx(corrupted_vals, abs=1e-4)
    assert result.clean == pytest.approx(sum(clean_vals) / 3, abs=1e-4)
    if metric == "logit_diff":  # the trained model does the task: the name swap flips the answer
        assert min(clean_vals) > 2.0 and max(corrupted_vals) < -2.0
    if metric == "kl":
        assert result.clean == pytest.approx(0.0, abs=1e-6) and result.corrupted > 1.0


def test_normalized_logit_diff_is_zero_and_one_at_the_baselines(model):
    result = run(model, {"prompts": PAIRS, "component": "resid_pre", "metric": "normalized_logit_diff"})
    assert (result.clean, result.corrupted) == (1.0, 0.0)
    assert result.values[0] == pytest.approx(1.0, abs=1e-5)  # layer-0 stream at every position = clean run


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
@pytest.mark.parametrize("layer, head", [(0, 3), (3, 5)])
def test_head_ablation_equals_a_plain_hook(model, kind, layer, head):
    """The reference set is generated from the prompts' template ('auto': 64 IOI prompts of template 0)."""
    from patchstudio.engine.reference import REFERENCE_SIZE
    from references import resample_draws
    from patchstudio.models.prompts import reference_prompts

    name = f"blocks.{layer}.attn.hook_z"
    tokens = [_ids(model, p) for p in PAIRS]
    pool = [model.to_tokens(t) for t in reference_prompts([p["clean"] for p in PAIRS], 2 * REFERENCE_SIZE, seed=0)[:REFERENCE_SIZE]]
    with torch.no_grad():  # one batch: every reference prompt has the same length
        acts = list(model.run_with_cache(torch.cat(pool), names_filter=[name])[1][name].split(1))

    expected = []
    for i, (clean, corrupted, ans, wrong) in enumerate(tokens):
        if kind == "zero":
            repls = [torch.zeros_like(acts[0])]
        elif kind == "mean":
            repls = [torch.stack(acts).mean(0)]
        else:  # never the pair's own clean or corrupted prompt; the mean over the default 8 draws
            own = {j for j, t in enumerate(pool) if torch.equal(t, clean) or torch.equal(t, corrupted)}
            repls = [acts[j] for j in resample_draws(len(pool), i, 0, 8, exclude=own)]
        value = 0.0
        for repl in repls:
            def hook(act, hook, repl=repl):
                act = act.clone()
                act[:, :, head] = repl[:, :, head]
                return act

            with torch.no_grad():
                logits = model.run_with_hooks(clean, fwd_hooks=[(name, hook)])
            value += float(logits[0, -1, ans] - logits[0, -1, wrong]) / len(repls)
        expected.append(value)
    result = run(model, {"method": "ablation", "ablation": kind, "prompts": PAIRS, "component": "head"})
    assert result.values[layer][head] == pytest.approx(sum(expected) / len(expected), abs=1e-4)
