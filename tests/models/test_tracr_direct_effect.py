"""Direct effect and self-repair on the Tracr models, which have no LayerNorm (``normalization_type``
None: no final scale to read or freeze), against plain hooks and hand formulas: a head's direct
effect is its output change @ W_O @ (W_U[:, answer] - W_U[:, wrong]), the LayerNorm part is 0, and
self-repair's total effect is the model's own change of the logit difference."""

from __future__ import annotations

import pytest
import torch

import references as R
from patchstudio.engine.run import run

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = R.TOL


def _z(model, tokens, layer):
    name = R.hook_name("head", layer)
    return R.cache_of(model, tokens, [name])[name][0, -1]  # [heads, d_head], the final position


def _unembed_diff(model, pair):
    return model.W_U[:, pair.answer[0]] - model.W_U[:, pair.wrong[0]]


def test_the_models_have_no_layernorm(tracr_model):
    assert tracr_model.cfg.normalization_type is None


def test_direct_effect_equals_the_hand_formula(tracr_model, tracr_prompts, tracr_pairs):
    """Noising: the clean metric plus (z_corrupted - z_clean) @ W_O through the unembedding alone."""
    n_layers, n_heads = int(tracr_model.cfg.n_layers), int(tracr_model.cfg.n_heads)
    expected = torch.zeros(n_layers, n_heads)
    with torch.no_grad():
        for pair in tracr_pairs:
            clean = float(R.score(tracr_model, pair.clean, pair, "logit_diff"))
            u = _unembed_diff(tracr_model, pair)
            for layer in range(n_layers):
                dz = _z(tracr_model, pair.corrupted, layer) - _z(tracr_model, pair.clean, layer)
                for h in range(n_heads):
                    expected[layer, h] += clean + float(dz[h] @ tracr_model.W_O[layer, h] @ u)
    result = run(tracr_model, {"method": "direct_effect", "prompts": tracr_prompts})
    assert torch.allclose(torch.tensor(result.values), expected / len(tracr_pairs), atol=TOL)


def test_self_repair_splits_the_models_own_change(tracr_model, tracr_prompts, tracr_pairs):
    """Zero-ablating the last layer's head 0: TE from plain hooks, DE by hand, no LayerNorm part,
    and the parts add up to TE."""
    layer = int(tracr_model.cfg.n_layers) - 1
    name = R.hook_name("head", layer)
    te = de = 0.0
    with torch.no_grad():
        for pair in tracr_pairs:
            seq = pair.clean.shape[1]
            zeros = torch.zeros_like(R.cache_of(tracr_model, pair.clean, [name])[name])
            ablated = R.score(tracr_model, pair.clean, pair, "logit_diff", [(name, R.set_at("head", zeros, seq, None, 0))])
            te += float(ablated - R.score(tracr_model, pair.clean, pair, "logit_diff"))
            de += float(-_z(tracr_model, pair.clean, layer)[0] @ tracr_model.W_O[layer, 0] @ _unembed_diff(tracr_model, pair))
    result = run(tracr_model, {"method": "self_repair", "ablation": "zero", "prompts": tracr_prompts,
                               "targets": [{"layer": layer, "head": 0}]})
    x = result.extras
    assert abs(te) > 0.1  # the head matters on these prompts: the check is not of zeros
    assert x["total_effect"] == pytest.approx(te / len(tracr_pairs), abs=TOL)
    assert x["direct_effect"] == pytest.approx(de / len(tracr_pairs), abs=TOL)
    assert x["ln_scale_part"] == 0.0
    parts = sum(sum(row) for row in result.values) + sum(x["mlp_delta"])
    assert parts == pytest.approx(x["total_effect"], abs=TOL)
