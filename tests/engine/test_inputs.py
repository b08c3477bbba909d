"""Bad inputs: each gives an InputError whose message names the problem (what a user reads)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from helpers import TINY_PAIRS
from patchstudio.engine.inputs import InputError
from patchstudio.engine.run import run

P1, P2 = TINY_PAIRS
CLEAN_TOKENS = ["<bos>", "When", "Mary", "and", "John", "went", "to", "the", "store", ",", "John", "gave", "a", "drink", "to"]
# Same template as P1 but one word shorter (14 tokens instead of 15).
SHORT = {
    "clean": "When Mary and John went to the store , John gave a ring",
    "corrupted": "When Mary and John went to the store , Mary gave a ring",
    "answer": "Mary",
    "wrong": "John",
}

# 32 tokens with BOS: the longest prompt the tiny model (n_ctx 32) takes.
LONG = {
    "clean": " ".join(["the"] * 30) + " Mary",
    "corrupted": " ".join(["the"] * 30) + " John",
    "answer": "Mary",
    "wrong": "John",
}


def _error(model, spec, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        run(model, spec, **kwargs)
    return info.value


# --- clean and corrupted of different lengths ---------------------------------------------------------


@pytest.mark.parametrize(
    "corrupted, corrupted_tokens, first_difference",
    [
        # one token longer: the extra token is at the end, the first difference is the name at 10
        ("When Mary and John went to the store , Mary gave a drink to the",
         CLEAN_TOKENS[:10] + ["Mary", "gave", "a", "drink", "to", "the"], 10),
        # one token shorter: 'the' dropped, everything shifts from position 7
        ("When Mary and John went to store , Mary gave a drink to",
         CLEAN_TOKENS[:7] + ["store", ",", "Mary", "gave", "a", "drink", "to"], 7),
        # a strict prefix: no differing token, the first difference is where the shorter one ends
        ("When Mary and John went to the store , John gave a drink",
         CLEAN_TOKENS[:14], 14),
    ],
    ids=["longer", "shorter", "prefix"],
)
def test_length_mismatch_shows_both_tokenizations(tiny_model, corrupted, corrupted_tokens, first_difference):
    exc = _error(tiny_model, {"prompts": [{**P1, "corrupted": corrupted}]})
    msg = str(exc)
    assert msg.startswith("prompt 1: clean and corrupted prompts must have the same number of tokens")
    assert f"clean has 15 {CLEAN_TOKENS}" in msg
    assert f"corrupted has {len(corrupted_tokens)} {corrupted_tokens}" in msg
    assert msg.endswith(f"they first differ at position {first_difference}")
    assert exc.field == "corrupted"
    assert exc.detail == {
        "clean_tokens": CLEAN_TOKENS,
        "corrupted_tokens": corrupted_tokens,
        "first_difference": first_difference,
    }


def test_length_mismatch_names_the_prompt_index(tiny_model):
    bad = {**P2, "clean": P2["clean"] + " the"}
    msg = str(_error(tiny_model, {"prompts": [P1, bad]}))
    assert msg.startswith("prompt 2: clean and corrupted prompts must have the same number of tokens")
    assert "clean has 16" in msg and "corrupted has 15" in msg


# --- answers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message, detail",
    [
        ("answer", "Zebra", "prompt 1: answer 'Zebra' is not in the model's vocabulary", {}),
        ("wrong", "  Zebra ", "prompt 1: wrong 'Zebra' is not in the model's vocabulary", {}),
    ],
    ids=["answer-unknown", "wrong-unknown-padded"],
)
def test_bad_answer(tiny_model, field, value, message, detail):
    exc = _error(tiny_model, {"prompts": [{**P1, field: value}]})
    assert str(exc) == message
    assert exc.field == field
    assert exc.detail == detail


# Answers of several tokens are scored as sequences by activation patching and ablation
# (tests/engine/test_families.py); the methods that read one token refuse them, naming the field.
@pytest.mark.parametrize(
    "method, field, value, pieces",
    [
        ("attribution_patching", "answer", "Mary John", ["Mary", "John"]),
        ("input_influence", "wrong", "the store ,", ["the", "store", ","]),
    ],
    ids=["answer-two-words", "wrong-three-words"],
)
def test_multi_token_answer_refused_where_one_token_is_read(tiny_model, method, field, value, pieces):
    exc = _error(tiny_model, {"method": method, "prompts": [{**P1, field: value}]})
    label = method.replace("_", " ")
    assert str(exc) == (
        f"prompt 1: {field} {value!r} is {len(pieces)} tokens {pieces}; {label} needs a single-token {field} "
        "(answers of several tokens work with activation patching and ablation)"
    )
    assert exc.field == field
    assert exc.detail == {"tokens": pieces}


def test_multi_token_answer_is_accepted_by_activation_patching(tiny_model):
    result = run(tiny_model, {"prompts": [{**P1, "answer": "Mary John"}]})
    assert result.prompts[0].answer == "Mary John"


def test_bad_answer_in_second_prompt_names_it(tiny_model):
    msg = str(_error(tiny_model, {"prompts": [P1, {**P2, "answer": "Zebra"}]}))
    assert msg == "prompt 2: answer 'Zebra' is not in the model's vocabulary"


# --- unknown words, context length -----------------------------------------------------------------


@pytest.mark.parametrize(
    "field, text, message, unk_at",
    [
        ("clean", "When Mary and John went to the zoo , John gave a drink to",
         "'zoo' is not in this model's vocabulary (it would become '<unk>')", [8]),
        ("corrupted", "When Mary and John went to the zoo , Mary gave a cake to",
         "'zoo', 'cake' are not in this model's vocabulary (they would become '<unk>')", [8, 13]),
    ],
    ids=["clean-one", "corrupted-two"],
)
def test_unknown_word_in_prompt(tiny_model, field, text, message, unk_at):
    exc = _error(tiny_model, {"prompts": [{**P1, field: text}]})
    assert str(exc) == f"prompt 1: {message}; check the spelling or use words the model knows"
    assert exc.field == field
    assert [i for i, t in enumerate(exc.detail["tokens"]) if t == "<unk>"] == unk_at


@pytest.mark.parametrize("n_words, ok", [(31, True), (32, False), (40, False)])
def test_prompt_longer_than_context(tiny_model, n_words, ok):
    # n_ctx is 32; BOS takes one position. The names at the end are where clean and corrupted differ,
    # so a silently truncated prompt would lose exactly the tokens the experiment is about.
    filler = " ".join(["the"] * (n_words - 1))
    spec = {"prompts": [{"clean": filler + " Mary", "corrupted": filler + " John", "answer": "Mary", "wrong": "John"}],
            "component": "resid_post"}
    if ok:
        result = run(tiny_model, spec)
        assert len(result.prompts[0].clean) == 32
        assert result.prompts[0].differ == [31]
    else:
        exc = _error(tiny_model, spec)
        assert str(exc) == f"prompt 1: the clean prompt is {n_words + 1} tokens, longer than the model's context of 32"
        assert exc.field == "clean"


# --- budget ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, budget, message",
    [
        ({"prompts": TINY_PAIRS}, 7,
         "this sweep needs 16 patched runs (2 prompt(s) x 8 patches), over the budget of 7"),
        ({"prompts": [P1]}, 7,
         "this sweep needs 8 patched runs (1 prompt(s) x 8 patches), over the budget of 7"),
        ({"prompts": TINY_PAIRS, "component": "resid_pre", "positions": "each"}, 59,
         "this sweep needs 60 patched runs (2 prompt(s) x 30 patches), over the budget of 59"),
        ({"prompts": TINY_PAIRS, "component": "head", "positions": "each"}, 239,
         "this sweep needs 240 patched runs (2 prompt(s) x 120 patches), over the budget of 239"),
        ({"prompts": [LONG] * 4, "component": "head", "positions": "each"}, 1000,
         "this sweep needs 1,024 patched runs (4 prompt(s) x 256 patches), over the budget of 1,000"),
        ({"method": "ablation", "ablation": "zero", "prompts": [P1], "component": "mlp_out"}, 1,
         "this sweep needs 2 patched runs (1 prompt(s) x 2 patches), over the budget of 1"),
    ],
    ids=["heads-2-prompts", "heads-1-prompt", "resid-each", "heads-each", "heads-each-thousands", "ablation"],
)
def test_over_budget(tiny_model, spec, budget, message):
    exc = _error(tiny_model, spec, max_patched_runs=budget)
    assert str(exc) == message + "; use fewer prompts, positions 'all', or raise the budget (PATCHSTUDIO_MAX_PATCHED_RUNS)"
    assert exc.field == "prompts"


def test_exactly_on_budget_runs(tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS}, max_patched_runs=16)
    assert result.axes == ["layer", "head"]
    assert [len(row) for row in result.values] == [4, 4]


# --- one length across the prompt set ---------------------------------------------------------------


SAME_LENGTH_MSG = (
    "all prompts must have the same number of tokens for this experiment (a mean or resample ablation "
    "takes activations from other prompts position by position): prompt 1 has 15, prompt {bad} has 14; "
    "use prompts from one template"
)


@pytest.mark.parametrize(
    "extra, prompts, bad",
    [
        ({"method": "ablation"}, [P1, SHORT], 2),
        ({"method": "ablation", "ablation": "resample"}, [P1, SHORT], 2),
        ({"method": "ablation", "positions": "each", "component": "resid_pre"}, [P1, P2, SHORT], 3),
    ],
    ids=["ablation-mean", "ablation-resample", "ablation-mean-each-third"],
)
def test_prompts_of_different_lengths(tiny_model, extra, prompts, bad):
    exc = _error(tiny_model, {"prompts": prompts, **extra})
    assert str(exc) == SAME_LENGTH_MSG.format(bad=bad)
    assert "all prompts must have the same number of tokens" in str(exc)
    assert exc.field == "prompts"


@pytest.mark.parametrize(
    "extra", [{}, {"method": "ablation", "ablation": "zero"}], ids=["patching-all", "ablation-zero"]
)
def test_prompts_of_different_lengths_fine_when_not_needed(tiny_model, extra):
    result = run(tiny_model, {"prompts": [P1, SHORT], "component": "attn_out", **extra})
    assert result.axes == ["layer"]
    assert [len(p.clean) for p in result.prompts] == [15, 14]


@pytest.mark.parametrize("extra", [{}, {"component": "resid_pre"}, {"method": "ablation", "ablation": "zero"}],
                         ids=["patching-head", "patching-resid", "ablation-zero"])
def test_prompts_of_different_lengths_are_swept_per_position_by_role(tiny_model, extra):
    """P1 (a built-in template: PLACE, OBJECT) and SHORT (no template, one word shorter): the axis holds
    the roles both have, in P1's order, and a warning names the ones left off."""
    result = run(tiny_model, {"prompts": [P1, P2, SHORT], "component": "head", "positions": "each", **extra})
    assert result.labels["pos"] == ["BOS", "When", "IO", "and", "S1", "went", "to", "the", ",", "S2", "gave", "a", "END"]
    assert [r.at for r in result.roles][-1] == [[14], [14], [13]]  # END: the final token of each
    assert {r.n for r in result.roles} == {3}
    assert any("left off: PLACE (in 2 of 3 prompts), OBJECT (in 2 of 3 prompts), store (in 1 of 3 prompts)." in w
               for w in result.warnings)


# --- spec level ----------------------------------------------------------------------------------------


def test_empty_prompt_set_is_a_spec_error(tiny_model):
    with pytest.raises(ValidationError) as info:
        run(tiny_model, {"prompts": []})
    assert [e["loc"] for e in info.value.errors()] == [("activation_patching", "prompts")]
    assert "the prompt set is empty: give at least one prompt pair" in str(info.value)


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)
    exc = InputError("x is wrong", field="x")
    assert (str(exc), exc.field, exc.detail) == ("x is wrong", "x", {})
