"""The logit lens and direct logit attribution on the shipped default model, a tiny model with an
unembedding bias and perturbed LayerNorms, and a compiled Tracr model (no final norm), against the
plain-hook references of tests/lens_references.py to 1e-4; the sum check, its warning, and every refusal."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

import lens_references as LR
import references as R
from helpers import TINY_PAIRS
from patchstudio import load_model
from patchstudio.engine.methods import logit_attribution
from patchstudio.engine.run import run
from patchstudio.models.tracr.prompts import reverse_pairs
from patchstudio.specs import parse_spec

TOL = 1e-4
IOI = [{"clean": "When Mary and John went to the store, John gave a drink to",
        "corrupted": "When Mary and John went to the store, Mary gave a drink to", "answer": "Mary", "wrong": "John"},
       {"clean": "When Anna and Tom went to the park, Tom gave a ring to",
        "corrupted": "When Anna and Tom went to the park, Anna gave a ring to", "answer": "Anna", "wrong": "Tom"}]


@pytest.fixture(scope="module")
def default_model():
    return load_model("default")


@pytest.fixture(scope="module")
def tracr():
    return load_model("tracr-reverse")


def pairs_of(model, prompts) -> list[R.Pair]:
    """``references.pairs_of``, except for Tracr models, whose context is full after the prompt: their
    answer is the word's one token (the tokenizer adds no space or BOS to it)."""
    if int(model.cfg.n_ctx) > 8:
        return R.pairs_of(model, prompts)

    def token(word: str) -> tuple[int, ...]:
        return tuple(model.to_tokens(word, prepend_bos=False)[0].tolist())

    return [R.Pair(model.to_tokens(p["clean"]), model.to_tokens(p["corrupted"]), token(p["answer"]), token(p["wrong"]))
            for p in prompts]


def _models(request, name):
    if name == "default":
        return request.getfixturevalue("default_model"), IOI
    if name == "tracr":
        return request.getfixturevalue("tracr"), reverse_pairs(3, seed=1)
    return request.getfixturevalue("perturbed_model"), TINY_PAIRS


@pytest.mark.parametrize("name", ["default", "perturbed", "tracr"])
@pytest.mark.parametrize("metric", ["logit_diff", "loss", "kl"])
def test_logit_lens_equals_plain_hooks(request, name, metric):
    model, prompts = _models(request, name)
    result = run(model, {"method": "logit_lens", "prompts": prompts, "metric": metric})
    ref = LR.lens(model, pairs_of(model, prompts), metric)
    got = torch.tensor(result.values)
    assert got.shape == (int(model.cfg.n_layers) + 1, len(result.labels["pos"]))
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    assert (got - got[-1]).abs().max() > 10 * TOL


def test_normalized_lens_is_the_affine_map_of_the_logit_difference(default_model):
    pairs = R.pairs_of(default_model, IOI)
    clean, corrupted = R.baselines(default_model, pairs, "logit_diff")
    result = run(default_model, {"method": "logit_lens", "prompts": IOI, "metric": "normalized_logit_diff", "run": "corrupted"})
    expected = (LR.lens(default_model, pairs, "logit_diff", "corrupted") - corrupted) / (clean - corrupted)
    assert torch.allclose(torch.tensor(result.values), expected, atol=TOL)
    assert result.values[-1][-1] == pytest.approx(0.0, abs=TOL)  # the corrupted run's own reading


@pytest.mark.parametrize("name", ["default", "perturbed", "tracr"])
@pytest.mark.parametrize("run_name", ["clean", "corrupted"])
def test_logit_attribution_equals_plain_hooks_and_adds_up(request, name, run_name):
    model, prompts = _models(request, name)
    pairs = pairs_of(model, prompts)
    result = run(model, {"method": "logit_attribution", "prompts": prompts, "run": run_name})
    ref = LR.attribution(model, pairs, run_name)
    got = torch.tensor(result.values)
    assert torch.allclose(got, LR.heads_grid(model, ref), atol=TOL), (got - LR.heads_grid(model, ref)).abs().max()
    x = result.extras
    n_layers = int(model.cfg.n_layers)
    assert x["mlp"] == pytest.approx([ref[f"L{l} MLP"] for l in range(n_layers)], abs=TOL)
    assert x["attn_bias"] == pytest.approx([ref[f"L{l} attn bias"] for l in range(n_layers)], abs=TOL)
    assert (x["embed"], x["pos_embed"]) == (pytest.approx(ref["embed"], abs=TOL), pytest.approx(ref["pos_embed"], abs=TOL))
    b_u = model.b_U.detach()
    hand = sum(float(b_u[p.answer[0]] - b_u[p.wrong[0]]) for p in pairs) / len(pairs)
    assert x["unembed_bias"] == pytest.approx(hand, abs=TOL)
    assert x["norm_bias"] + x["unembed_bias"] == pytest.approx(ref["bias"], abs=TOL)
    parts = float(got.sum()) + sum(x["mlp"]) + sum(x["attn_bias"]) + x["embed"] + x["pos_embed"]
    assert parts + x["norm_bias"] + x["unembed_bias"] == pytest.approx(ref["metric"], abs=TOL)
    assert x["total"] == pytest.approx(ref["metric"], abs=TOL) and x["adds_up"]
    assert got.abs().max() > 10 * TOL
    if name == "perturbed":  # an unembedding bias and LayerNorm biases that are not 0
        assert abs(x["unembed_bias"]) > 1e-2 and abs(x["norm_bias"]) > 1e-2
    if name == "tracr":  # no final norm: nothing frozen, nothing added by one
        assert x["scale"] is None and x["norm_bias"] == 0.0


