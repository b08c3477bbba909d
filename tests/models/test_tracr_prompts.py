"""The Tracr models' prompt families: each pair's answer and wrong answer are the program's output
at the final position on the clean and the corrupted prompt (the plain-Python programs of
tracr_programs.py), the prompts differ in one word, and on the shipped model the logit difference
is what the card says: +1 / -1, or S (c1 - c2)^2 / -S (c1 - c2)^2 for the numerical program."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

import patchstudio
from patchstudio.models.tracr import MAX_SEQ_LEN, TASKS
from patchstudio.models.tracr.prompts import FAMILIES, pairs
from tracr_programs import PROGRAMS


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("length", range(2, MAX_SEQ_LEN + 1))
def test_answers_are_the_programs_outputs(name, length):
    made = pairs(name, 50, seed=3, length=length)
    assert made == pairs(name, 50, seed=3, length=length) != pairs(name, 50, seed=4, length=length)
    for p in made:
        clean, corrupted = p["clean"].split(), p["corrupted"].split()
        assert len(clean) == len(corrupted) == length
        assert set(clean + corrupted) <= set(TASKS[name].vocab)
        assert sum(a != b for a, b in zip(clean, corrupted)) == 1
        assert p["answer"] == PROGRAMS[name](clean)[-1] != p["wrong"] == PROGRAMS[name](corrupted)[-1]
        assert p["answer"] in TASKS[name].outputs and p["wrong"] in TASKS[name].outputs


def test_reverse_changes_the_first_word():
    assert all(p["clean"].split()[1:] == p["corrupted"].split()[1:] for p in pairs("tracr-reverse", 50))


@pytest.mark.parametrize("name", list(TASKS))
def test_bad_lengths_are_refused(name):
    with pytest.raises(ValueError, match="length 6"):
        pairs(name, 1, length=MAX_SEQ_LEN + 1)


@pytest.mark.parametrize("name", list(TASKS))
def test_logit_difference_on_the_model_is_the_cards(name):
    model, task = patchstudio.load_model(name), TASKS[name]
    for p in pairs(name, 10, seed=5):
        answer, wrong = model.to_single_token(p["answer"]), model.to_single_token(p["wrong"])
        with torch.no_grad():
            diffs = [float((lambda lg: lg[answer] - lg[wrong])(model(model.to_tokens(p[k]))[0, -1]))
                     for k in ("clean", "corrupted")]
        gap = task.logit_scale * float(Fraction(p["answer"]) - Fraction(p["wrong"])) ** 2 if task.numerical else 1.0
        assert diffs == [pytest.approx(gap, abs=1e-3), pytest.approx(-gap, abs=1e-3)]


def test_every_model_has_a_family_with_a_note():
    assert set(FAMILIES) == set(TASKS)
    assert all(len(note) > 80 for _, note in FAMILIES.values())
