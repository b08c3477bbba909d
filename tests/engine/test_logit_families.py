"""The logit lens and direct logit attribution on five architecture families, against plain-hook
references (tests/lens_references.py) to 1e-4: GPT-2 (LayerNorm, learned positions), GPT-NeoX
(parallel blocks), Llama and Qwen2 (RMSNorm, rotary, grouped-query attention; Qwen2 with q/k/v
biases) and Gemma 2 (the lens with its soft cap; attribution refused). The models are
tests/family_models.py's, loaded through ``patchstudio.load_model(directory)``."""

from __future__ import annotations

import pytest
import torch

import lens_references as LR
import references as R
from family_models import FAMILIES, MULTI_TOKEN_PAIRS, PAIRS
from patchstudio.engine.inputs import InputError
from patchstudio.engine.run import run

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = R.TOL
ATTRIBUTED = [f for f in FAMILIES if f != "gemma2"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def model(family, family_models):
    return family_models(family)


@pytest.fixture(scope="module")
def pairs(model):
    return R.pairs_of(model, PAIRS)


@pytest.mark.parametrize("metric, run_name", [("logit_diff", "clean"), ("logit_diff", "corrupted"), ("prob", "clean"),
                                              ("kl", "corrupted")])
def test_logit_lens_equals_plain_hooks(model, pairs, metric, run_name):
    result = run(model, {"method": "logit_lens", "prompts": PAIRS, "metric": metric, "run": run_name})
    n_layers, n_pos = int(model.cfg.n_layers), pairs[0].clean.shape[1]
    assert result.axes == ["layer", "pos"]
    assert [len(result.labels["layer"]), len(result.labels["pos"])] == [n_layers + 1, n_pos]
    got, ref = torch.tensor(result.values), LR.lens(model, pairs, metric, run_name)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    # the last row is the model's own output: its final cell is the run's metric
    own = result.clean if run_name == "clean" else result.corrupted
    assert got[-1, -1] == pytest.approx(own, abs=TOL)
    assert (got[:-1] - got[-1]).abs().max() > 10 * TOL  # earlier layers read something else


@pytest.mark.parametrize("run_name", ["clean", "corrupted"])
def test_logit_attribution_equals_plain_hooks_and_adds_up(family, model, pairs, run_name):
    spec = {"method": "logit_attribution", "prompts": PAIRS, "run": run_name}
    if family == "gemma2":
        with pytest.raises(InputError) as info:
            run(model, spec)
        assert info.value.field == "method"
        assert str(info.value) == (
            "direct logit attribution is not available for Gemma2ForCausalLM: its attention output is not the sum of "
            "the heads' outputs (a norm after attention rescales it); and its logits are soft-capped (cap 4), so they "
            "are not a sum of the parts' logits")
        return
    result = run(model, spec)
    ref = LR.attribution(model, pairs, run_name)
    got = torch.tensor(result.values)
    assert result.axes == ["layer", "head"]
    assert torch.allclose(got, LR.heads_grid(model, ref), atol=TOL), (got - LR.heads_grid(model, ref)).abs().max()
    x = result.extras
    n_layers = int(model.cfg.n_layers)
    assert x["mlp"] == pytest.approx([ref[f"L{l} MLP"] for l in range(n_layers)], abs=TOL)
    assert x["embed"] == pytest.approx(ref["embed"], abs=TOL)
    if family == "gpt2":  # learned positions; the others are rotary
        assert x["pos_embed"] == pytest.approx(ref["pos_embed"], abs=TOL)
    else:
        assert x["pos_embed"] is None and "pos_embed" not in ref
    if "L0 attn bias" in ref:  # GPT-2 and NeoX have b_O
        assert x["attn_bias"] == pytest.approx([ref[f"L{l} attn bias"] for l in range(n_layers)], abs=TOL)
    else:
        assert x["attn_bias"] is None
    assert x["norm_bias"] + x["unembed_bias"] == pytest.approx(ref["bias"], abs=TOL)
    # the sum check: every part plus the bias terms is the run's own logit difference
    parts = float(got.sum()) + sum(x["mlp"]) + x["embed"] + (x["pos_embed"] or 0.0) + sum(x["attn_bias"] or [])
    parts += x["norm_bias"] + x["unembed_bias"]
    assert parts == pytest.approx(ref["metric"], abs=TOL)
    assert x["metric"] == pytest.approx(ref["metric"], abs=TOL) and x["adds_up"]
    assert not [w for w in result.warnings if "parts add up" in w]
    assert got.abs().max() > 1e-2


@pytest.mark.parametrize("family_name", ["gpt2", "llama"])
def test_head_contribution_is_the_hand_formula(family_models, family_name):
    """LayerNorm: (c - mean c) / scale * w . u; RMSNorm: c / scale * w . u (u = W_U[:, a] - W_U[:, b])."""
    model = family_models(family_name)
    pair = R.pairs_of(model, PAIRS[:1])[0]
    cache = R.cache_of(model, pair.clean, ["blocks.1.attn.hook_z", LR.SCALE])
    c = (cache["blocks.1.attn.hook_z"][0, -1, 2] @ model.W_O[1, 2]).detach()
    c = c if family_name == "llama" else c - c.mean()
    u = (model.ln_final.w * (model.W_U[:, pair.answer[0]] - model.W_U[:, pair.wrong[0]])).detach()
    expected = float(c / cache[LR.SCALE][0, -1, 0] @ u)
    result = run(model, {"method": "logit_attribution", "prompts": PAIRS[:1]})
    assert result.values[1][2] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("method", ["logit_lens", "logit_attribution"])
def test_answers_of_several_tokens_are_refused(family_models, method):
    model = family_models("llama")
    with pytest.raises(InputError) as info:
        run(model, {"method": method, "prompts": MULTI_TOKEN_PAIRS})
    assert info.value.field in ("answer", "wrong")
    assert method.replace("_", " ") in str(info.value)