def test_tracr_reverse_reads_the_answer_off_its_last_layer(tracr):
    """reverse's last attention layer copies the first word to the final position: the lens reads
    nothing before it, and direct logit attribution puts the whole logit difference on its one head."""
    prompts = reverse_pairs(3, seed=1)
    lens = torch.tensor(run(tracr, {"method": "logit_lens", "prompts": prompts}).values)
    dla = run(tracr, {"method": "logit_attribution", "prompts": prompts})
    assert lens[:-1, -1].abs().max() < TOL and lens[-1, -1] == pytest.approx(dla.clean, abs=TOL)
    assert dla.values[-1][0] == pytest.approx(dla.clean, abs=TOL)
    assert sum(abs(v) for row in dla.values[:-1] for v in row) < TOL


def test_direct_effect_runs_on_a_model_without_a_final_norm(tracr):
    """It asked for ln_final.hook_scale, which Tracr models do not have (a KeyError)."""
    prompts = reverse_pairs(3, seed=1)
    result = run(tracr, {"method": "direct_effect", "prompts": prompts, "direction": "denoise"})
    # no final norm: the direct effect is the head's output difference read through W_U alone
    assert torch.tensor(result.values).abs().max() > 0.1


def test_a_part_the_attribution_misses_is_a_warning(default_model, monkeypatch):
    """Were a part of the stream left out (here the position embedding, hidden), the parts would not
    add up to the logit difference: the result says so, with the size of the miss."""
    monkeypatch.setattr(logit_attribution, "learned_positions", lambda model: False)
    result = run(default_model, {"method": "logit_attribution", "prompts": IOI[:1]})
    x = result.extras
    assert not x["adds_up"] and x["largest_miss"] > 1e-3
    miss = x["total"] - x["metric"]
    assert (f"Prompt 1: the parts add up to {x['total']:.4f}, but the clean run's logit difference is "
            f"{x['metric']:.4f} (off by {miss:+.3g})") in " ".join(result.warnings)


@pytest.mark.parametrize("spec, field, message", [
    ({"method": "logit_attribution", "metric": "prob"}, "metric",
     "direct logit attribution splits the logit difference, which is a sum of the parts' contributions once the "
     "final norm's scale is frozen; prob is not a sum of parts"),
    ({"method": "logit_attribution", "metric": "normalized_logit_diff"}, "metric", "normalized_logit_diff is not a sum"),
    ({"method": "logit_attribution", "component": "mlp_out"}, "component",
     "direct logit attribution's cells are heads (the MLPs and embeddings are listed beside them): component must be 'head'"),
    ({"method": "logit_attribution", "run": "both"}, "run", "Input should be 'clean' or 'corrupted'"),
    ({"method": "logit_lens", "component": "head"}, "component",
     "the logit lens reads the residual stream before each layer (and after the last): component must be 'resid_pre'"),
    ({"method": "logit_lens", "positions": "each"}, "positions", "the logit lens reads the residual stream before each layer (and after the last), at every position: "
     "positions must be 'all'"),
])
def test_specs_refuse_naming_the_field(spec, field, message):
    with pytest.raises(ValidationError) as info:
        parse_spec({"prompts": TINY_PAIRS, **spec})
    errors = info.value.errors()
    assert [e["loc"][-1] for e in errors] == [field]
    assert message in errors[0]["msg"]


def test_the_lens_needs_one_length(tiny_model):
    longer = {**TINY_PAIRS[1], "clean": TINY_PAIRS[1]["clean"] + " the", "corrupted": TINY_PAIRS[1]["corrupted"] + " the"}
    from patchstudio.engine.inputs import InputError

    with pytest.raises(InputError) as info:
        run(tiny_model, {"method": "logit_lens", "prompts": [TINY_PAIRS[0], longer]})
    assert info.value.field == "prompts"


def test_a_final_norm_without_a_scale_hook_is_refused(tiny_model, monkeypatch):
    from patchstudio.engine import final_norm
    from patchstudio.engine.inputs import InputError

    monkeypatch.setattr(final_norm, "has_scale", lambda model: False)
    for method, words in (("logit_attribution", "direct logit attribution"), ("direct_effect", "the direct effect")):
        with pytest.raises(InputError) as info:
            run(tiny_model, {"method": method, "prompts": TINY_PAIRS})
        assert info.value.field == "method"
        assert str(info.value) == (f"{words} is not available for {tiny_model.cfg.architecture}: its final norm (LN) has no scale hook "
                                   f"(ln_final.hook_scale) to freeze, so the logits are not a sum of the parts' contributions")
