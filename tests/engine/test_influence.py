"""Input influence equals autograd on the input embeddings, from either baseline; integrated
gradients are complete; steps 1 gives the directional derivative exactly."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY_PAIRS
from patchstudio.engine.methods.input_influence import input_influence, metric_at
from patchstudio.engine.metrics import Readout
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
    result = run(tiny_model, {"method": "input_influence", "prompts": TINY_PAIRS, "baseline": "zero"})
    assert result.axes == ["pos"] and result.labels["pos"][:3] == ["BOS", "When", "IO"]  # by role
    assert torch.allclose(torch.tensor(result.values), _reference(tiny_model, [1.0], from_corrupted=False), atol=1e-4)


def test_integrated_gradients_from_the_corruption_equal_the_riemann_sum_and_are_complete(tiny_model):
    steps = 32
    result = run(tiny_model, {"method": "input_influence", "prompts": TINY_PAIRS, "steps": steps})
    alphas = [(k + 0.5) / steps for k in range(steps)]
    assert torch.allclose(torch.tensor(result.values), _reference(tiny_model, alphas, from_corrupted=True), atol=1e-4)
    # completeness: the shares add up to metric(clean) - metric(corrupted), and sit where the prompts differ
    assert sum(result.values) == pytest.approx(result.clean - result.corrupted, rel=0.02, abs=0.01)
    assert all(abs(v) < 1e-6 for i, v in enumerate(result.values) if i != 10)


def test_gradient_times_input_minus_the_corrupted_input_equals_autograd(tiny_model):
    """The default baseline is the corrupted prompt, for steps 1 as for more: grad metric(e) . (e - b)."""
    result = run(tiny_model, {"method": "input_influence", "prompts": TINY_PAIRS})
    assert result.spec.baseline == "corrupted"
    assert torch.allclose(torch.tensor(result.values), _reference(tiny_model, [1.0], from_corrupted=True), atol=1e-4)
    assert all(abs(v) < 1e-6 for i, v in enumerate(result.values) if i != 10)  # e - b is 0 where the prompts agree


def test_integrated_gradients_from_zero_equal_the_riemann_sum(tiny_model):
    steps = 8
    result = run(tiny_model, {"method": "input_influence", "prompts": TINY_PAIRS, "steps": steps, "baseline": "zero"})
    alphas = [(k + 0.5) / steps for k in range(steps)]
    assert torch.allclose(torch.tensor(result.values), _reference(tiny_model, alphas, from_corrupted=False), atol=1e-4)


def _pair_readout(model, pair):
    ans = int(model.to_tokens(" " + pair["answer"], prepend_bos=False)[0, 0])
    wrong = int(model.to_tokens(" " + pair["wrong"], prepend_bos=False)[0, 0])
    return model.to_tokens(pair["clean"]), Readout(model, "logit_diff", ans, wrong)


@pytest.mark.parametrize("baseline", ["corrupted", "zero"])
def test_completeness_integrated_gradients_add_up_to_the_metric_difference(perturbed_model, baseline):
    """sum of shares -> metric(clean) - metric(baseline) as the steps grow. From zero that needs
    thousands of steps (LayerNorm puts the change next to zero; the spec allows 64, and says so in a
    warning); from the corrupted prompt 32 do."""
    steps = 32 if baseline == "corrupted" else 4096
    for pair in TINY_PAIRS:
        tokens, readout = _pair_readout(perturbed_model, pair)
        e = perturbed_model.run_with_cache(tokens)[1]["blocks.0.hook_resid_pre"].detach()
        b = perturbed_model.run_with_cache(perturbed_model.to_tokens(pair["corrupted"]))[1]["blocks.0.hook_resid_pre"].detach() if baseline == "corrupted" else None
        shares, _ = input_influence(perturbed_model, tokens, readout, steps=steps, baseline=b)
        expected = metric_at(perturbed_model, tokens, readout, e) - metric_at(perturbed_model, tokens, readout, b)
        assert float(shares.sum()) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("baseline", ["corrupted", "zero"])
def test_one_step_shares_add_up_to_the_directional_derivative_exactly(perturbed_model, baseline):
    """steps 1: sum of shares = grad metric(e) . (e - b) = d/dt metric(e + t (e - b)) at t = 0, exactly
    (a linear estimate of metric(e) - metric(b), not equal to it)."""
    for pair in TINY_PAIRS:
        tokens, readout = _pair_readout(perturbed_model, pair)
        e = perturbed_model.run_with_cache(tokens)[1]["blocks.0.hook_resid_pre"].detach()
        b = (perturbed_model.run_with_cache(perturbed_model.to_tokens(pair["corrupted"]))[1]["blocks.0.hook_resid_pre"].detach()
             if baseline == "corrupted" else None)
        shares, _ = input_influence(perturbed_model, tokens, readout, steps=1, baseline=b)
        t = torch.zeros((), requires_grad=True)
        x = e + t * (e - (torch.zeros_like(e) if b is None else b))
        (derivative,) = torch.autograd.grad(_metric(perturbed_model, tokens, pair, x), [t])
        assert float(shares.sum()) == pytest.approx(float(derivative), rel=1e-4, abs=1e-5)
        linear_gap = metric_at(perturbed_model, tokens, readout, e) - metric_at(perturbed_model, tokens, readout, b)
        assert abs(float(shares.sum()) - linear_gap) > 1e-3  # and not metric(e) - metric(b) on this model


def test_normalized_shares_are_the_raw_shares_over_the_gap_with_no_offset(perturbed_model):
    """Shares are changes of the metric: normalising divides by the gap and adds nothing, so
    integrated gradients from the corrupted prompt add up to 1 (clean) - 0 (corrupted)."""
    spec = {"method": "input_influence", "prompts": TINY_PAIRS, "steps": 32}
    raw = run(perturbed_model, spec)
    norm = run(perturbed_model, {**spec, "metric": "normalized_logit_diff"})
    gap = raw.clean - raw.corrupted
    assert torch.allclose(torch.tensor(norm.values), torch.tensor(raw.values) / gap, atol=1e-6)
    assert sum(norm.values) == pytest.approx(1.0, abs=0.02)
    assert (norm.clean, norm.corrupted) == (1.0, 0.0)
    one_step = run(perturbed_model, {**spec, "steps": 1, "metric": "normalized_logit_diff"})
    assert torch.allclose(torch.tensor(one_step.values), torch.tensor(run(perturbed_model, {**spec, "steps": 1}).values) / gap, atol=1e-6)


def test_shares_that_do_not_add_up_are_warned_about(perturbed_model):
    spec = {"method": "input_influence", "prompts": TINY_PAIRS}
    assert not any("do not add up" in w for w in run(perturbed_model, {**spec, "steps": 32}).warnings)
    zero = run(perturbed_model, {**spec, "steps": 64, "baseline": "zero"}).warnings
    assert any("do not add up to metric(clean) − metric(zero input)" in w and "use the corrupted baseline" in w for w in zero)
    linear = run(perturbed_model, spec).warnings
    assert any("only a linear estimate" in w for w in linear)


def test_a_zero_gradient_metric_is_warned_about(perturbed_model):
    spec = {"method": "input_influence", "prompts": TINY_PAIRS, "metric": "kl"}
    result = run(perturbed_model, spec)
    assert max(abs(v) for v in result.values) < 1e-4
    assert any(w.startswith("The metric's gradient is zero at the clean run") for w in result.warnings)
    assert not any("gradient is zero" in w for w in run(perturbed_model, {**spec, "steps": 4}).warnings)
