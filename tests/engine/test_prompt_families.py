"""The built-in families on real tokenizers (engine/families.py): every word a family draws is one
token where it is put, checked here by decoding the tokens one by one (not by the family's own
offset check); answers differ; each corruption changes what its note says; a tokenizer lacking the
words gets the family refused by name; pairs are seeded; the default model's pairs are as before."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from patchstudio.engine import families as F
from patchstudio.engine.inputs import InputError, prepare_pairs, role_axis
from patchstudio.models import prompts as P

# model -> the families its tokenizer is expected to support (by construction of its training corpus,
# tests/family_models.py, words=True; the default model's word-level vocabulary has no digits and no "key"/"keys")
OFFERED = {
    "gpt2": {"ioi_swap", "ioi_abc", "induction", "greater_than", "agreement"},  # byte-level BPE: "ĠMary"
    "llama": {"ioi_swap", "ioi_abc", "induction", "greater_than", "agreement"},  # SentencePiece style: "▁Mary"
    "qwen2": {"ioi_swap", "ioi_abc", "induction", "agreement"},  # Qwen2 splits digits one by one
    "default": {"ioi_swap", "ioi_abc", "induction"},  # the shipped word-level tokenizer
}
LIST_WORDS = {*P.NAMES, *P.PLACES, *P.OBJECTS, *(w for pair in P.NOUN_PAIRS for w in pair)}


@pytest.fixture(scope="module", params=list(OFFERED))
def named_model(request, word_models):
    import patchstudio

    name = request.param
    return name, (patchstudio.load_model("default") if name == "default" else word_models(name))


def pieces(model, text: str) -> list[str]:
    """The text's tokens, each decoded on its own and stripped (no BOS)."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return [model.tokenizer.decode([i]).strip() for i in ids]


def assert_words_are_tokens(model, text: str) -> None:
    """Every list word of ``text`` is a token of its own each time it occurs (a word split in two, or
    merged with the punctuation after it, decodes to another piece); four-digit years are ' 17' + 'YY'."""
    got = pieces(model, text)
    words = re.findall(r"\w+", text)
    for w in set(words) & LIST_WORDS:
        assert got.count(w) == words.count(w), (w, text, got)
    for year in re.findall(r"\b17(\d\d)\b", text):
        assert year in got and "17" in got, (text, got)


def continuation_pieces(model, prompt: str, answer: str) -> list[str]:
    head = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = model.tokenizer(prompt + " " + answer, add_special_tokens=False)["input_ids"]
    assert full[: len(head)] == head
    return [model.tokenizer.decode([i]).strip() for i in full[len(head):]]


def test_offered_families(named_model):
    name, model = named_model
    checks = F.check_families(model)
    assert {n for n, c in checks.items() if c.offered} == OFFERED[name]
    for n, check in checks.items():
        if not check.offered:
            assert check.refusal.startswith(f"{n} needs ") and check.words is None
            with pytest.raises(InputError, match=f"^{n} needs .* so it is not offered on this model") as info:
                F.family_pairs(model, n, 2)
            assert info.value.field == "family"


def test_generated_words_are_single_tokens_and_answers_differ(named_model):
    name, model = named_model
    for family in sorted(OFFERED[name]):
        check_words_and_answers(model, family)


def check_words_and_answers(model, family: str) -> None:
    pairs = F.family_pairs(model, family, 40, seed=3)
    assert len(pairs) == 40
    for p in pairs:
        assert p.answer != p.wrong
        for text in (p.clean, p.corrupted):
            assert_words_are_tokens(model, text)
        answer, wrong = continuation_pieces(model, p.clean, p.answer), continuation_pieces(model, p.clean, p.wrong)
        if family == "greater_than":  # ' 17' then the two-digit end: the first token shared
            assert answer == ["17", p.answer[2:]] and wrong == ["17", p.wrong[2:]]
        else:
            assert answer == [p.answer] and wrong == [p.wrong]
    prepared = prepare_pairs(model, pairs, same_length=False)  # the engine takes them as they are
    assert all(pp.answer_ids != pp.wrong_ids for pp in prepared)


def test_generation_is_seeded(named_model):
    name, model = named_model
    for family in OFFERED[name]:
        assert F.family_pairs(model, family, 10, seed=5) == F.family_pairs(model, family, 10, seed=5)
        assert F.family_pairs(model, family, 10, seed=5) != F.family_pairs(model, family, 10, seed=6)


def _names(text: str) -> list[str]:
    return [w for w in re.findall(r"\w+", text) if w in P.NAME_SET]


