"""Model loaders for server and worker processes started by tests (``--model-loader
model_loaders:tiny``): the same tiny seeded model the in-process tests build, under any allow-listed
name. Test-only: the product's allow-list and loaders never see it."""

from __future__ import annotations

import tempfile
from functools import lru_cache

from helpers import build_tiny_model, build_word_tokenizer


@lru_cache(maxsize=None)
def _tiny():
    return build_tiny_model(build_word_tokenizer(tempfile.mkdtemp(prefix="patchstudio-tok-")))


def tiny(name: str):
    return _tiny()
