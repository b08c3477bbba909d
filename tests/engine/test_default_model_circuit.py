"""The default model's IOI and induction circuit, as written up in docs/default-model-circuit.md.

Pins the evidence the write-up rests on, on the same generated prompts (16 pairs, template 0, seed 7)."""

from __future__ import annotations

import pytest
import torch

from patchstudio.engine.run import run
from patchstudio.models.prompts import induction_pairs, ioi_pairs

IOI = [p.to_dict() for p in ioi_pairs(16, seed=7, template=0)]
INDUCTION = [p.to_dict() for p in induction_pairs(16, seed=7, length=8)]
NORM = "normalized_logit_diff"


@pytest.fixture(scope="module")
def model():
    from patchstudio.models.registry import load_model

    return load_model("default")


def _top(values, k, base=0.0):
    v = torch.tensor(values) - base
    flat = v.abs().reshape(-1).argsort(descending=True)[:k]
    n_heads = v.shape[1]
    return [f"L{int(i) // n_heads}H{int(i) % n_heads}" for i in flat]


def test_three_heads_carry_the_ioi_signal(model):
    denoise = run(model, {"prompts": IOI, "component": "head", "metric": NORM})
    assert _top(denoise.values, 3) == ["L0H2", "L2H2", "L2H7"]
    assert denoise.values[0][2] > 0.3 and denoise.values[2][2] > 0.15 and denoise.values[2][7] > 0.1
    # through their values, not their queries or keys
    values = run(model, {"prompts": IOI, "component": "head_v", "metric": NORM})
    queries = run(model, {"prompts": IOI, "component": "head_q", "metric": NORM})
    assert values.values[2][2] == pytest.approx(denoise.values[2][2], abs=0.02)
    assert max(abs(v) for row in queries.values for v in row) < 0.05


def test_layer_two_heads_act_on_the_logits_directly_layer_zero_through_them(model):
    act = run(model, {"prompts": IOI, "component": "head", "direction": "noise", "metric": NORM})
    path = run(model, {"method": "path_patching", "prompts": IOI, "component": "head", "metric": NORM})
    for layer, head in [(2, 2), (2, 7), (2, 1)]:  # name-mover-like: all of the effect is direct
        assert path.values[layer][head] == pytest.approx(act.values[layer][head], abs=0.02)
    # L0H2's noising effect (0.61 of the clean level left) is mostly indirect (0.78 left via the logits alone)
    assert path.values[0][2] - act.values[0][2] > 0.1
    repair = run(model, {"method": "self_repair", "prompts": IOI, "targets": [{"layer": 0, "head": 2}]})
    assert abs(repair.extras["direct_effect"]) < 0.1 < abs(repair.extras["total_effect"])
    # through the unembedding alone, L2H2 has about half its path-to-logits effect (the rest via MLP2, MLP3)
    direct = run(model, {"method": "direct_effect", "prompts": IOI, "metric": NORM})
    assert direct.values[0][2] == pytest.approx(1.0, abs=0.02)
    assert 0.08 < 1 - direct.values[2][2] < 0.7 * (1 - path.values[2][2])


def test_layer_one_holds_the_induction_heads(model):
    tokens = model.to_tokens(INDUCTION[0]["clean"])
    _, cache = model.run_with_cache(tokens)
    length, seq = 8, tokens.shape[1]
    stripe = torch.stack([
        torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, :, q, q - (length - 1)] for q in range(length + 1, seq)]).mean(0)
        for l in range(model.cfg.n_layers)
    ])  # [layer, head]: attention to the token after the previous occurrence
    assert (stripe[1] > 0.7).sum() >= 6
    assert stripe[[0, 2, 3]].max() < 0.2
    patched = run(model, {"prompts": INDUCTION, "component": "head", "metric": NORM})
    assert sum(patched.values[1]) > 0.5  # the layer-1 heads together restore most of the behaviour
