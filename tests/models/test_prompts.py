"""The prompt generator: deterministic, held-out data really held out, corruptions keep length."""

from __future__ import annotations

import re

import pytest

from patchstudio.models import prompts
from patchstudio.models.default_model import DEFAULT_DIR, load_tokenizer
from patchstudio.models.prompts import (
    FAMILIES,
    HELDOUT_TEMPLATES,
    IOI_TEMPLATES,
    NAMES,
    TRAIN_TEMPLATES,
    PromptPair,
    abc_corruption,
    guess_answers,
    induction_pairs,
    ioi_pairs,
    is_heldout_pair,
    swap_names,
)

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(DEFAULT_DIR)


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def names_in(text: str) -> list[str]:
    return [w for w in re.findall(r"\w+", text) if w in prompts.NAME_SET]


def template_regex(template: str, complete: bool = False) -> re.Pattern:
    """Matches a filled template anywhere; complete=True: a whole training sentence at the end
    of the text (template + answer), capturing the names."""
    parts = re.split(r"(\{\w+\})", template)
    seen: set[str] = set()
    body = ""
    for p in parts:
        if p in ("{N1}", "{N2}", "{S}") and p not in seen:
            seen.add(p)
            body += rf"(?P<{p[1:-1]}>\w+)"
        else:
            body += r"\w+" if p.startswith("{") else re.escape(p)
    return re.compile(rf"(?:^|\. ){body} (?P<IO>\w+)$" if complete else body)


def test_sizes():
    assert len(IOI_TEMPLATES) >= 15
    assert len(HELDOUT_TEMPLATES) >= 3
    assert set(TRAIN_TEMPLATES) | set(HELDOUT_TEMPLATES) == set(range(len(IOI_TEMPLATES)))
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    assert len(NAMES) >= 50 and len(set(NAMES)) == len(NAMES)
    assert len(prompts.PLACES) >= 10 and len(prompts.OBJECTS) >= 10
    for w in (*NAMES, *prompts.PLACES, *prompts.OBJECTS):
        assert re.fullmatch(r"\w+", w), w
    assert {"ioi_swap", "ioi_abc", "induction"} <= set(FAMILIES)
    for fam in FAMILIES.values():
        pairs = fam.make(3, seed=1)
        assert len(pairs) == 3 and all(isinstance(p, PromptPair) for p in pairs) and fam.description


def test_determinism():
    for make in (
        lambda s: ioi_pairs(20, seed=s),
        lambda s: ioi_pairs(20, seed=s, corruption="abc", split="heldout"),
        lambda s: induction_pairs(20, seed=s),
        lambda s: prompts.training_texts(20, 20, seed=s),
    ):
        assert make(3) == make(3)
        assert make(3) != make(4)
    assert ioi_pairs(1)[0].to_dict() == {
        "clean": ioi_pairs(1)[0].clean, "corrupted": ioi_pairs(1)[0].corrupted,
        "answer": ioi_pairs(1)[0].answer, "wrong": ioi_pairs(1)[0].wrong,
    }  # fmt: skip


def test_heldout_never_in_training():
    texts = prompts.ioi_training_texts(3000, seed=0)
    heldout_res = [template_regex(IOI_TEMPLATES[t]) for t in HELDOUT_TEMPLATES]
    train_res = [template_regex(IOI_TEMPLATES[t], complete=True) for t in TRAIN_TEMPLATES]
    n_prefixed = 0
    for text in texts:
        assert not any(r.search(text) for r in heldout_res), text
        m = next(m for r in train_res if (m := r.search(text)))
        io, s = m["IO"], m["S"]
        assert {m["N1"], m["N2"]} == {io, s} and io != s, text
        assert not is_heldout_pair(io, s), text
        names = names_in(text)  # a prefix sentence, if any, uses two other names
        assert sorted(names[-4:]) == sorted([io, io, s, s]) and not {io, s} & set(names[:-4]), text
        n_prefixed += m.start() > 0
    assert 0.4 < n_prefixed / len(texts) < 0.6
    # The held-out split uses only held-out templates and held-out pairs.
    for p in ioi_pairs(300, seed=5, split="heldout"):
        assert any(r.match(p.clean) for r in heldout_res)
        assert is_heldout_pair(p.answer, p.wrong)
    assert 0.1 < sum(is_heldout_pair(a, b) for a in NAMES for b in NAMES if a < b) / (len(NAMES) * (len(NAMES) - 1) / 2) < 0.3
    with pytest.raises(ValueError, match="held out"):
        ioi_pairs(1, split="train", template=HELDOUT_TEMPLATES[0])
    # Every word of a held-out template also occurs in training templates (no untrained embeddings).
    words = lambda ts: {w for t in ts for w in prompts.split_words(re.sub(r"\{\w+\}", " ", IOI_TEMPLATES[t]))}
    assert words(HELDOUT_TEMPLATES) <= words(TRAIN_TEMPLATES)


