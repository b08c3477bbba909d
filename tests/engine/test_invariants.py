"""Invariants any correct patching engine satisfies, on the tiny model."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY_PAIRS
from patchstudio.engine.run import run


def test_identical_clean_and_corrupted_give_no_effect_anywhere(tiny_model):
    same = [{**p, "corrupted": p["clean"]} for p in TINY_PAIRS]
    for component, positions in [("head", "each"), ("resid_pre", "each"), ("pattern", "all"), ("layer", "each")]:
        result = run(tiny_model, {"prompts": same, "component": component, "positions": positions})
        values = torch.tensor(result.values)
        assert result.clean == pytest.approx(result.corrupted)
        assert torch.allclose(values, torch.full_like(values, result.clean), atol=1e-5), component


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_whole_residual_stream_patch_gives_the_source_run(tiny_model, direction):
    """Patching resid_pre at every position of layer 0 (or resid_post of the last layer) reproduces
    the source run exactly: clean for denoising, corrupted for noising."""
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "resid_pre", "direction": direction})
    target = result.clean if direction == "denoise" else result.corrupted
    assert result.values[0] == pytest.approx(target, abs=1e-5)
    post = run(tiny_model, {"prompts": TINY_PAIRS, "component": "resid_post", "direction": direction})
    assert post.values[-1] == pytest.approx(target, abs=1e-5)
    layer = run(tiny_model, {"prompts": TINY_PAIRS, "component": "layer", "direction": direction})
    # patching one block's contribution is not the whole source run
    assert all(v != pytest.approx(target, abs=1e-5) for v in layer.values[:1])


def test_positions_that_do_not_differ_have_no_effect_at_layer_zero(tiny_model):
    """At resid_pre of layer 0 only the positions where the prompts differ carry information."""
    result = run(tiny_model, {"prompts": TINY_PAIRS[:1], "component": "resid_pre", "positions": "each"})
    differ = set(result.prompts[0].differ)
    assert differ == {10}
    for pos, value in enumerate(result.values[0]):
        if pos not in differ:
            assert value == pytest.approx(result.corrupted, abs=1e-5)
    assert result.values[0][10] != pytest.approx(result.corrupted, abs=1e-3)


def test_chunking_does_not_change_the_values(tiny_model):
    spec = {"prompts": TINY_PAIRS, "component": "head", "positions": "each"}
    whole = run(tiny_model, spec)
    chunked = run(tiny_model, spec, chunk_rows=3)
    assert torch.allclose(torch.tensor(whole.values), torch.tensor(chunked.values), atol=1e-5)


def test_progress_reports_every_patched_run(tiny_model):
    seen = []
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head"}, chunk_rows=3,
                 progress=lambda done, total: seen.append((done, total)))
    n = tiny_model.cfg.n_layers * tiny_model.cfg.n_heads * len(TINY_PAIRS)
    assert seen[-1] == (n, n)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert result.labels["layer"] == ["0", "1"]


def test_result_labels_and_tokens(tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head", "positions": "each"})
    assert result.axes == ["layer", "pos", "head"]
    # the position axis names roles (both pairs are ABBA IOI prompts of one template: every token has one)
    assert result.labels["pos"] == ["BOS", "When", "IO", "and", "S1", "went", "to", "the", "PLACE", ",", "S2", "gave",
                                    "a", "OBJECT", "END"]
    assert [r.at for r in result.roles] == [[[i], [i]] for i in range(15)]
    assert result.prompts[0].clean[:3] == ["<bos>", "When", "Mary"]
    assert (result.prompts[0].answer, result.prompts[0].wrong) == ("Mary", "John")
    assert len(result.values) == 2 and len(result.values[0]) == 15 and len(result.values[0][0]) == 4
