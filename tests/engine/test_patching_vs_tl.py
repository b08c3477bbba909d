"""The engine equals TransformerLens's own patching module (one full forward pass per patch) to 1e-4."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tlp

import references as R
from helpers import TINY_PAIRS
from patchstudio.engine.run import run

TOL = 1e-4


def _whole_activation_setter(corrupted_activation, index, clean_activation):
    corrupted_activation[...] = clean_activation
    return corrupted_activation


def _tl_all_pos_stream(activation_name):
    """TL's generic core with one patch per layer covering every position (no named variant exists)."""

    def fn(model, corrupted_tokens, clean_cache, metric):
        return tlp.generic_activation_patch(
            model, corrupted_tokens, clean_cache, metric,
            patch_setter=_whole_activation_setter, activation_name=activation_name, index_axis_names=("layer",),
        )

    return fn


def _tl_by_pos_stream(activation_name):
    def fn(model, corrupted_tokens, clean_cache, metric):
        return tlp.generic_activation_patch(
            model, corrupted_tokens, clean_cache, metric,
            patch_setter=tlp.layer_pos_patch_setter, activation_name=activation_name, index_axis_names=("layer", "pos"),
        )

    return fn


def _pattern_by_pos(model, corrupted_tokens, clean_cache, metric):
    # TL orders this sweep (layer, head, dest_pos); the engine uses (layer, pos, head) everywhere.
    return tlp.get_act_patch_attn_head_pattern_by_pos(model, corrupted_tokens, clean_cache, metric).permute(0, 2, 1)


CASES = {
    ("head", "all"): tlp.get_act_patch_attn_head_out_all_pos,
    ("head", "each"): tlp.get_act_patch_attn_head_out_by_pos,
    ("head_q", "all"): tlp.get_act_patch_attn_head_q_all_pos,
    ("head_q", "each"): tlp.get_act_patch_attn_head_q_by_pos,
    ("head_k", "all"): tlp.get_act_patch_attn_head_k_all_pos,
    ("head_k", "each"): tlp.get_act_patch_attn_head_k_by_pos,
    ("head_v", "all"): tlp.get_act_patch_attn_head_v_all_pos,
    ("head_v", "each"): tlp.get_act_patch_attn_head_v_by_pos,
    ("pattern", "all"): tlp.get_act_patch_attn_head_pattern_all_pos,
    ("pattern", "each"): _pattern_by_pos,
    ("resid_pre", "each"): tlp.get_act_patch_resid_pre,
    ("resid_mid", "each"): tlp.get_act_patch_resid_mid,
    ("attn_out", "each"): tlp.get_act_patch_attn_out,
    ("mlp_out", "each"): tlp.get_act_patch_mlp_out,
    ("resid_post", "each"): _tl_by_pos_stream("resid_post"),
    ("resid_pre", "all"): _tl_all_pos_stream("resid_pre"),
    ("attn_out", "all"): _tl_all_pos_stream("attn_out"),
    ("mlp_out", "all"): _tl_all_pos_stream("mlp_out"),
}


def tl_metric(model, metric, clean_logits):
    """The spec's metric on TL's batched full logits (tests/references.py), for the tiny pairs."""
    return R.tl_metric(model, R.pairs_of(model, TINY_PAIRS), metric, clean_logits)


def _tl_reference(model, key, direction, metric):
    clean = model.to_tokens([p["clean"] for p in TINY_PAIRS])
    corrupted = model.to_tokens([p["corrupted"] for p in TINY_PAIRS])
    clean_logits, clean_cache = model.run_with_cache(clean)
    corrupted_logits, corrupted_cache = model.run_with_cache(corrupted)
    base, source_cache = (corrupted, clean_cache) if direction == "denoise" else (clean, corrupted_cache)
    fn = tl_metric(model, metric, clean_logits)
    with torch.no_grad():
        ref = CASES[key](model, base, source_cache, fn)
    return ref, float(fn(clean_logits).detach()), float(fn(corrupted_logits).detach())


@pytest.mark.parametrize("key", list(CASES), ids=lambda k: f"{k[0]}-{k[1]}")
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_engine_equals_transformer_lens(tiny_model, key, direction):
    component, positions = key
    ref, clean, corrupted = _tl_reference(tiny_model, key, direction, "logit_diff")
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": component, "positions": positions,
                              "direction": direction, "metric": "logit_diff"})
    got = torch.tensor(result.values)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    assert result.clean == pytest.approx(clean, abs=TOL)
    assert result.corrupted == pytest.approx(corrupted, abs=TOL)
    # the sweep does something: not every patch leaves the base metric unchanged
    base = corrupted if direction == "denoise" else clean
    assert (got - base).abs().max() > 1e-3


@pytest.mark.parametrize("metric", ["prob", "loss", "kl"])
@pytest.mark.parametrize("key", [("head", "all"), ("resid_pre", "each")], ids=lambda k: f"{k[0]}-{k[1]}")
def test_every_metric_equals_transformer_lens(tiny_model, metric, key):
    ref, clean, corrupted = _tl_reference(tiny_model, key, "denoise", metric)
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": key[0], "positions": key[1], "metric": metric})
    assert torch.allclose(torch.tensor(result.values), ref, atol=TOL)
    assert result.clean == pytest.approx(clean, abs=TOL)
    assert result.corrupted == pytest.approx(corrupted, abs=TOL)


def test_normalized_logit_diff_is_the_affine_map_of_tl_logit_diff(tiny_model):
    key = ("head", "all")
    ref, clean, corrupted = _tl_reference(tiny_model, key, "denoise", "logit_diff")
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head", "metric": "normalized_logit_diff"})
    assert torch.allclose(torch.tensor(result.values), (ref - corrupted) / (clean - corrupted), atol=TOL)
    assert (result.clean, result.corrupted) == (1.0, 0.0)
    assert sum(result.per_prompt_clean) / len(TINY_PAIRS) == pytest.approx(1.0, abs=1e-6)


def test_layer_patch_equals_plain_hook_reference(tiny_model):
    """Patching a block's contribution: resid_post := resid_pre (own run) + (clean resid_post - clean resid_pre)."""
    model = tiny_model
    clean = model.to_tokens([p["clean"] for p in TINY_PAIRS])
    corrupted = model.to_tokens([p["corrupted"] for p in TINY_PAIRS])
    _, clean_cache = model.run_with_cache(clean)
    metric = tl_metric(model, "logit_diff", model(clean))
    seq = clean.shape[1]
    expected = torch.zeros(model.cfg.n_layers, seq)
    for layer in range(model.cfg.n_layers):
        delta = clean_cache[f"blocks.{layer}.hook_resid_post"] - clean_cache[f"blocks.{layer}.hook_resid_pre"]
        for pos in range(seq):
            store = {}

            def keep_pre(act, hook):
                store["pre"] = act.clone()

            def set_post(act, hook, pos=pos, delta=delta):
                act = act.clone()
                act[:, pos] = store["pre"][:, pos] + delta[:, pos]
                return act

            with torch.no_grad():
                logits = model.run_with_hooks(corrupted, fwd_hooks=[
                    (f"blocks.{layer}.hook_resid_pre", keep_pre), (f"blocks.{layer}.hook_resid_post", set_post)])
            expected[layer, pos] = metric(logits)
    result = run(model, {"prompts": TINY_PAIRS, "component": "layer", "positions": "each"})
    assert torch.allclose(torch.tensor(result.values), expected, atol=TOL)
