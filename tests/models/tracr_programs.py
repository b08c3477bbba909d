"""The Tracr models' programs in plain Python (no RASP, no JAX), from the programs' definitions:
the references the shipped models are tested against."""

from __future__ import annotations

import itertools
from fractions import Fraction


def reverse(words: list[str]) -> list[str]:
    return words[::-1]


def frac_prevs(words: list[str]) -> list[str]:
    """At position i: the fraction of words 0..i that are "x", as a reduced fraction."""
    return [str(Fraction(words[: i + 1].count("x"), i + 1)) for i in range(len(words))]


def sort(words: list[str]) -> list[str]:
    """Ascending by value; Python's sort is stable, as the program's keys x + i/5 make it."""
    return sorted(words, key=int)


PROGRAMS = {"tracr-reverse": reverse, "tracr-proportion": frac_prevs, "tracr-sort": sort}


def inputs(vocab: tuple[str, ...], length: int) -> list[list[str]]:
    """Every sequence of ``length`` words from ``vocab``."""
    return [list(words) for words in itertools.product(vocab, repeat=length)]
