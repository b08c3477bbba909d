"""Every result carries each prompt's values, their standard deviation and a bootstrap interval."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY_PAIRS
from patchstudio.engine.run import run
from patchstudio.engine.stats import BOOTSTRAP_RESAMPLES, spread
from patchstudio.models.prompts import ioi_pairs


def test_per_prompt_values_are_each_prompt_run_alone_and_values_their_mean(tiny_model):
    spec = {"prompts": TINY_PAIRS, "component": "head", "positions": "each"}
    result = run(tiny_model, spec)
    per = torch.tensor(result.per_prompt)
    assert per.shape == (2, 2, 15, 4)  # [prompt, layer, pos, head]
    for i, pair in enumerate(TINY_PAIRS):
        alone = torch.tensor(run(tiny_model, {**spec, "prompts": [pair]}).values)
        assert torch.allclose(per[i], alone, atol=1e-6)
    assert torch.allclose(per.mean(0), torch.tensor(result.values), atol=1e-6)
    std = torch.tensor(result.std)
    assert torch.allclose(std, per.std(0, correction=1), atol=1e-6)
    # two prompts: a resampled mean is a, b or their midpoint, each with probability >= 1/4, so the
    # 2.5% and 97.5% percentiles are exactly the smaller and the larger prompt's value
    assert torch.allclose(torch.tensor(result.ci_low), per.min(0).values, atol=1e-6)
    assert torch.allclose(torch.tensor(result.ci_high), per.max(0).values, atol=1e-6)


def test_one_prompt_has_no_spread_and_its_interval_collapses(tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS[:1], "component": "head"})
    assert result.std == [[0.0] * 4] * 2
    assert result.ci_low == result.values == result.ci_high
    assert result.per_prompt == [result.values]


def test_bootstrap_interval_is_seeded_and_about_two_standard_errors_wide():
    torch.manual_seed(123)
    per = torch.randn(40, 3) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([0.0, 5.0, -1.0])
    std, low, high = spread(per)
    assert torch.equal(low, spread(per)[1]) and torch.equal(high, spread(per)[2])  # same input, same interval
    mean = per.double().mean(0)
    assert bool(((low < mean) & (mean < high)).all())
    half = 1.96 * std / 40**0.5
    assert torch.allclose(high - low, 2 * half, rtol=0.2)
    assert BOOTSTRAP_RESAMPLES == 1000


def test_normalized_per_prompt_values_use_the_set_level_baselines(tiny_model):
    spec = {"prompts": TINY_PAIRS, "component": "resid_pre", "positions": "each"}
    raw = run(tiny_model, spec)
    norm = run(tiny_model, {**spec, "metric": "normalized_logit_diff"})
    gap = raw.clean - raw.corrupted
    expected = (torch.tensor(raw.per_prompt) - raw.corrupted) / gap
    assert torch.allclose(torch.tensor(norm.per_prompt), expected, atol=1e-5)
    assert torch.allclose(torch.tensor(norm.values), expected.mean(0), atol=1e-5)
    assert torch.allclose(torch.tensor(norm.std), torch.tensor(raw.std) / abs(gap), atol=1e-5)


def test_change_methods_normalise_per_prompt_values_by_scaling_only(tiny_model):
    spec = {"method": "input_influence", "prompts": TINY_PAIRS, "steps": 4}
    raw = run(tiny_model, spec)
    norm = run(tiny_model, {**spec, "metric": "normalized_logit_diff"})
    gap = raw.clean - raw.corrupted
    assert torch.allclose(torch.tensor(norm.per_prompt), torch.tensor(raw.per_prompt) / gap, atol=1e-5)


@pytest.fixture(scope="module")
def model():
    from patchstudio.models.registry import load_model

    return load_model("default")


def test_every_method_reports_spread_in_the_shape_of_its_values(model):
    pairs = [p.to_dict() for p in ioi_pairs(3, seed=4, template=0)]
    specs = [
        {"prompts": pairs, "component": "head"},
        {"method": "ablation", "prompts": pairs, "component": "mlp_out", "positions": "each"},
        {"method": "attribution_patching", "prompts": pairs, "component": "head_v"},
        {"method": "path_patching", "prompts": pairs},
        {"method": "direct_effect", "prompts": pairs},
        {"method": "self_repair", "prompts": pairs, "targets": [{"layer": 2, "head": 2}]},
        {"method": "input_influence", "prompts": pairs, "steps": 4},
    ]
    for spec in specs:
        result = run(model, spec)
        values = torch.tensor(result.values)
        assert torch.tensor(result.per_prompt).shape == (3, *values.shape), spec
        for name in ("std", "ci_low", "ci_high"):
            assert torch.tensor(getattr(result, name)).shape == values.shape, (spec, name)
        assert bool((torch.tensor(result.ci_low) <= torch.tensor(result.ci_high) + 1e-9).all())