@pytest.mark.parametrize("model_name", ["gpt2", "llama"])
def test_corruptions_do_what_the_notes_say(word_models, model_name):
    model = word_models(model_name)
    for p in F.family_pairs(model, "ioi_swap", 30, seed=1):  # S2 becomes IO: the answer flips
        clean, corrupted = _names(p.clean), _names(p.corrupted)
        assert clean.count(p.answer) == 1 and clean.count(p.wrong) == 2 and clean[-1] == p.wrong
        assert corrupted == clean[:-1] + [p.answer]
    for p in F.family_pairs(model, "ioi_abc", 30, seed=1):  # three other, distinct names
        corrupted = _names(p.corrupted)
        assert len(set(corrupted)) == 3 and not {p.answer, p.wrong} & set(corrupted)
    for p in F.family_pairs(model, "induction", 30, seed=1):  # second half kept; the anchor now precedes `wrong`
        c, k = p.clean.split(), p.corrupted.split()
        assert k[8:] == c[8:] and c[7] == p.answer and k[6] == c[6] and k[7] == p.wrong
    starts = set()
    for p in F.family_pairs(model, "greater_than", 30, seed=1):
        year = int(re.search(r"year (\d{4}) to", p.clean)[1])
        assert p.corrupted == "The war lasted from the year 1701 to the year"
        assert (int(p.answer), int(p.wrong)) == (year + 1, year - 1)  # one year after, one year before
        assert int(p.wrong) > 1701  # after the corrupted start both are allowed
        starts.add(year)
    assert len(starts) > 10
    agreeing = set()
    for p in F.family_pairs(model, "agreement", 30, seed=1):
        subj, attr = p.clean.split()[1], p.clean.split()[-1]
        subj_c, attr_c = p.corrupted.split()[1], p.corrupted.split()[-1]
        plural = subj.endswith("s")  # every noun pair's plural is the singular + "s"
        assert p.answer == ("are" if plural else "is") and p.wrong == ("is" if plural else "are")
        assert subj_c == (subj[:-1] if plural else subj + "s") and attr_c == attr  # only the subject's number flips
        assert p.clean.split()[2:-1] == p.corrupted.split()[2:-1]
        agreeing.add(plural == attr.endswith("s"))
    assert agreeing == {True, False}  # attractors both agree and disagree


def test_a_tokenizer_without_the_words_is_refused_by_name(word_models):
    import patchstudio

    default, qwen = patchstudio.load_model("default"), word_models("qwen2")
    for model in (default, qwen):  # no digits (word level), or digits one by one (Qwen2)
        refusal = F.check_families(model)["greater_than"].refusal
        assert refusal == ("greater_than needs '17' as a token of its own before a two-digit year: this tokenizer "
                           "has 0 of the 1 (at least 1 needed); two-digit years that are single tokens after '17': "
                           "this tokenizer has 0 of the 100 (at least 10 needed)")
    refusal = F.check_families(default)["agreement"].refusal
    assert refusal.startswith("agreement needs nouns whose singular and plural are single tokens: this tokenizer has 0 of the 20")


def _fingerprint(pairs) -> str:
    return hashlib.sha256(json.dumps([p.to_dict() for p in pairs]).encode()).hexdigest()[:16]


def test_the_default_model_gets_the_pairs_it_always_got():
    import patchstudio

    model = patchstudio.load_model("default")
    words = F.check_families(model)["ioi_swap"].words
    assert words == {"names": list(P.NAMES), "places": list(P.PLACES), "objects": list(P.OBJECTS)}
    # fingerprints of the same calls before families were checked (main at 89b2c2d)
    assert _fingerprint(F.family_pairs(model, "ioi_swap", 64, seed=0)) == "23e3b305bfa1220b"
    assert _fingerprint(F.family_pairs(model, "ioi_abc", 64, seed=1)) == "a8a9c73e160b205e"
    assert _fingerprint(F.family_pairs(model, "induction", 64, seed=2)) == "b34e1b49298ed3d4"
    assert _fingerprint(F.family_pairs(model, "ioi_swap", 16, seed=7, template=0)) == "4cfbe0732043bd82"


def test_new_families_sweep_by_their_roles(word_models):
    model = word_models("gpt2")
    gt = F.family_pairs(model, "greater_than", 4, seed=2)
    axis = role_axis(model, gt, prepare_pairs(model, gt, same_length=True), "each")
    # BOS, The, war, lasted, from, the, year, YEAR ( 17, YY), to, the#2, END
    assert axis.names == ("BOS", "The", "war", "lasted", "from", "the", "year", "YEAR", "to", "the#2", "END")
    assert all(g[7] == (7, 8) and g[-1] == (11,) for g in axis.groups)
    agr = F.family_pairs(model, "agreement", 4, seed=2, template=0)
    prepared = prepare_pairs(model, agr, same_length=True)
    picked = role_axis(model, agr, prepared, ["SUBJ", "END"])
    assert picked.names == ("SUBJ", "END") and all(g == ((2,), (5,)) for g in picked.groups)
    with pytest.raises(InputError, match="is a greater-than prompt .* while prompt 1 is a subject-verb agreement") as info:
        mixed = agr[:1] + gt[:1]
        role_axis(model, mixed, prepare_pairs(model, mixed, same_length=False), "each")
    assert info.value.field == "positions"


def test_greater_than_metric_is_the_logit_difference_at_the_17_position(word_models):
    """The note's claim: with ' 17' shared by answer and wrong, the sequence log-probability difference
    is logit(YY+1) - logit(YY-1) read after ' 17' (plain forward pass, no engine)."""
    import torch

    from patchstudio.engine.run import run

    model = word_models("gpt2")
    pairs = F.family_pairs(model, "greater_than", 3, seed=0)
    result = run(model, {"prompts": [p.to_dict() for p in pairs], "component": "resid_pre", "positions": "all"})
    for p, got in zip(pairs, result.per_prompt_clean):
        with torch.no_grad():
            logits = model(model.to_tokens(p.clean + " 17"))[0, -1]
        (up,), (down,) = (model.tokenizer(p.answer[2:], add_special_tokens=False)["input_ids"],
                          model.tokenizer(p.wrong[2:], add_special_tokens=False)["input_ids"])
        assert got == pytest.approx(float(logits[up] - logits[down]), abs=1e-4)
    with pytest.raises(InputError, match="is 2 tokens .* needs a single-token answer"):  # one-token methods refuse it
        run(model, {"method": "attribution_patching", "prompts": [p.to_dict() for p in pairs]})


def test_docs_carry_every_note():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "prompt-families.md").read_text()
    for family in P.FAMILIES.values():
        assert f"### `{family.name}`" in doc and family.note in doc and family.description in doc
