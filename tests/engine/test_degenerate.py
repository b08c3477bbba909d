"""Input that cannot show what a number would claim: refused naming the field, or warned about."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from helpers import TINY_PAIRS
from patchstudio.engine.metrics import SMALL_GAP
from patchstudio.engine.run import run
from patchstudio.errors import InputError
from patchstudio.specs import parse_spec

SAME = [{**p, "corrupted": p["clean"]} for p in TINY_PAIRS]


def _loc(exc: ValidationError) -> tuple:
    return exc.errors()[0]["loc"]


def test_answer_equal_to_wrong_is_refused_on_the_wrong_field():
    with pytest.raises(ValidationError, match="wrong is the answer itself") as info:
        parse_spec({"prompts": [{**TINY_PAIRS[0], "wrong": " Mary "}]})
    assert _loc(info.value) == ("activation_patching", "prompts", 0, "wrong")


@pytest.mark.parametrize(
    "spec, loc, message",
    [
        ({"method": "self_repair", "targets": [{"layer": 0, "head": 1}, {"layer": 1, "head": 2}, {"layer": 0, "head": 1}]},
         ("self_repair", "targets"), "target L0H1 is listed twice"),
        ({"method": "self_repair", "targets": [{"layer": 0, "head": 1}], "compensator": {"layer": 0, "head": 1}},
         ("self_repair", "compensator"), "the compensator L0H1 is also a target"),
        ({"method": "path_patching", "receivers": [{"layer": 1, "head": 2, "input": "q"}, {"layer": 1, "head": 2}]},
         ("path_patching", "receivers"), "receiver L1H2.q is listed twice"),
    ],
    ids=["duplicate-targets", "compensator-is-a-target", "duplicate-receivers"],
)
def test_repeated_heads_are_refused_naming_the_field(spec, loc, message):
    with pytest.raises(ValidationError, match=message) as info:
        parse_spec({**spec, "prompts": TINY_PAIRS})
    assert _loc(info.value) == loc
    # the same head on another input is a different receiver
    parse_spec({"method": "path_patching", "prompts": TINY_PAIRS,
                "receivers": [{"layer": 1, "head": 2, "input": "q"}, {"layer": 1, "head": 2, "input": "k"}]})


def test_zero_gap_under_normalized_logit_diff_is_an_input_error_on_metric(tiny_model):
    with pytest.raises(InputError, match="normalized_logit_diff is undefined here") as info:
        run(tiny_model, {"prompts": SAME, "metric": "normalized_logit_diff"})
    assert info.value.field == "metric"


def test_identical_prompts_are_warned_about(tiny_model):
    result = run(tiny_model, {"prompts": [TINY_PAIRS[0], SAME[1]], "component": "layer"})
    assert [w for w in result.warnings if "same tokens" in w] == [
        "Prompt 2: the clean and corrupted prompts are the same tokens, so nothing moved from one run to the "
        "other can show an effect."
    ]


def test_a_small_gap_is_warned_about_with_its_threshold(tiny_model, perturbed_model):
    small = run(tiny_model, {"prompts": TINY_PAIRS, "component": "layer"})  # a random model: gap -0.13
    assert abs(small.clean - small.corrupted) < SMALL_GAP["logit_diff"]
    assert any(w.startswith("The clean–corrupted gap is -0.126 logits, under 1:") for w in small.warnings)
    large = run(perturbed_model, {"prompts": TINY_PAIRS, "component": "layer"})  # gap 2.2
    assert abs(large.clean - large.corrupted) > SMALL_GAP["logit_diff"]
    assert not any("gap" in w for w in large.warnings)
    kl = run(perturbed_model, {"prompts": TINY_PAIRS, "component": "layer", "metric": "kl"})
    assert any("nats, under 0.1" in w for w in kl.warnings) == (abs(kl.corrupted) < SMALL_GAP["kl"])
