"""Mean and resample ablation against a reference distribution: generated from the prompts'
template, given in the spec, or (with a warning) the spec's own prompts; against plain hooks."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from helpers import TINY_PAIRS
from references import resample_draws
from patchstudio.engine import reference as R
from patchstudio.engine.run import run
from patchstudio.errors import InputError
from patchstudio.models import prompts as P
from patchstudio.specs import parse_spec

TOL = 1e-4
# Tiny-vocabulary prompts of TINY_PAIRS' shape (15 tokens); the first is TINY_PAIRS[0]'s clean prompt.
GIVEN = [TINY_PAIRS[0]["clean"]] + [
    f"When {a} and {b} went to the {place} , {b} gave a {obj} to"
    for a, b, place, obj in [("Tom", "Anna", "school", "ring"), ("Anna", "Bob", "garden", "drink"),
                             ("John", "Tom", "school", "book"), ("Alice", "Mary", "store", "ring"),
                             ("Bob", "Alice", "school", "drink"), ("Mary", "Anna", "garden", "ring")]
]


def _ids(model, pair):
    return (model.to_tokens(pair["clean"]), int(model.to_tokens(" " + pair["answer"], prepend_bos=False)[0, 0]),
            int(model.to_tokens(" " + pair["wrong"], prepend_bos=False)[0, 0]))


def _ablate_head(model, pairs, layer, head, replacement_for):
    """Mean over pairs of the logit difference with (layer, head)'s z set to replacement_for(i) by a plain hook."""
    name = f"blocks.{layer}.attn.hook_z"
    total = 0.0
    for i, pair in enumerate(pairs):
        clean, ans, wrong = _ids(model, pair)
        repl = replacement_for(i)

        def hook(act, hook, repl=repl):
            act = act.clone()
            act[:, :, head] = repl[:, :, head]
            return act

        with torch.no_grad():
            logits = model.run_with_hooks(clean, fwd_hooks=[(name, hook)])
        total += float(logits[0, -1, ans] - logits[0, -1, wrong])
    return total / len(pairs)


def _z(model, texts, layer):
    name = f"blocks.{layer}.attn.hook_z"
    with torch.no_grad():  # one batch: every prompt has the same length
        tokens = torch.cat([model.to_tokens(t) for t in texts])
        return list(model.run_with_cache(tokens, names_filter=[name])[1][name].split(1))


# --- given prompts (tiny model) -----------------------------------------------------------------------


def test_mean_ablation_over_given_prompts_equals_plain_hooks(tiny_model):
    result = run(tiny_model, {"method": "ablation", "prompts": TINY_PAIRS, "reference": {"prompts": GIVEN}})
    assert result.reference == {"kind": "given", "n": len(GIVEN), "description": f"{len(GIVEN)} reference prompt(s) given in the spec"}
    assert not any("own clean and corrupted" in w for w in result.warnings)
    for layer, head in [(0, 1), (1, 3)]:
        mean = torch.stack(_z(tiny_model, GIVEN, layer)).mean(0)
        expected = _ablate_head(tiny_model, TINY_PAIRS, layer, head, lambda i: mean)
        assert result.values[layer][head] == pytest.approx(expected, abs=TOL)


def test_resample_with_one_pair_differs_from_noising_and_follows_its_seed(tiny_model):
    pair = TINY_PAIRS[:1]
    noised = torch.tensor(run(tiny_model, {"prompts": pair, "direction": "noise"}).values)
    by_seed = {}
    for seed in range(6):
        spec = {"method": "ablation", "ablation": "resample", "seed": seed, "draws": 1, "prompts": pair,
                "reference": {"prompts": GIVEN}}
        by_seed[seed] = torch.tensor(run(tiny_model, spec).values)
        assert (by_seed[seed] - noised).abs().max() > 1e-3  # not noising under another name
    distinct = {tuple(v.reshape(-1).tolist()) for v in by_seed.values()}
    assert len(distinct) >= 3  # the seed changes the draw (6 seeds, 6 prompts to draw from)
    # and each equals the plain-hook ablation with the prompt its seed draws (never GIVEN[0], the pair's own)
    for seed in (0, 1):
        j = R.resample_index(len(GIVEN), 0, seed, exclude={0})
        assert j != 0
        z = _z(tiny_model, [GIVEN[j]], 1)[0]
        assert by_seed[seed][1, 2] == pytest.approx(_ablate_head(tiny_model, pair, 1, 2, lambda i: z), abs=TOL)


