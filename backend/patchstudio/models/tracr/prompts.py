"""Prompt families for the Tracr models: clean/corrupted pairs that differ in one input token and
whose program outputs differ at the final position (where the project's metrics read).

Pure Python and seeded, like ``models/prompts.py``: each generator draws from its own
``random.Random(seed)``. A pair is a dict with ``clean``, ``corrupted``, ``answer`` (the clean
prompt's output at the final position) and ``wrong`` (the corrupted prompt's), the format of a
spec's ``prompts``. Prompts are words separated by spaces; the tokenizer prepends ``<bos>``.
"""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Callable

from patchstudio.models.tracr import MAX_SEQ_LEN, TASKS


def _pair(clean: list[str], corrupted: list[str], answer: str, wrong: str) -> dict[str, str]:
    return {"clean": " ".join(clean), "corrupted": " ".join(corrupted), "answer": answer, "wrong": wrong}


def _check_length(length: int, least: int) -> None:
    if not least <= length <= MAX_SEQ_LEN:
        raise ValueError(f"length {length}: use {least} to {MAX_SEQ_LEN} tokens")


def reverse_pairs(n: int, seed: int = 0, length: int = MAX_SEQ_LEN) -> list[dict[str, str]]:
    """Random words; the corrupted prompt changes the first word. reverse's output at the final
    position is the first word, so answer = clean first word, wrong = corrupted first word."""
    _check_length(length, 2)
    vocab, rng = TASKS["tracr-reverse"].vocab, random.Random(seed)
    out = []
    for _ in range(n):
        clean = [rng.choice(vocab) for _ in range(length)]
        corrupted = [rng.choice([w for w in vocab if w != clean[0]]), *clean[1:]]
        out.append(_pair(clean, corrupted, clean[0], corrupted[0]))
    return out


def proportion_pairs(n: int, seed: int = 0, length: int = MAX_SEQ_LEN) -> list[dict[str, str]]:
    """Random words with at least one "x"; the corrupted prompt turns one "x" into another word.
    frac_prevs's output at the final position is the fraction of "x" among all the words, so
    answer = k/length and wrong = (k-1)/length (reduced fractions: the output tokens)."""
    _check_length(length, 1)
    others, rng = [w for w in TASKS["tracr-proportion"].vocab if w != "x"], random.Random(seed)
    out = []
    for _ in range(n):
        clean = [rng.choice(TASKS["tracr-proportion"].vocab) for _ in range(length)]
        if "x" not in clean:
            clean[rng.randrange(length)] = "x"
        corrupted = list(clean)
        corrupted[rng.choice([i for i, w in enumerate(clean) if w == "x"])] = rng.choice(others)
        k = clean.count("x")
        out.append(_pair(clean, corrupted, str(Fraction(k, length)), str(Fraction(k - 1, length))))
    return out


def sort_pairs(n: int, seed: int = 0, length: int = MAX_SEQ_LEN) -> list[dict[str, str]]:
    """Random numbers with one largest; the corrupted prompt replaces the largest by a smaller
    number. sort's output at the final position is the largest number, so answer = the clean
    prompt's maximum and wrong = the corrupted prompt's."""
    _check_length(length, 1)
    numbers, rng = [int(w) for w in TASKS["tracr-sort"].vocab], random.Random(seed)
    out = []
    for _ in range(n):
        top = rng.choice(numbers[1:])
        smaller = [m for m in numbers if m < top]
        clean = [rng.choice(smaller) for _ in range(length)]
        where = rng.randrange(length)
        clean[where] = top
        corrupted = list(clean)
        corrupted[where] = rng.choice(smaller)
        out.append(_pair([str(m) for m in clean], [str(m) for m in corrupted], str(top), str(max(corrupted))))
    return out


# model name -> (generator, what a patching result on its pairs can and cannot show)
FAMILIES: dict[str, tuple[Callable[..., list[dict[str, str]]], str]] = {
    "tracr-reverse": (
        reverse_pairs,
        "Tests the copy: the last layer's head reads the first word's token (its value input) at the "
        "position its query picks. Both prompts have the same length, so the length, opp_idx and "
        "opp_idx-1 computations (a0.h0, m0, m1, m2) are identical in the two runs: patching them "
        "changes nothing, although they are in the circuit.",
    ),
    "tracr-proportion": (
        proportion_pairs,
        "Tests the whole program: the MLP that marks each \"x\" (m0) differs at the changed word, and "
        "the head that averages the marks (a1.h0) carries the difference to the final position.",
    ),
    "tracr-sort": (
        sort_pairs,
        "Tests the whole program: the changed word changes its sort key (m0), the count of smaller "
        "keys at every position (a1.h0 and m1, the selector width) and so which word the last "
        "head (a2.h0) moves to the final position.",
    ),
}


def pairs(model: str, n: int, seed: int = 0, length: int = MAX_SEQ_LEN) -> list[dict[str, str]]:
    """``n`` pairs of the model's family (``FAMILIES``)."""
    return FAMILIES[model][0](n, seed=seed, length=length)
