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


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """family -> its save_pretrained directory (tests/family_models.py), each built once per session."""
    from family_models import build_family

    built: dict[str, object] = {}

    def get(family: str):
        if family not in built:
            built[family] = build_family(family, tmp_path_factory.mktemp(f"family_{family}"))
        return built[family]

    return get


@pytest.fixture(scope="session")
def word_models(tmp_path_factory):
    """family -> a model whose tokenizer also knows the built-in prompt families' words
    (``build_family(..., words=True)``), loaded as users load one; each built once per session."""
    import patchstudio
    from family_models import build_family

    built: dict[str, object] = {}

    def get(family: str):
        if family not in built:
            directory = build_family(family, tmp_path_factory.mktemp(f"words_{family}"), words=True)
            built[family] = patchstudio.load_model(str(directory))
        return built[family]

    return get


@pytest.fixture(scope="session")
def family_models(family_dirs):
    """family -> a TransformerBridge loaded the way users load one: ``patchstudio.load_model(directory)``."""
    import patchstudio

    def get(family: str):
        return patchstudio.load_model(str(family_dirs(family)))

    return get


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where no GPU is available."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for this module: the family models are tiny, and on a shared 2-core
    machine intra-op threads mostly wait on each other (a tiny matmul took milliseconds instead of
    microseconds, and the family suite ran 30x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
