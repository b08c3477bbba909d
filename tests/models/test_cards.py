"""The model cards are templates (models/NAME/CARD.md.j2) filled from metrics.json: each shipped
card is exactly its template rendered from its shipped metrics, and the figures a card states follow
the metrics it is given."""

from __future__ import annotations

import copy
import json

import pytest

from patchstudio.models.default_model import BUILTIN_MODELS
from patchstudio.models.training.cards import render


def shipped_metrics(name: str) -> dict:
    return json.loads((BUILTIN_MODELS[name] / "metrics.json").read_text())


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_each_shipped_card_is_its_template_rendered_from_its_metrics(name):
    assert render(shipped_metrics(name), name) == (BUILTIN_MODELS[name] / "CARD.md").read_text()


def test_the_card_states_the_metrics_it_is_given():
    metrics = copy.deepcopy(shipped_metrics("default"))
    metrics["ioi_accuracy"], metrics["ioi_logit_diff"], metrics["model"]["n_params"] = 0.5, -1.23456, 1234567
    card = render(metrics, "default")
    assert "| IOI accuracy (logit(IO) > logit(S)) | 0.5000 |" in card
    assert "| IOI mean logit diff logit(IO) - logit(S) | -1.235 |" in card
    assert "untied embeddings; 1,234,567 parameters." in card
    assert "Self-repair" not in card and "Backup objective" not in card


def test_the_hydra_card_says_when_no_head_makes_up_30_percent_and_leaves_out_what_was_not_measured():
    metrics = copy.deepcopy(shipped_metrics("hydra"))
    metrics["self_repair"]["compensator_growth_ratio"] = 0.29
    card = render(metrics, "hydra")
    assert "(29% of the target's DE)" in card
    assert "No single head makes up 30% of L2H2's direct effect: this model falls short of the Hydra bar." in card

    del metrics["self_repair"]  # a hydra recipe run without the self-repair report (as the short test trainings are)
    card = render(metrics, "hydra")
    assert "### Self-repair" not in card and "backup of one head" not in card
    assert card.startswith("# patchstudio hydra model\n\nIts starting point, the default model, is a small GPT-style")
    assert "**Backup objective:** in every training forward pass each example loses, with probability 0.5" in card


def test_the_hydra_card_states_the_backups_response_it_is_given():
    """The spread, the graded probe, resample ablation and "backs up one head only" come from the
    metrics (a card cannot keep an old number), and no word claims a switch."""
    metrics = copy.deepcopy(shipped_metrics("hydra"))
    sr = metrics["self_repair"]
    sr["compensator_growth_ratio_quartiles"] = [0.111, 0.222, 0.333]
    sr["graded_compensator_growth"][0] = 0.4321
    sr["graded_growth_ratio_quartiles"][0] = [0.1, 0.2, 0.3]
    sr["resample_total_effect"], sr["resample_draws"] = -9.876, 5
    sr["max_growth_by_ablated_head"][0][5] = 0.5557
    card = render(metrics, "hydra")
    assert "Per prompt, L3H4's growth is 22% of L2H2's |DE| at the median\n(quartiles 11%-33%)" in card
    assert "| 0.75 | -0.288 | +0.432 | 0.20 (0.10-0.30) |" in card
    assert "5 draws per prompt,\naveraged): TE -9.876," in card
    assert "raises no head's direct effect by more than\n0.556 (ablating L0H5)" in card
    sr["max_growth_by_ablated_head"][2][2] = 9.0  # the target itself is not "another head"
    assert "0.556 (ablating L0H5)" in render(metrics, "hydra")
    shipped = render(shipped_metrics("hydra"), "hydra").lower()
    for word in ("gated", "off switch", "stay quiet", "stays quiet", "works mostly when"):
        assert word not in shipped, word