def test_ioi_swap_pairs(tok):
    pairs = ioi_pairs(200, seed=1, corruption="swap")
    orders = set()
    for p in pairs:
        assert n_tokens(tok, p.clean) == n_tokens(tok, p.corrupted)
        clean, corr = names_in(p.clean), names_in(p.corrupted)
        # Clean: IO once, S twice (last mention is S); the prompt stops before the IO.
        assert clean.count(p.answer) == 1 and clean.count(p.wrong) == 2 and clean[-1] == p.wrong
        # Corrupted: the second S is now IO, so the licensed answer flips to S.
        assert corr == clean[:-1] + [p.answer]
        assert guess_answers(p.corrupted) == (p.wrong, p.answer)
        assert guess_answers(p.clean) == (p.answer, p.wrong)
        assert swap_names(p.clean) == p.corrupted
        orders.add("ABBA" if clean[0] == p.answer else "BABA")
        assert "<unk>" not in tok.convert_ids_to_tokens(tok(p.clean)["input_ids"])
    assert orders == {"ABBA", "BABA"}


def test_ioi_abc_pairs(tok):
    for p in ioi_pairs(200, seed=2, corruption="abc"):
        assert n_tokens(tok, p.clean) == n_tokens(tok, p.corrupted)
        corr = names_in(p.corrupted)
        assert len(corr) == 3 and len(set(corr)) == 3 and not {p.answer, p.wrong} & set(corr)
        # Only the names differ.
        assert re.sub(r"\w+", lambda m: "N" if m.group() in prompts.NAME_SET else m.group(), p.clean) == re.sub(
            r"\w+", lambda m: "N" if m.group() in prompts.NAME_SET else m.group(), p.corrupted
        )


def test_fixed_template_same_length(tok):
    for t in range(len(IOI_TEMPLATES)):
        lengths = {n_tokens(tok, s) for p in ioi_pairs(30, seed=t, template=t, corruption="abc") for s in (p.clean, p.corrupted)}
        assert len(lengths) == 1, (t, lengths)


def test_induction_pairs(tok):
    for p in induction_pairs(100, seed=3, length=8):
        c, k = p.clean.split(), p.corrupted.split()
        assert len(c) == len(k) == 15 and n_tokens(tok, p.clean) == n_tokens(tok, p.corrupted) == 15
        assert len(set(c[:8])) == 8 and c[8:] == c[:7] and p.answer == c[7]
        assert k[8:] == c[8:]  # same second half
        assert k[6] == c[14] and k[7] == p.wrong != p.answer  # anchor, then `wrong`
        assert not set(k[:8]) & set(c[:8]) - {c[6]}
    assert {len(p.clean.split()) for p in induction_pairs(10, length=5)} == {9}


def test_user_prompt_corruptions(tok):
    assert guess_answers(PROMPT) == ("Mary", "John")
    assert swap_names(PROMPT) == "When Mary and John went to the store, Mary gave a drink to"
    abc = abc_corruption(PROMPT, seed=0)
    assert abc == abc_corruption(PROMPT, seed=0) and abc != abc_corruption(PROMPT, seed=1)
    assert n_tokens(tok, abc) == n_tokens(tok, PROMPT)
    assert len(set(names_in(abc))) == 3 and not {"Mary", "John"} & set(names_in(abc))
    assert abc.replace(",", "").split()[2] == "and"
    for bad in ("The cat sat on the mat", "When Mary and John went out, Alice gave a drink to", "Mary and John"):
        assert guess_answers(bad) is None
        with pytest.raises(ValueError, match="not an IOI-shaped prompt.*exactly two distinct names"):
            swap_names(bad)
        with pytest.raises(ValueError, match="not an IOI-shaped prompt"):
            abc_corruption(bad)


