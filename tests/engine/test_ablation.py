"""Ablation against a plain-hook reference written here, one full forward pass per ablated component.

The tiny model's vocabulary cannot spell the built-in generator's prompts, so its ``reference``
"auto" falls back to the spec's own clean and corrupted prompts (see test_reference.py for the
generated and given sets)."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY_PAIRS
from patchstudio.engine.methods.ablation import resample_index
from references import resample_draws
from patchstudio.engine.run import run
from patchstudio.errors import InputError

TOL = 1e-4


def _tokens(model):
    clean = [model.to_tokens(p["clean"]) for p in TINY_PAIRS]
    corrupted = [model.to_tokens(p["corrupted"]) for p in TINY_PAIRS]
    ans = [int(model.to_tokens(" " + p["answer"], prepend_bos=False)[0, 0]) for p in TINY_PAIRS]
    wrong = [int(model.to_tokens(" " + p["wrong"], prepend_bos=False)[0, 0]) for p in TINY_PAIRS]
    return clean, corrupted, ans, wrong


def _reference(model, kind, hook_of, edit, n_units, draws=8):
    """Mean over prompts of logit(answer) - logit(wrong) with unit u ablated by ``edit``; under
    resample, each prompt's value is the mean over its ``draws`` draws, averaged here by hand.

    ``hook_of(u)`` names the hook; ``edit(act, u, replacement)`` writes the replacement in place."""
    clean, corrupted, ans, wrong = _tokens(model)
    pool = clean + corrupted
    out = torch.zeros(n_units)
    for u in range(n_units):
        name = hook_of(u)
        caches = [model.run_with_cache(t, names_filter=[name])[1][name] for t in pool]
        total = 0.0
        for i, toks in enumerate(clean):
            if kind == "zero":
                repls = [torch.zeros_like(caches[i])]
            elif kind == "mean":
                repls = [torch.stack(caches).mean(0)]
            else:  # never the pair's own clean (i) or corrupted (n + i) prompt
                repls = [caches[j] for j in resample_draws(len(pool), i, 7, draws, exclude={i, len(clean) + i})]
            for repl in repls:
                def hook(act, hook, repl=repl):
                    act = act.clone()
                    edit(act, u, repl)
                    return act

                with torch.no_grad():
                    logits = model.run_with_hooks(toks, fwd_hooks=[(name, hook)])
                total += float(logits[0, -1, ans[i]] - logits[0, -1, wrong[i]]) / len(repls)
        out[u] = total / len(clean)
    return out


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_head_ablation_equals_plain_hooks(tiny_model, kind):
    n_heads = tiny_model.cfg.n_heads

    def edit(act, u, repl):
        act[:, :, u % n_heads] = repl[:, :, u % n_heads]

    ref = _reference(tiny_model, kind, lambda u: f"blocks.{u // n_heads}.attn.hook_z", edit, 2 * n_heads)
    result = run(tiny_model, {"method": "ablation", "ablation": kind, "seed": 7, "prompts": TINY_PAIRS, "component": "head"})
    got = torch.tensor(result.values).reshape(-1)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    assert (got - result.clean).abs().max() > 1e-3  # ablating heads changes the metric


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_mlp_out_per_position_ablation_equals_plain_hooks(tiny_model, kind):
    seq = tiny_model.to_tokens(TINY_PAIRS[0]["clean"]).shape[1]

    def edit(act, u, repl):
        act[:, u % seq] = repl[:, u % seq]

    ref = _reference(tiny_model, kind, lambda u: f"blocks.{u // seq}.hook_mlp_out", edit, 2 * seq)
    result = run(tiny_model, {"method": "ablation", "ablation": kind, "seed": 7, "prompts": TINY_PAIRS,
                              "component": "mlp_out", "positions": "each"})
    assert torch.allclose(torch.tensor(result.values).reshape(-1), ref, atol=TOL)


def test_zero_ablating_a_layer_removes_its_contribution(tiny_model):
    """component 'layer', zero: resid_post := resid_pre, i.e. the block is skipped."""
    clean, _, ans, wrong = _tokens(tiny_model)
    expected = []
    for layer in range(tiny_model.cfg.n_layers):
        total = 0.0
        for i, toks in enumerate(clean):
            store = {}

            def keep(act, hook):
                store["pre"] = act.clone()

            def skip(act, hook):
                return store["pre"]

            with torch.no_grad():
                logits = tiny_model.run_with_hooks(toks, fwd_hooks=[
                    (f"blocks.{layer}.hook_resid_pre", keep), (f"blocks.{layer}.hook_resid_post", skip)])
            total += float(logits[0, -1, ans[i]] - logits[0, -1, wrong[i]])
        expected.append(total / len(clean))
    result = run(tiny_model, {"method": "ablation", "ablation": "zero", "prompts": TINY_PAIRS, "component": "layer"})
    assert result.axes == ["layer"]
    assert result.values == pytest.approx(expected, abs=TOL)


def test_resample_with_one_pair_and_only_its_own_prompts_is_refused(tiny_model):
    """With one pair and no other reference prompt, the only other prompt is the pair's own
    corruption: resampling it would be noising under another name, so it is refused."""
    with pytest.raises(InputError, match="nothing to draw from") as info:
        run(tiny_model, {"method": "ablation", "ablation": "resample", "prompts": TINY_PAIRS[:1], "component": "head"})
    assert info.value.field == "reference"


@pytest.mark.parametrize("draws", [1, 3])
def test_resample_draws_average_by_hand(tiny_model, draws):
    """One draw and three: each prompt's value is the mean of its own draws, not one draw's."""
    n_heads = tiny_model.cfg.n_heads

    def edit(act, u, repl):
        act[:, :, u % n_heads] = repl[:, :, u % n_heads]

    ref = _reference(tiny_model, "resample", lambda u: f"blocks.{u // n_heads}.attn.hook_z", edit, 2 * n_heads, draws)
    result = run(tiny_model, {"method": "ablation", "ablation": "resample", "seed": 7, "draws": draws,
                              "prompts": TINY_PAIRS, "component": "head"})
    assert torch.allclose(torch.tensor(result.values).reshape(-1), ref, atol=TOL)


def test_resample_index_is_seeded_and_never_the_prompt_itself():
    picks = [resample_index(6, i, seed=3) for i in range(6)]
    assert picks == [resample_index(6, i, seed=3) for i in range(6)]
    assert all(p != i for i, p in enumerate(picks))
    # the seed changes the draw (a draw seeded by the prompt's index alone would give one list)
    assert len({tuple(resample_index(64, i, seed=s) for i in range(8)) for s in range(5)}) == 5
    with pytest.raises(ValueError, match="at least two prompts"):
        resample_index(1, 0, seed=0)
