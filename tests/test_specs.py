"""The experiment spec: parsing, defaults, canonical id, validation errors, immutability."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from patchstudio.specs import (
    COMPONENTS,
    METRICS,
    AblationSpec,
    ActivationPatchingSpec,
    PromptPair,
    parse_spec,
    spec_json_schema,
)

PAIR = {
    "clean": "When Mary and John went to the store , John gave a drink to",
    "corrupted": "When Mary and John went to the store , Mary gave a drink to",
    "answer": "Mary",
    "wrong": "John",
}
PATCH = {"prompts": [PAIR]}
ABLATE = {"method": "ablation", "prompts": [PAIR]}

PATCH_FULL = {
    "schema_version": 1,
    "model": "default",
    "method": "activation_patching",
    "prompts": [PAIR],
    "component": "head",
    "positions": "all",
    "metric": "logit_diff",
    "direction": "denoise",
}
ABLATE_FULL = {
    "schema_version": 1,
    "model": "default",
    "method": "ablation",
    "prompts": [PAIR],
    "component": "head",
    "positions": "all",
    "metric": "logit_diff",
    "ablation": "mean",
    "seed": 0,
    "draws": 8,
    "reference": "auto",
}


# --- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, cls",
    [
        (PATCH, ActivationPatchingSpec),
        ({**PATCH, "method": "activation_patching"}, ActivationPatchingSpec),
        (ABLATE, AblationSpec),
        (json.dumps(PATCH), ActivationPatchingSpec),
        (json.dumps(ABLATE), AblationSpec),
        (json.dumps(ABLATE).encode(), AblationSpec),
    ],
    ids=["dict-no-method", "dict-patching", "dict-ablation", "json-patching", "json-ablation", "json-bytes"],
)
def test_parse_spec_accepts_dicts_and_json(data, cls):
    spec = parse_spec(data)
    assert type(spec) is cls
    assert spec.prompts == (PromptPair(**PAIR),)


@pytest.mark.parametrize("data", [PATCH, ABLATE], ids=["patching", "ablation"])
def test_parse_spec_returns_spec_objects_unchanged(data):
    spec = parse_spec(data)
    assert parse_spec(spec) is spec


def test_method_defaults_to_activation_patching():
    spec = parse_spec(PATCH)
    assert spec.method == "activation_patching"
    assert "method" not in PATCH  # the caller's dict is not modified


def test_patching_defaults_filled():
    spec = parse_spec(PATCH)
    assert (spec.schema_version, spec.model, spec.component, spec.positions, spec.metric, spec.direction) == (
        1, "default", "head", "all", "logit_diff", "denoise",
    )
    assert spec.model_dump(mode="json") == PATCH_FULL


def test_ablation_defaults_filled():
    spec = parse_spec(ABLATE)
    assert (spec.component, spec.positions, spec.metric, spec.ablation, spec.seed) == (
        "head", "all", "logit_diff", "mean", 0,
    )
    assert spec.model_dump(mode="json") == ABLATE_FULL


# --- round trip and id ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, cls",
    [
        (PATCH, ActivationPatchingSpec),
        ({**PATCH, "component": "resid_pre", "positions": "each", "metric": "kl", "direction": "noise"}, ActivationPatchingSpec),
        (ABLATE, AblationSpec),
        ({**ABLATE, "ablation": "resample", "seed": 7, "component": "mlp_out"}, AblationSpec),
        ({**ABLATE, "reference": {"prompts": [PAIR["clean"], PAIR["corrupted"]]}}, AblationSpec),
    ],
    ids=["patching-defaults", "patching-set", "ablation-defaults", "ablation-set", "ablation-reference"],
)
def test_model_dump_round_trips(data, cls):
    spec = parse_spec(data)
    again = cls.model_validate(spec.model_dump())
    assert again == spec
    assert again.id == spec.id
    assert again.canonical_json() == spec.canonical_json()
    via_json = parse_spec(spec.model_dump_json())
    assert via_json == spec and via_json.id == spec.id


@pytest.mark.parametrize("data", [PATCH, ABLATE], ids=["patching", "ablation"])
def test_id_is_16_hex_digits(data):
    assert re.fullmatch(r"[0-9a-f]{16}", parse_spec(data).id)


@pytest.mark.parametrize(
    "a, b",
    [
        (PATCH, PATCH),
        (PATCH, PATCH_FULL),  # defaults omitted vs given explicitly
        (PATCH, dict(reversed(list(PATCH_FULL.items())))),  # keys in another order
        (PATCH, {**PATCH, "prompts": [dict(reversed(list(PAIR.items())))]}),  # nested keys reordered
        (ABLATE, ABLATE_FULL),
        (ABLATE, dict(reversed(list(ABLATE_FULL.items())))),
        (ABLATE, json.dumps(ABLATE_FULL, indent=4)),  # whitespace in the JSON does not matter
        (ABLATE, {**ABLATE, "draws": 3}),  # draws are resample's: mean ablation never reads them
        ({**ABLATE, "ablation": "zero"}, {**ABLATE, "ablation": "zero", "draws": 1}),
    ],
    ids=["same", "patch-defaults-explicit", "patch-key-order", "pair-key-order",
         "ablate-defaults-explicit", "ablate-key-order", "ablate-json-indent", "mean-draws", "zero-draws"],
)
def test_id_equal_for_equal_specs(a, b):
    assert parse_spec(a).id == parse_spec(b).id


@pytest.mark.parametrize(
    "base, change",
    [
        (PATCH, {"model": "gpt2"}),
        (PATCH, {"component": "resid_pre"}),
        (PATCH, {"positions": "each"}),
        (PATCH, {"metric": "prob"}),
        (PATCH, {"direction": "noise"}),
        (PATCH, {"prompts": [{**PAIR, "answer": "John", "wrong": "Mary"}]}),
        (PATCH, {"prompts": [PAIR, PAIR]}),
        (PATCH, {"method": "ablation"}),
        (ABLATE, {"ablation": "zero"}),
        (ABLATE, {"ablation": "resample"}),
        (ABLATE, {"seed": 1}),
        ({**ABLATE, "ablation": "resample"}, {"draws": 3}),
        (ABLATE, {"component": "attn_out"}),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
def test_id_changes_when_any_field_changes(base, change):
    assert parse_spec(base).id != parse_spec({**base, **change}).id


def test_draws_are_written_only_for_resample():
    """Specs that do not resample keep the ids they had before the field existed (no 'draws' key)."""
    assert "draws" not in json.loads(parse_spec(ABLATE).canonical_json())
    assert "draws" not in json.loads(parse_spec({**ABLATE, "method": "self_repair", "targets": [{"layer": 2, "head": 2}]}).canonical_json())
    assert json.loads(parse_spec({**ABLATE, "ablation": "resample"}).canonical_json())["draws"] == 8


def test_patching_and_ablation_ids_differ_for_the_same_prompts():
    ids = {parse_spec(PATCH).id, parse_spec(ABLATE).id, parse_spec({**ABLATE, "ablation": "zero"}).id}
    assert len(ids) == 3


# --- validation errors -------------------------------------------------------------------------------


def _error_locs(exc: ValidationError) -> list[tuple]:
    return [tuple(e["loc"]) for e in exc.errors()]


@pytest.mark.parametrize(
    "data, loc, text",
    [
        ({**ABLATE, "direction": "noise"}, ("ablation", "direction"), "Extra inputs are not permitted"),
        ({**PATCH, "ablation": "zero"}, ("activation_patching", "ablation"), "Extra inputs are not permitted"),
        ({**PATCH, "seed": 3}, ("activation_patching", "seed"), "Extra inputs are not permitted"),
        ({**PATCH, "bogus": 1}, ("activation_patching", "bogus"), "Extra inputs are not permitted"),
        ({**ABLATE, "bogus": 1}, ("ablation", "bogus"), "Extra inputs are not permitted"),
        ({"prompts": [{**PAIR, "extra": "x"}]}, ("activation_patching", "prompts", 0, "extra"), "Extra inputs are not permitted"),
        ({"prompts": []}, ("activation_patching", "prompts"), "the prompt set is empty: give at least one prompt pair"),
        ({**ABLATE, "prompts": []}, ("ablation", "prompts"), "the prompt set is empty: give at least one prompt pair"),
        ({"model": "default"}, ("activation_patching", "prompts"), "Field required"),
        ({"prompts": [{k: v for k, v in PAIR.items() if k != "answer"}]},
         ("activation_patching", "prompts", 0, "answer"), "Field required"),
        ({**PATCH, "component": "neuron"}, ("activation_patching", "component"), "Input should be 'head'"),
        ({**PATCH, "metric": "accuracy"}, ("activation_patching", "metric"), "Input should be 'logit_diff'"),
        ({**PATCH, "positions": "some"}, ("activation_patching", "positions"), "positions must be 'all', 'each' or a list"),
        ({**PATCH, "direction": "sideways"}, ("activation_patching", "direction"), "Input should be 'denoise' or 'noise'"),
        ({**ABLATE, "ablation": "gaussian"}, ("ablation", "ablation"), "Input should be 'zero', 'mean' or 'resample'"),
        ({**PATCH, "schema_version": 2}, ("activation_patching", "schema_version"), "Input should be 1"),
    ],
    ids=["ablation-direction", "patching-ablation", "patching-seed", "unknown-key", "ablation-unknown-key",
         "pair-extra", "empty-prompts", "ablation-empty-prompts", "no-prompts", "no-answer",
         "unknown-component", "unknown-metric", "unknown-positions", "unknown-direction",
         "unknown-ablation", "schema-version"],
)
def test_invalid_spec_error_names_the_field(data, loc, text):
    with pytest.raises(ValidationError) as info:
        parse_spec(data)
    assert loc in _error_locs(info.value)
    message = str(info.value)
    assert ".".join(str(p) for p in loc) in message
    assert text in message


@pytest.mark.parametrize("field", ["clean", "corrupted", "answer", "wrong"])
@pytest.mark.parametrize("blank", ["", "   ", "\t\n"], ids=["empty", "spaces", "whitespace"])
def test_blank_prompt_text_rejected(field, blank):
    with pytest.raises(ValidationError) as info:
        parse_spec({"prompts": [{**PAIR, field: blank}]})
    # exactly one error: the blank field (not also a false "prompts is empty")
    assert _error_locs(info.value) == [("activation_patching", "prompts", 0, field)]
    assert f"{field} is empty" in str(info.value)


def test_bad_pair_gives_only_its_own_errors():
    bad = {k: v for k, v in PAIR.items() if k != "wrong"}
    with pytest.raises(ValidationError) as info:
        parse_spec({"prompts": [PAIR, bad, {**PAIR, "answer": " "}]})
    assert _error_locs(info.value) == [
        ("activation_patching", "prompts", 1, "wrong"),
        ("activation_patching", "prompts", 2, "answer"),
    ]
    assert "at least" not in str(info.value)


def test_unknown_method_rejected():
    with pytest.raises(ValidationError) as info:
        parse_spec({**PATCH, "method": "causal_scrubbing"})
    message = str(info.value)
    assert "'causal_scrubbing'" in message
    assert "'activation_patching', 'ablation', 'attribution_patching', 'path_patching', 'self_repair', 'input_influence'" in message


def test_invalid_json_string_raises_json_error():
    with pytest.raises(json.JSONDecodeError):
        parse_spec('{"prompts": [')


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_component_accepted(component):
    assert parse_spec({**PATCH, "component": component}).component == component


@pytest.mark.parametrize("metric", METRICS)
def test_every_metric_accepted(metric):
    assert parse_spec({**ABLATE, "metric": metric}).metric == metric


# --- frozen ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, field, value",
    [
        (PATCH, "component", "mlp_out"),
        (PATCH, "direction", "noise"),
        (PATCH, "prompts", ()),
        (ABLATE, "seed", 5),
        (ABLATE, "ablation", "zero"),
    ],
)
def test_specs_are_frozen(data, field, value):
    spec = parse_spec(data)
    before = spec.id
    with pytest.raises(ValidationError) as info:
        setattr(spec, field, value)
    assert "frozen" in str(info.value).lower()
    assert spec.id == before


def test_prompt_pairs_are_frozen():
    spec = parse_spec(PATCH)
    with pytest.raises(ValidationError):
        spec.prompts[0].answer = "John"
    assert spec.prompts[0].answer == "Mary"
    with pytest.raises(TypeError):
        spec.prompts[0:0] = ()  # a tuple, not a list


# --- JSON schema -------------------------------------------------------------------------------------


def test_json_schema_discriminates_on_method():
    schema = spec_json_schema()
    assert schema["discriminator"]["propertyName"] == "method"
    assert schema["discriminator"]["mapping"] == {
        "activation_patching": "#/$defs/ActivationPatchingSpec",
        "ablation": "#/$defs/AblationSpec",
        "attribution_patching": "#/$defs/AttributionPatchingSpec",
        "path_patching": "#/$defs/PathPatchingSpec",
        "self_repair": "#/$defs/SelfRepairSpec",
        "input_influence": "#/$defs/InputInfluenceSpec",
        "direct_effect": "#/$defs/DirectEffectSpec",
        "logit_lens": "#/$defs/LogitLensSpec",
        "logit_attribution": "#/$defs/LogitAttributionSpec",
        "circuit": "#/$defs/CircuitSpec",
        "edge_patching": "#/$defs/EdgePatchingSpec",
    }
    defs = schema["$defs"]
    assert {"ActivationPatchingSpec", "AblationSpec", "PromptPair"} <= set(defs)
    assert defs["ActivationPatchingSpec"]["additionalProperties"] is False
    assert defs["AblationSpec"]["additionalProperties"] is False
    assert "direction" in defs["ActivationPatchingSpec"]["properties"]
    assert "direction" not in defs["AblationSpec"]["properties"]
    assert defs["ActivationPatchingSpec"]["properties"]["component"]["enum"] == list(COMPONENTS)
    assert defs["AblationSpec"]["properties"]["metric"]["enum"] == list(METRICS)
    assert "prompts" in defs["ActivationPatchingSpec"]["required"]
    assert defs["ActivationPatchingSpec"]["properties"]["prompts"]["minItems"] == 1
    assert defs["AblationSpec"]["properties"]["prompts"]["minItems"] == 1