@pytest.mark.parametrize("draws", [3, 8])
def test_resample_averages_its_draws_over_given_prompts(tiny_model, draws):
    """Each pair's value is the mean of plain-hook ablations with each drawn prompt's z, the draws
    taken by the documented rule (3: distinct; 8 from 7 or 8 allowed prompts: cycled where 7, so one prompt counts twice)."""
    pool = GIVEN + [p["corrupted"] for p in TINY_PAIRS]
    result = run(tiny_model, {"method": "ablation", "ablation": "resample", "seed": 4, "draws": draws,
                              "prompts": TINY_PAIRS, "reference": {"prompts": pool}})
    if draws == 8:
        assert result.spec.draws == 8  # the default
    for layer, head in [(0, 1), (1, 2)]:
        zs = _z(tiny_model, pool, layer)
        expected = 0.0
        for i, pair in enumerate(TINY_PAIRS):
            own = {j for j, text in enumerate(pool) if text in (pair["clean"], pair["corrupted"])}
            js = resample_draws(len(pool), i, 4, draws, exclude=own)
            expected += sum(_ablate_head(tiny_model, [pair], layer, head, lambda _: zs[j]) for j in js) / draws
        assert result.values[layer][head] == pytest.approx(expected / len(TINY_PAIRS), abs=TOL)


def test_resample_never_draws_the_pairs_own_prompts(tiny_model):
    """A reference of [own clean, own corrupted, one other]: every seed must draw the other one."""
    pair = TINY_PAIRS[:1]
    other = GIVEN[1]
    reference = [pair[0]["clean"], pair[0]["corrupted"], other]
    z = _z(tiny_model, [other], 0)[0]
    expected = _ablate_head(tiny_model, pair, 0, 1, lambda i: z)
    for seed in range(5):
        result = run(tiny_model, {"method": "ablation", "ablation": "resample", "seed": seed, "prompts": pair,
                                  "reference": {"prompts": reference}})
        assert result.values[0][1] == pytest.approx(expected, abs=TOL)


def test_self_repair_ablates_against_the_given_reference(tiny_model):
    result = run(tiny_model, {"method": "self_repair", "prompts": TINY_PAIRS, "targets": [{"layer": 1, "head": 2}],
                              "reference": {"prompts": GIVEN}})
    assert result.reference["kind"] == "given"
    mean = torch.stack(_z(tiny_model, GIVEN, 1)).mean(0)
    ablated = _ablate_head(tiny_model, TINY_PAIRS, 1, 2, lambda i: mean)
    assert result.extras["ablated"] == pytest.approx(ablated, abs=TOL)


def test_bad_reference_prompts_are_refused_naming_the_field(tiny_model):
    with pytest.raises(InputError, match="reference prompt 2 is 12 tokens but the spec's prompts are 15") as info:
        run(tiny_model, {"method": "ablation", "prompts": TINY_PAIRS,
                         "reference": {"prompts": [GIVEN[1], "When Mary and John went to the store , John gave"]}})
    assert info.value.field == "reference"
    with pytest.raises(InputError, match="words the model does not know") as info:
        run(tiny_model, {"method": "ablation", "prompts": TINY_PAIRS,
                         "reference": {"prompts": ["When Zed and John went to the store , John gave a drink to"]}})
    assert info.value.field == "reference"
    with pytest.raises(ValidationError, match="zero ablation uses no reference prompts") as exc:
        parse_spec({"method": "ablation", "ablation": "zero", "prompts": TINY_PAIRS, "reference": {"prompts": GIVEN}})
    assert exc.value.errors()[0]["loc"] == ("ablation", "reference")
    with pytest.raises(ValidationError) as exc:
        parse_spec({"method": "ablation", "prompts": TINY_PAIRS, "reference": {"prompts": []}})
    assert exc.value.errors()[0]["loc"][:2] == ("ablation", "reference")


def test_own_prompts_only_is_said_and_warned(tiny_model):
    """The tiny vocabulary cannot spell the generator's prompts: 'auto' falls back to the spec's own."""
    result = run(tiny_model, {"method": "ablation", "prompts": TINY_PAIRS})
    assert result.reference["kind"] == "own" and result.reference["n"] == 4
    assert any("only this spec's own clean and corrupted prompts" in w for w in result.warnings)
    assert run(tiny_model, {"method": "ablation", "ablation": "zero", "prompts": TINY_PAIRS}).reference is None


