"""Input influence equals autograd on the input embeddings; integrated gradients are complete."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY_PAIRS
from patchstudio.engine.run import run


def _metric(model, tokens, pair, embeddings):
    ans = int(model.to_tokens(" " + pair["answer"], prepend_bos=False)[0, 0])
    wrong = int(model.to_tokens(" " + pair["wrong"], prepend_bos=False)[0, 0])
    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: embeddings)])
    return logits[0, -1, ans] - logits[0, -1, wrong]


def _reference(model, alphas, from_corrupted):
    per_prompt = []
    for pair in TINY_PAIRS:
        tokens = model.to_tokens(pair["clean"])
        _, cache = model.run_with_cache(tokens)
        e = cache["blocks.0.hook_resid_pre"].detach()
        b = model.run_with_cache(model.to_tokens(pair["corrupted"]))[1]["blocks.0.hook_resid_pre"].detach() if from_corrupted else 0 * e
        grads = []
        for a in alphas:
            x = (b + a * (e - b)).requires_grad_(True)
            (g,) = torch.autograd.grad(_metric(model, tokens, pair, x), [x])
            grads.append(g)
        per_prompt.append((torch.stack(grads).mean(0) * (e - b))[0].sum(-1))
    return torch.stack(per_prompt).mean(0)


def test_gradient_times_input_equals_autograd(tiny_model):
    result = run(tiny_model, {"method": "input_influence", "prompts": TINY_PAIRS})
    assert result.axes == ["pos"] and result.labels["pos"][:2] == ["<bos>", "When"]
    assert torch.allclose(torch.tensor(result.values), _reference(tiny_model, [1.0], from_corrupted=False), atol=1e-4)


def test_integrated_gradients_from_the_corruption_equal_the_riemann_sum_and_are_complete(tiny_model):
    steps = 32
    result = run(tiny_model, {"method": "input_influence", "prompts": TINY_PAIRS, "steps": steps})
    alphas = [(k + 0.5) / steps for k in range(steps)]
    assert torch.allclose(torch.tensor(result.values), _reference(tiny_model, alphas, from_corrupted=True), atol=1e-4)
    # completeness: the shares add up to metric(clean) - metric(corrupted), and sit where the prompts differ
    assert sum(result.values) == pytest.approx(result.clean - result.corrupted, rel=0.02, abs=0.01)
    assert all(abs(v) < 1e-6 for i, v in enumerate(result.values) if i != 10)
