"""Fixtures of the Tracr model tests: each test that asks for ``tracr_name`` runs once per model; the
prompt pairs the engine and direct-effect tests share (``tracr_prompts``, ``tracr_pairs``)."""

from __future__ import annotations

import pytest

import patchstudio
import references as R
from patchstudio.models.tracr import TASKS
from patchstudio.models.tracr.prompts import pairs as family_pairs


@pytest.fixture(scope="module", params=list(TASKS))
def tracr_name(request):
    return request.param


@pytest.fixture(scope="module")
def tracr_model(tracr_name):
    return patchstudio.load_model(tracr_name)


@pytest.fixture(scope="module")
def tracr_prompts(tracr_name):
    """Three pairs of the model's own prompt family. 4 words, not the full 5: references.following_ids
    tokenizes prompt + answer with TransformerLens's default truncation to n_ctx, which would cut the
    answer off a full-length prompt."""
    return family_pairs(tracr_name, 3, seed=1, length=4)


@pytest.fixture(scope="module")
def tracr_pairs(tracr_model, tracr_prompts):
    """``tracr_prompts`` tokenized for the plain-hook references (tests/references.py)."""
    return R.pairs_of(tracr_model, tracr_prompts)
