"""The model profile: what the engine checks about a model is found once, from shared probe passes,
and goes away with the model."""

from __future__ import annotations

import gc
import weakref

import torch

from helpers import build_tiny_model
from patchstudio.engine.profile import FLAGS, ModelProfile, profile
from patchstudio.engine.run import run

PAIR = {"clean": "When Mary and John went to the store , John gave a drink to",
        "corrupted": "When Mary and John went to the store , Mary gave a drink to",
        "answer": "Mary", "wrong": "John"}
SPEC = {"prompts": [PAIR], "component": "head", "positions": "each"}


def _count_passes(model) -> list[int]:
    """A list that grows by one per forward pass of ``model`` (every pass embeds its tokens once)."""
    calls: list[int] = []
    model.embed.register_forward_hook(lambda module, args, out: calls.append(1))
    return calls


def test_a_second_run_probes_nothing_again(tiny_tokenizer, monkeypatch):
    model = build_tiny_model(tiny_tokenizer, n_layers=2, seed=11)
    passes = _count_passes(model)
    probe_passes: list[int] = []
    real_find = ModelProfile._find

    def counting_find(self) -> None:
        before = len(passes)
        real_find(self)
        probe_passes.append(len(passes) - before)

    monkeypatch.setattr(ModelProfile, "_find", counting_find)

    first = run(model, SPEC)
    first_passes = len(passes)
    # found once, in one go: a plain pass, then the suffix pass and the trimmed MLP checked against it
    assert probe_passes == [3]
    assert set(profile(model).found) == set(FLAGS)

    del passes[:]
    second = run(model, SPEC)
    assert probe_passes == [3]  # no probe again
    assert len(passes) == first_passes - 3  # the same work, less the probe passes
    assert torch.equal(torch.tensor(second.values), torch.tensor(first.values))

    # other methods ask other flags (heads add up, suffix and trim in attribution): already found
    run(model, {"method": "self_repair", "ablation": "zero", "prompts": [PAIR], "targets": [{"layer": 0, "head": 1}]})
    run(model, {"method": "attribution_patching", "prompts": [PAIR], "component": "head"})
    assert probe_passes == [3]


def test_the_profile_goes_with_its_model(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, n_layers=2, seed=12)
    run(model, SPEC)
    found = weakref.ref(profile(model))
    assert found() is not None and found().found["suffix_ok"] is True
    del model
    gc.collect()
    assert found() is None


def test_a_one_token_prompt_needs_no_probe(tiny_tokenizer):
    """Under two tokens there is no suffix to cut: answered without running the model."""
    model = build_tiny_model(tiny_tokenizer, n_layers=2, seed=13)
    passes = _count_passes(model)
    assert not profile(model).suffix_supported(1)
    assert passes == [] and profile(model).found == {}


def test_stacked_weights_follow_an_in_place_update(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, n_layers=2, seed=11)
    found = profile(model)
    assert torch.equal(found.stacked("W_Q"), model.W_Q)
    assert found.stacked("W_Q") is found.stacked("W_Q")  # kept while no parameter changes
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # as an optimizer step updates them: in place
    assert torch.equal(found.stacked("W_Q"), model.W_Q) and torch.equal(found.stacked("W_O"), model.W_O)