def test_training_texts():
    ioi = prompts.ioi_training_texts(50, seed=0, prefix_prob=0.0)
    assert all(t.split()[-1] == guess_answers(t.rsplit(" ", 1)[0])[0] for t in ioi)
    for t in prompts.induction_training_texts(50, seed=0, min_len=4, max_len=30):
        w = t.split()
        half = len(w) // 2
        assert len(w) % 2 == 0 and 4 <= half <= 30 and w[:half] == w[half:] and len(set(w[:half])) == half
    mix = prompts.training_texts(30, 10, seed=0)
    assert len(mix) == 40
    stream = prompts.iter_training_texts(seed=0, chunk=16)
    assert [next(stream) for _ in range(40)] == [t for t, _ in zip(prompts.iter_training_texts(seed=0, chunk=16), range(40))]


# --- position roles ----------------------------------------------------------------------------------


def roles_of(text: str, answer: str | None = None, wrong: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    kind, words = prompts.word_roles(text, answer, wrong)
    return kind, [(text[w.start:w.end], w.role) for w in words]


@pytest.mark.parametrize("order", ["ABBA", "BABA"])
@pytest.mark.parametrize("template", range(len(IOI_TEMPLATES)))
def test_ioi_roles_in_every_template_and_order(template, order):
    """IO is the name once, S1 and S2 the repeated one, by hand from the template's slots; PLACE and OBJECT
    are the slots'; every other word is itself."""
    io, s = "Mary", "John"
    n1, n2 = (io, s) if order == "ABBA" else (s, io)
    text = IOI_TEMPLATES[template].format(N1=n1, N2=n2, S=s, PLACE="store", OBJECT="drink")
    kind, named = roles_of(text, io, s)
    assert kind == "ioi"
    slots = [w for w in re.findall(r"\{\w+\}|\w+|[^\w\s{}]", IOI_TEMPLATES[template])]
    expected = {"{N1}": "IO" if order == "ABBA" else "S1", "{N2}": "S1" if order == "ABBA" else "IO", "{S}": "S2",
                "{PLACE}": "PLACE", "{OBJECT}": "OBJECT"}
    assert len(slots) == len(named)
    seen: dict[str, int] = {}
    for slot, (word, role) in zip(slots, named):
        base = expected.get(slot, slot)
        seen[base] = seen.get(base, 0) + 1
        assert role == (base if seen[base] == 1 else f"{base}#{seen[base]}"), (slot, word, role)


def test_ioi_roles_come_from_the_answers_then_from_the_names():
    # answers given: IO is the answer, whatever the names
    assert roles_of("When Xi and Yo went out, Yo waved to", "Xi", "Yo")[1][1:5] == [("Xi", "IO"), ("and", "and"), ("Yo", "S1"), ("went", "went")]
    # no answers (a reference prompt): two names of the name list, one once
    kind, named = roles_of("When Mary and John went to the store, John gave a drink to")
    assert kind == "ioi" and [r for _, r in named if r in ("IO", "S1", "S2")] == ["IO", "S1", "S2"]
    # answers that do not fit (Alice is not in it): the names decide
    assert [r for _, r in roles_of("When Mary and John went to the store, John gave a drink to", "Alice", "John")[1]][1:5] == \
        ["IO", "and", "S1", "went"]
    # three names, each once: not IOI
    assert roles_of("When Mary and Alice went to the store, John gave a drink to", "Mary", "John")[0] == "words"


def test_induction_roles():
    kind, named = roles_of("a b c d e a b c d", "e", "x")
    assert kind == "induction"
    assert [r for _, r in named] == ["first1", "first2", "first3", "A", "B", "repeat1", "repeat2", "repeat3", "repeat4"]
    assert roles_of("a b c d e a b c d", "x", "y")[0] == "words"  # the answer is not what induction predicts


def test_words_are_named_by_themselves_quoted_where_they_would_read_as_a_role():
    kind, named = roles_of("The END of the 3 diff2 IO")
    assert kind == "words"
    assert [r for _, r in named] == ["The", "'END'", "of", "the", "'3'", "'diff2'", "'IO'"]
    assert prompts.numbered(["to", "the", "to", "to"]) == ["to", "the", "to#2", "to#3"]
