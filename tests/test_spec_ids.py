"""One experiment, one id (issue 21, finding 8): specs that cannot give different results share an
id, and a spec already in canonical form keeps the id it always had.

What cannot change a result: whitespace around an answer (the engine strips it, NBSP included),
the order of a set-valued list (path patching's receivers, self-repair's targets), and a seed no
setting reads (zero ablation; mean ablation over given prompts). Each equivalence is checked twice:
the ids agree, and the tiny model computes the same values for both specs (the independent check
that the normalisation is sound). What can change a result keeps ids apart."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import TINY_PAIRS
from patchstudio.engine.run import run
from patchstudio.specs import parse_spec, spec_classes

PAIR = TINY_PAIRS[0]
OTHER = TINY_PAIRS[1]
GIVEN = {"prompts": [OTHER["clean"], OTHER["corrupted"]]}

EQUIVALENT = [
    ("answer whitespace and NBSP",
     {"prompts": [PAIR]},
     {"prompts": [{**PAIR, "answer": f"  {PAIR['answer']}\u00a0", "wrong": f"\t{PAIR['wrong']} "}]}),
    ("path patching's receivers in another order",
     {"method": "path_patching", "prompts": [PAIR], "receivers": [{"layer": 1, "head": 0}, {"layer": 1, "head": 2, "input": "k"}]},
     {"method": "path_patching", "prompts": [PAIR], "receivers": [{"layer": 1, "head": 2, "input": "k"}, {"layer": 1, "head": 0}]}),
    ("self-repair's targets in another order",
     {"method": "self_repair", "prompts": [PAIR, OTHER], "targets": [{"layer": 0, "head": 1}, {"layer": 0, "head": 3}]},
     {"method": "self_repair", "prompts": [PAIR, OTHER], "targets": [{"layer": 0, "head": 3}, {"layer": 0, "head": 1}]}),
    ("zero ablation's unread seed",
     {"method": "ablation", "ablation": "zero", "prompts": [PAIR]},
     {"method": "ablation", "ablation": "zero", "prompts": [PAIR], "seed": 7}),
    ("mean ablation over given prompts: the seed is unread",
     {"method": "ablation", "ablation": "mean", "prompts": [PAIR], "reference": GIVEN},
     {"method": "ablation", "ablation": "mean", "prompts": [PAIR], "reference": GIVEN, "seed": 3}),
    ("self-repair by zero ablation: the seed is unread",
     {"method": "self_repair", "ablation": "zero", "prompts": [PAIR], "targets": [{"layer": 1, "head": 1}]},
     {"method": "self_repair", "ablation": "zero", "prompts": [PAIR], "targets": [{"layer": 1, "head": 1}], "seed": 11}),
]

DIFFERENT = [
    ("a prompt's own whitespace changes its tokens",
     {"prompts": [PAIR]}, {"prompts": [{**PAIR, "clean": PAIR["clean"] + " "}]}),
    ("resample ablation reads its seed",
     {"method": "ablation", "ablation": "resample", "prompts": [PAIR], "reference": GIVEN},
     {"method": "ablation", "ablation": "resample", "prompts": [PAIR], "reference": GIVEN, "seed": 1}),
    ("mean ablation over a generated set reads its seed",
     {"method": "ablation", "ablation": "mean", "prompts": [PAIR]},
     {"method": "ablation", "ablation": "mean", "prompts": [PAIR], "seed": 1}),
    ("another receiver is another experiment",
     {"method": "path_patching", "prompts": [PAIR], "receivers": [{"layer": 1, "head": 0}]},
     {"method": "path_patching", "prompts": [PAIR], "receivers": [{"layer": 1, "head": 0, "input": "v"}]}),
]


@pytest.mark.parametrize(("what", "a", "b"), EQUIVALENT, ids=[e[0] for e in EQUIVALENT])
def test_equivalent_specs_share_an_id_and_their_values(tiny_model, what, a, b):
    first, second = parse_spec(a), parse_spec(b)
    assert first.id == second.id
    x, y = run(tiny_model, first), run(tiny_model, second)
    assert x.id == y.id == first.id
    assert torch.allclose(torch.tensor(x.values), torch.tensor(y.values), atol=1e-6)
    assert x.clean == pytest.approx(y.clean) and x.corrupted == pytest.approx(y.corrupted)


@pytest.mark.parametrize(("what", "a", "b"), DIFFERENT, ids=[d[0] for d in DIFFERENT])
def test_what_can_change_a_result_keeps_ids_apart(what, a, b):
    assert parse_spec(a).id != parse_spec(b).id


def plain_json(spec) -> str:
    """The canonical JSON before normalisation existed: the spec's own dump, without the ``draws``
    field that came later, where the ablation is not resample (the specs these ids were made for)."""
    data = spec.model_dump(mode="json")
    if data.get("ablation") != "resample":
        data.pop("draws", None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("data", [e[1] for e in EQUIVALENT] + [d[1] for d in DIFFERENT] + [d[2] for d in DIFFERENT[1:]])
def test_a_spec_already_in_canonical_form_keeps_the_id_it_had(data):
    spec = parse_spec(data)
    assert spec.canonical_json() == plain_json(spec)


def test_every_method_keeps_its_ids_for_normal_specs():
    """Every registered method with its defaults: the canonical form is the plain dump."""
    for name, cls in spec_classes().items():
        data = {"method": name, "prompts": [PAIR]}
        if "targets" in cls.model_fields:
            data["targets"] = [{"layer": 0, "head": 0}]
        if "edges" in cls.model_fields:
            data["edges"] = ["input->m0"]
        spec = parse_spec(data)
        assert spec.canonical_json() == plain_json(spec), name


def test_pinned_ids_stay():
    """Two ids the docs and the write-up tests pin (docs/default-model-circuit.md, docs/self-repair.md),
    computed without a model."""
    from patchstudio.web.forms import DEFAULT_FORM, spec_from_form
    from patchstudio.web.presets import PRESETS

    assert spec_from_form({**DEFAULT_FORM, **PRESETS["no-self-repair"].form}).spec.id == "a7b264363d69b1e5"
    assert spec_from_form({**DEFAULT_FORM, **PRESETS["self-repair"].form}).spec.id == "1d4a927b978af484"


def test_pairs_without_roles_keep_their_ids():
    """Issue 23: PromptPair.roles (a prompt set's role columns) is left out of the canonical form when
    empty, so every spec made before it keeps its id; roles that are given change the id."""
    spec = parse_spec({"prompts": [PAIR]})
    assert spec.canonical_json() == parse_spec({"prompts": [{**PAIR, "roles": {}}]}).canonical_json()
    assert "roles" not in spec.canonical_json()
    words = PAIR["clean"].split()
    roled = parse_spec({"prompts": [{**PAIR, "roles": {"X": words[1]}}]})
    assert roled.id != spec.id
    assert spec.canonical_json() == plain_json(spec)


def test_a_pairs_roles_must_name_words_of_its_clean_prompt():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        parse_spec({"prompts": [{**PAIR, "roles": {"X": "nowhere"}}]})
    (err,) = caught.value.errors()
    assert err["loc"][-3:] == ("prompts", 0, "roles")
    assert "'nowhere' is not a word of the clean prompt" in err["msg"]
