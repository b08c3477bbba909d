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
    assert "Self-repair" not in card and "Head dropout" not in card


def test_the_hydra_card_says_when_no_head_makes_up_30_percent_and_leaves_out_what_was_not_measured():
    metrics = copy.deepcopy(shipped_metrics("hydra"))
    metrics["self_repair"]["compensator_growth_ratio"] = 0.29
    card = render(metrics, "hydra")
    assert "(29% of the target's DE)" in card
    assert "No single head makes up 30% of L2H2's direct effect: this model falls short of the Hydra bar." in card
    assert "is a backup that works mostly when" not in card

    del metrics["self_repair"]  # a hydra recipe run without the self-repair report (as the short test trainings are)
    card = render(metrics, "hydra")
    assert "### Self-repair" not in card and "repairs itself" not in card
    assert card.startswith("# patchstudio hydra model\n\nIts starting point, the default model, is a small GPT-style")
    assert "**Head dropout:** in every training forward pass each example loses, with probability 0.5" in card
