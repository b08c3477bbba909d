"""The committed hydra model: loads by name, shares the default model's tokenizer, does IOI on
held-out prompts, and repairs itself: mean-ablate its strongest head and another head's direct
effect grows by at least 30% of it; ablating both costs clearly more than the two alone."""

from __future__ import annotations

import json

import pytest
import torch

from patchstudio.engine.methods.self_repair import self_repair
from patchstudio.models import prompts
from patchstudio.models.default_model import BUILTIN_MODELS, DEFAULT_DIR, HYDRA_DIR, weights_fingerprint
from patchstudio.models.hydra_report import ablation_effects, measure
from patchstudio.models.registry import load_model

# An installation without the hydra weights (a partial checkout) has nothing to check here.
pytestmark = pytest.mark.skipif(
    not (HYDRA_DIR / "model.safetensors").exists(), reason="the hydra model is not trained yet (issue 9)"
)


@pytest.fixture(scope="module")
def metrics():
    return json.loads((HYDRA_DIR / "metrics.json").read_text())


@pytest.fixture(scope="module")
def model():
    return load_model("hydra")


@pytest.fixture(scope="module")
def measured(model, metrics):
    e = metrics["self_repair"]["eval"]
    # One thread: as fast on idle cores for this small model, and far faster on shared ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure(model, n_per_template=e["n_per_template"], n_reference=e["n_reference"], seed=e["seed"],
                       templates=tuple(e["templates"]))  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def _head(d: dict) -> tuple[int, int]:
    return d["layer"], d["head"]


def test_loads_by_name_with_the_default_tokenizer(model, metrics):
    assert BUILTIN_MODELS["hydra"] == HYDRA_DIR
    assert not model.training
    assert model.cfg.d_vocab == len(model.tokenizer) == metrics["model"]["d_vocab"]
    assert weights_fingerprint(HYDRA_DIR) == metrics["model"]["fingerprint"]
    assert weights_fingerprint(HYDRA_DIR) != weights_fingerprint(DEFAULT_DIR)
    # Same vocabulary, same ids: prompts are shared between the two built-in models.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (HYDRA_DIR / "tokenizer" / name).read_text() == (DEFAULT_DIR / "tokenizer" / name).read_text()
    text = "When Mary and John went to the store, John gave a drink to"
    assert model.to_str_tokens(text)[:3] == ["<bos>", "When", "Mary"]
    assert metrics["training"]["head_dropout"]["probability"] > 0


def test_ioi_on_heldout_prompts(measured):
    assert measured["eval"]["n_prompts"] >= 64 and measured["eval"]["n_reference"] >= 32
    assert measured["ioi_accuracy"] >= 0.95
    assert measured["ioi_logit_diff"] >= 3.0


def test_strongest_head_has_a_backup(measured):
    de = measured["target_direct_effect"]
    assert de < 0 and de == pytest.approx(min(min(row) for row in measured["direct_effects"]), abs=1e-5)  # rounded there
    target, comp = _head(measured["target"]), _head(measured["compensator"])
    assert comp[0] > target[0]  # the backup reads the residual stream the target writes to
    assert measured["compensator_growth"] >= 0.3 * abs(de)
    assert measured["compensator_growth_ratio"] >= 0.3


def test_paired_ablation_costs_more_than_both_alone(measured):
    drop_target = -measured["target_total_effect"]
    drop_comp = -measured["compensator_total_effect"]
    drop_pair = -measured["paired_total_effect"]
    assert drop_target > 0 and drop_pair > 0
    assert drop_pair - (drop_target + drop_comp) >= 0.25 * abs(measured["target_direct_effect"])
    assert measured["paired_drop_minus_single_drops"] == pytest.approx(drop_pair - drop_target - drop_comp, abs=1e-5)


