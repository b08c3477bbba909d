"""Shared fixtures: small seeded models built in-process; nothing is downloaded."""

from __future__ import annotations

import pytest

from helpers import build_tiny_model, build_word_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return build_word_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def perturbed_model(tiny_tokenizer):
    """Non-zero unembedding bias, non-trivial LayerNorm weights and biases, four layers."""
    return build_tiny_model(tiny_tokenizer, n_layers=4, perturb=True, seed=3)
