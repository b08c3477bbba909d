"""Every saving of the fast core is exact: skipped patches, suffix passes, rows joining late and
merged passes give transformer_lens.patching's values (one full forward pass per patch) to 1e-4.

Models: three layers with every bias and LayerNorm parameter non-zero (learned absolute positions),
and a rotary model with grouped-query attention (the suffix pass leans on the attention computing
positions itself). Pairs: IOI-shaped (the first difference late, at the second subject) and one
whose first difference is at position 1. Counters check that skipped patches are really not run.
"""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tlp
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

import patchstudio.engine.patching as patching
from helpers import build_tiny_model
from patchstudio.engine import hooks as H
from patchstudio.engine.patching import first_difference, plan_passes, site_spans
from patchstudio.engine.profile import profile
from patchstudio.engine.run import run

TOL = 1e-4

LATE = {"clean": "When Mary and John went to the store , John gave a drink to",
        "corrupted": "When Mary and John went to the store , Mary gave a drink to",
        "answer": "Mary", "wrong": "John"}
EARLY = {"clean": "When Alice and Bob went to the garden , Bob gave a book to",
         "corrupted": "Then Alice and Bob went to the garden , Alice gave a book to",
         "answer": "Alice", "wrong": "Bob"}


def _with_nonzero_biases(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # biases, and LayerNorm scales and shifts
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def biased_model(tiny_tokenizer):
    return _with_nonzero_biases(build_tiny_model(tiny_tokenizer, n_layers=3, seed=3))


@pytest.fixture(scope="module")
def rotary_model(tiny_tokenizer):
    cfg = TransformerBridgeConfig(
        d_model=32, d_head=8, n_layers=3, n_heads=4, n_key_value_heads=2, n_ctx=32, d_vocab=len(tiny_tokenizer),
        act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary", seed=5,
    )
    torch.manual_seed(5)
    model = TransformerBridge.boot_native(cfg, tokenizer=tiny_tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(3.0)
    return _with_nonzero_biases(model.eval(), seed=2)


def _stream_all_positions(activation_name):
    def setter(act, index, source):
        act[...] = source
        return act

    def fn(model, base, cache, metric):
        return tlp.generic_activation_patch(model, base, cache, metric, patch_setter=setter,
                                            activation_name=activation_name, index_axis_names=("layer",))

    return fn


TL = {
    ("head", "all"): tlp.get_act_patch_attn_head_out_all_pos,
    ("head", "each"): tlp.get_act_patch_attn_head_out_by_pos,
    ("head_k", "each"): tlp.get_act_patch_attn_head_k_by_pos,
    ("pattern", "each"): lambda *a: tlp.get_act_patch_attn_head_pattern_by_pos(*a).permute(0, 2, 1),
    ("resid_pre", "each"): tlp.get_act_patch_resid_pre,
    ("resid_mid", "each"): tlp.get_act_patch_resid_mid,
    ("attn_out", "each"): tlp.get_act_patch_attn_out,
    ("mlp_out", "each"): tlp.get_act_patch_mlp_out,
    ("resid_pre", "all"): _stream_all_positions("resid_pre"),
    ("mlp_out", "all"): _stream_all_positions("mlp_out"),
}


def _tl(model, pair, key, direction):
    clean, corrupted = model.to_tokens(pair["clean"]), model.to_tokens(pair["corrupted"])
    answer = int(model.to_tokens(" " + pair["answer"], prepend_bos=False)[0, 0])
    wrong = int(model.to_tokens(" " + pair["wrong"], prepend_bos=False)[0, 0])
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)
        base, cache = (corrupted, clean_cache) if direction == "denoise" else (clean, corrupted_cache)
        return TL[key](model, base, cache, lambda logits: (logits[:, -1, answer] - logits[:, -1, wrong]).mean())


def _engine(model, pair, key, direction, **kw):
    spec = {"prompts": [pair], "component": key[0], "positions": key[1], "direction": direction}
    return torch.tensor(run(model, spec, **kw).values)


@pytest.mark.parametrize("pair", [LATE, EARLY], ids=["late", "early"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("key", list(TL), ids=lambda k: f"{k[0]}-{k[1]}")
def test_fast_core_equals_transformer_lens(biased_model, key, direction, pair):
    ref = _tl(biased_model, pair, key, direction)
    got = _engine(biased_model, pair, key, direction)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("key", [("head", "all"), ("head", "each"), ("head_k", "each"), ("resid_pre", "each"),
                                 ("mlp_out", "each")], ids=lambda k: f"{k[0]}-{k[1]}")
def test_rotary_grouped_query_model_equals_transformer_lens(rotary_model, key, direction):
    assert profile(rotary_model).suffix_supported(rotary_model.to_tokens(LATE["clean"]).shape[-1])
    ref = _tl(rotary_model, LATE, key, direction)
    got = _engine(rotary_model, LATE, key, direction)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()


def test_small_chunks_and_no_suffix_give_the_same_values(biased_model, monkeypatch):
    """Chunking splits passes; a model whose attention cannot take suffix passes runs whole ones."""
    key = ("head", "each")
    ref = _tl(biased_model, EARLY, key, "denoise")
    assert torch.allclose(_engine(biased_model, EARLY, key, "denoise", chunk_rows=5), ref, atol=TOL)
    monkeypatch.setitem(profile(biased_model).found, "suffix_ok", False)
    assert torch.allclose(_engine(biased_model, EARLY, key, "denoise"), ref, atol=TOL)


def test_ablation_per_position_runs_every_patch_and_equals_a_plain_hook_reference(biased_model):
    """Zero ablation per position: suffix passes apply (a patch at p changes nothing before p) but
    no patch is skipped, since the replacement differs from the clean run everywhere."""
    model, pair = biased_model, LATE
    clean = model.to_tokens(pair["clean"])
    answer = int(model.to_tokens(" Mary", prepend_bos=False)[0, 0])
    wrong = int(model.to_tokens(" John", prepend_bos=False)[0, 0])
    zeros = {f"blocks.{layer}.hook_resid_pre": torch.zeros(1, clean.shape[1], model.cfg.d_model)
             for layer in range(model.cfg.n_layers)}
    with torch.no_grad():
        ref = tlp.get_act_patch_resid_pre(model, clean, zeros, lambda lg: (lg[:, -1, answer] - lg[:, -1, wrong]).mean())
    result = run(model, {"method": "ablation", "ablation": "zero", "prompts": [pair], "component": "resid_pre",
                         "positions": "each"})
    got = torch.tensor(result.values)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    assert (got[:, :10] - result.clean).abs().max() > 1e-3  # early positions matter here: not skipped


class RowCounter:
    """Counts the rows of every hooked pass the core runs (row 0 of each is the base run)."""

    def __init__(self, monkeypatch):
        self.passes: list[int] = []
        original = patching.run_to_final_resid

        def counting(model, tokens, hooks, **kw):
            out = original(model, tokens, hooks, **kw)
            self.passes.append(out.shape[0])
            return out

        monkeypatch.setattr(patching, "run_to_final_resid", counting)

    @property
    def patched_rows(self) -> int:
        return sum(self.passes) - len(self.passes)


def test_patches_before_the_first_difference_are_not_run(biased_model, monkeypatch):
    model, pair = biased_model, LATE
    seq = model.to_tokens(pair["clean"]).shape[1]
    first = first_difference(model.to_tokens(pair["clean"]), model.to_tokens(pair["corrupted"]))
    assert (seq, first) == (15, 10)
    counter = RowCounter(monkeypatch)
    result = run(model, {"prompts": [pair], "component": "resid_pre", "positions": "each"})
    n_layers = model.cfg.n_layers
    assert counter.patched_rows == n_layers * (seq - first)  # 15 of 45 cells run
    values = torch.tensor(result.values)
    assert torch.allclose(values[:, :first], torch.full((n_layers, first), result.corrupted), atol=1e-5)

    counter.passes.clear()
    run(model, {"prompts": [pair], "component": "head", "positions": "each", "direction": "noise"})
    assert counter.patched_rows == n_layers * (seq - first) * model.cfg.n_heads

    counter.passes.clear()  # all-position sweeps run every patch
    run(model, {"prompts": [pair], "component": "head"})
    assert counter.patched_rows == n_layers * model.cfg.n_heads


def test_identical_prompts_run_no_patch_at_all(biased_model, monkeypatch):
    same = {**LATE, "corrupted": LATE["clean"]}
    counter = RowCounter(monkeypatch)
    result = run(biased_model, {"prompts": [same], "component": "head", "positions": "each"})
    assert counter.patched_rows == 0
    assert torch.allclose(torch.tensor(result.values), torch.tensor(result.clean), atol=1e-5)


def test_passes_start_where_their_patches_start(biased_model):
    """The plan: per-position patches run from their own position (or the first difference), and
    no pass starts before the earliest patch it holds."""
    model = biased_model
    seq = 15
    sites, _, _ = H.sites(model, "head", "each", seq)
    passes, skipped = plan_passes(sites, seq, same_before=10, suffix=True, chunk_rows=256, cfg=model.cfg)
    assert len(skipped) == 3 * 10 * 4
    assert all(p.start >= 10 for p in passes)
    for p in passes:
        assert all(p.start <= int(sites[i].mask.reshape(seq, -1).any(-1).nonzero()[0]) for i in p.rows)
    assert sorted(i for p in passes for i in p.rows) == sorted(set(range(len(sites))) - set(skipped))
    # without the cost model every start is its own pass
    passes, _ = plan_passes(sites, seq, same_before=10, suffix=True, chunk_rows=256)
    assert [p.start for p in passes] == [10, 11, 12, 13, 14]


def test_suffix_check_waits_for_a_prompt_it_can_check_on(tiny_tokenizer):
    """A one-token prompt cannot check suffix passes: it answers False without deciding for later prompts."""
    model = build_tiny_model(tiny_tokenizer, n_layers=2, seed=7)
    one = model.to_tokens("Mary", prepend_bos=False)[:, :1]
    assert not profile(model).suffix_supported(one.shape[-1])
    assert "suffix_ok" not in profile(model).found
    assert profile(model).suffix_supported(model.to_tokens(LATE["clean"]).shape[-1])
    assert profile(model).found["suffix_ok"] is True


@pytest.mark.parametrize("key", [("head", "all"), ("head", "each"), ("pattern", "each"), ("resid_pre", "each"),
                                 ("resid_pre", "all")], ids=lambda k: f"{k[0]}-{k[1]}")
def test_site_spans_are_the_first_and_last_positions_each_mask_covers(biased_model, key):
    seq = 7
    sites, _, _ = H.sites(biased_model, *key, seq)
    for site, span in zip(sites, site_spans(sites, seq)):
        axis = H.position_axis(site.hook)
        along = site.mask.movedim(axis, 0).reshape(site.mask.shape[axis], -1).any(-1)
        hits = along.nonzero().reshape(-1).tolist()
        assert span == (hits[0], hits[-1])


def test_cached_runs_unembed_the_final_position_only_and_equal_the_model(biased_model):
    from patchstudio.engine.forward import run_with_cache

    tokens = biased_model.to_tokens(LATE["clean"])
    names = [H.z_name(0), H.resid_post_name(2)]
    logits, cache = run_with_cache(biased_model, tokens, names)
    with torch.no_grad():
        ref_logits, ref_cache = biased_model.run_with_cache(tokens)
    assert logits.shape == (1, biased_model.cfg.d_vocab)
    assert torch.allclose(logits, ref_logits[:, -1].float(), atol=1e-5)
    for name in names:
        assert torch.equal(cache[name], ref_cache[name])