def test_the_id_includes_the_reference():
    spec = {"method": "ablation", "prompts": TINY_PAIRS}
    assert parse_spec(spec).id != parse_spec({**spec, "reference": {"prompts": GIVEN}}).id
    assert parse_spec(spec).reference == "auto"


# --- generated from the template (default model) ------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    from patchstudio.models.registry import load_model

    return load_model("default")


IOI = [p.to_dict() for p in P.ioi_pairs(3, seed=11, template=0)]


def test_auto_generates_a_reference_from_the_template_and_mean_ablation_uses_it(model):
    result = run(model, {"method": "ablation", "prompts": IOI, "seed": 2})
    assert result.reference["kind"] == "generated" and result.reference["n"] == R.REFERENCE_SIZE
    assert "IOI template 0" in result.reference["description"] and "seed 2" in result.reference["description"]
    assert not any("own clean and corrupted" in w for w in result.warnings)
    generated = P.reference_prompts([p["clean"] for p in IOI], 2 * R.REFERENCE_SIZE, seed=2)[: R.REFERENCE_SIZE]
    for layer, head in [(0, 2), (2, 7)]:
        mean = torch.stack(_z(model, generated, layer)).mean(0)
        assert result.values[layer][head] == pytest.approx(_ablate_head(model, IOI, layer, head, lambda i: mean), abs=TOL)


def test_auto_resample_with_one_pair_differs_from_noising_and_the_seed_matters(model):
    pair = IOI[:1]
    noised = torch.tensor(run(model, {"prompts": pair, "direction": "noise"}).values)
    a = torch.tensor(run(model, {"method": "ablation", "ablation": "resample", "prompts": pair}).values)
    b = torch.tensor(run(model, {"method": "ablation", "ablation": "resample", "prompts": pair, "seed": 1}).values)
    assert (a - noised).abs().max() > 1e-2 and (a - b).abs().max() > 1e-3
    mean = torch.tensor(run(model, {"method": "ablation", "prompts": pair}).values)
    clean = run(model, {"method": "ablation", "prompts": pair}).clean
    # one pair: mean ablation is no longer the midpoint of clean and corrupted
    own = torch.tensor(run(model, {"method": "ablation", "prompts": pair,
                                   "reference": {"prompts": [pair[0]["clean"], pair[0]["corrupted"]]}}).values)
    assert (mean - own).abs().max() > 1e-2 and (mean - clean).abs().max() > 1e-2


def test_induction_prompts_get_an_induction_reference(model):
    pairs = [p.to_dict() for p in P.induction_pairs(2, seed=3, length=6)]
    result = run(model, {"method": "ablation", "prompts": pairs})
    assert result.reference["kind"] == "generated" and "induction sequences of 6" in result.reference["description"]


def test_reference_activations_are_computed_once_per_spec(model, monkeypatch):
    import patchstudio.engine.run as engine_run
    from patchstudio.engine.profile import profile

    assert profile(model).readout_ok  # found now: the one-time probe passes (test order decides who pays) are not counted
    calls = []
    real = engine_run.cache_reference
    monkeypatch.setattr(engine_run, "cache_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    forwards = []
    real_rwc = type(model).run_with_cache
    monkeypatch.setattr(type(model), "run_with_cache", lambda self, tokens, **k: forwards.append(tokens.shape[0]) or real_rwc(self, tokens, **k))
    # the pairs' own cached runs go through the engine's helper (which may skip model.run_with_cache)
    import patchstudio.engine.forward as forward

    real_engine_rwc = forward.run_with_cache
    monkeypatch.setattr(forward, "run_with_cache",
                        lambda m, tokens, *a, **k: forwards.append(tokens.shape[0]) or real_engine_rwc(m, tokens, *a, **k))
    run(model, {"method": "ablation", "prompts": IOI})
    assert calls == [1]
    # each pair's clean and corrupted runs (one batch of two), then the reference set in batches, once
    assert sorted(forwards) == sorted([2] * len(IOI) + [R.REFERENCE_BATCH] * (R.REFERENCE_SIZE // R.REFERENCE_BATCH))