def test_metrics_match_committed(measured, metrics):
    committed = metrics["self_repair"]
    assert set(measured) == set(committed)
    for key, value in measured.items():
        if isinstance(value, float):
            assert value == pytest.approx(committed[key], abs=1e-4), key
        elif isinstance(value, list):  # rows of a layer x head table
            assert len(value) == len(committed[key]), key
            for row, committed_row in zip(value, committed[key]):
                assert row == pytest.approx(committed_row, abs=1e-4), key
        else:
            assert value == committed[key], key
    for key in ("ioi_accuracy", "ioi_logit_diff"):
        assert metrics[key] >= (0.95 if key == "ioi_accuracy" else 3.0)


def test_measure_agrees_with_the_engine(model, measured):
    """The batched measurement equals the engine's self_repair decomposition, prompt by prompt."""
    target, comp = _head(measured["target"]), _head(measured["compensator"])
    t = prompts.HELDOUT_TEMPLATES[0]
    pairs = prompts.ioi_pairs(3, seed=11, split="heldout", template=t)
    reference = prompts.ioi_pairs(32, seed=12, split="heldout", template=t)
    mine = ablation_effects(model, pairs, reference, [target])
    replacements = {layer: v[None] for layer, v in mine["means"].items()}
    tid = model.tokenizer.convert_tokens_to_ids
    for i, p in enumerate(pairs):
        theirs = self_repair(model, model.to_tokens(p.clean), replacements, [target], tid(p.answer), tid(p.wrong), compensator=comp)
        assert theirs["total_effect"] == pytest.approx(float(mine["total_effect"][i]), abs=1e-4)
        assert theirs["direct_effect"] == pytest.approx(float(mine["head_delta"][i][target]), abs=1e-4)
        assert torch.allclose(theirs["head_delta"], mine["head_delta"][i], atol=1e-4)
        paired = ablation_effects(model, [p], reference, [target, comp])
        assert theirs["paired_total_effect"] == pytest.approx(float(paired["total_effect"][0]), abs=1e-4)


def test_the_backup_responds_in_proportion_not_as_a_switch(measured):
    """The target's final-position output scaled by 0.75 ... 0: the backup's growth rises with the
    direct effect the target loses and makes up a similar share of it at every factor (a gate would
    leave it near 0 until the target is gone)."""
    assert measured["graded_alphas"] == [0.75, 0.5, 0.25, 0.0]
    lost = [-d for d in measured["graded_target_direct_effect"]]
    growth = measured["graded_compensator_growth"]
    assert all(a < b for a, b in zip(lost, lost[1:])) and all(a < b for a, b in zip(growth, growth[1:]))
    ratios = [g / d for g, d in zip(growth, lost)]
    assert min(ratios) > 0.7 * max(ratios)
    assert growth[0] > 0.2 * growth[-1]  # a quarter of the output removed already moves it by a fifth of the whole


def test_the_backup_backs_up_one_head_and_is_not_silent(measured):
    target, comp = _head(measured["target"]), _head(measured["compensator"])
    others = [v for l, row in enumerate(measured["max_growth_by_ablated_head"]) for h, v in enumerate(row) if (l, h) != target]
    assert max(others) < 0.1 * measured["compensator_growth"]
    assert measured["direct_effects"][comp[0]][comp[1]] < -0.3  # ablating it alone removes a clear direct effect


def test_the_response_summary_is_its_per_prompt_effects_summarised(model, metrics):
    """backup_response by hand from backup_effects' per-prompt values, on one held-out template."""
    from patchstudio.models.hydra_report import backup_response, effects_on

    t = prompts.HELDOUT_TEMPLATES[0]
    groups = [(prompts.ioi_pairs(8, seed=11, split="heldout", template=t), prompts.ioi_pairs(32, seed=12, split="heldout", template=t))]
    x = effects_on(model, groups, (2, 2), (3, 4), seed=3, draws=2)
    summary = backup_response(x, draws=2)
    ratio = sorted((x["growth"] / x["direct_effect"].abs()).tolist())
    assert summary["compensator_growth_ratio_quartiles"][1] == pytest.approx((ratio[3] + ratio[4]) / 2, abs=1e-6)  # median of 8
    assert summary["resample_total_effect"] == pytest.approx(float(x["resample_total_effect"].mean()), abs=1e-6)
    assert x["graded_growth"].shape == (4, 8)
