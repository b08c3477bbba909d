"""The built-in prompt families (``models.prompts.FAMILIES``) on a model's own tokenizer.

Each family draws its words from candidate lists; here a word is kept only where it is one token in
every place the family puts it (``Need.contexts``: the templates, the start of a text, the answer
after the prompt), tokenized as the engine tokenizes prompts (``engine.inputs``). A family whose
words are too few is refused by name, saying what is missing and how many of the candidates this
tokenizer has; it never falls back to words the tokenizer splits. The check runs once per tokenizer.
"""

from __future__ import annotations

import hashlib
from weakref import WeakKeyDictionary

from dataclasses import dataclass, field
from typing import Any, Sequence

from patchstudio.engine.inputs import InputError, token_spans, tokenize, unknown_token_id
from patchstudio.models import prompts as P

__all__ = ["FamilyCheck", "check_families", "family_pairs", "one_token_each"]


@dataclass(frozen=True)
class FamilyCheck:
    """A family on one tokenizer: the words it may draw (None where refused), why it is refused,
    and for each need how many candidates were kept of how many."""

    name: str
    words: dict[str, list[Any]] | None
    refusal: str | None = None
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def offered(self) -> bool:
        return self.refusal is None


def one_token_each(model, text: str, spans: Sequence[tuple[int, int]]) -> bool:
    """Whether each character span of ``text`` (a word) is exactly one token of the text as the
    model tokenizes it: one token covers the word (and the space before it, if any), and nothing else,
    and it is not the unknown token."""
    ids = tokenize(model, text).reshape(-1).tolist()
    if unknown_token_id(model.tokenizer) in ids:
        return False
    found = [s for s in token_spans(model, text, ids) if s is not None and s[0] < s[1]]
    for a, b in spans:
        lead = a - 1 if a > 0 and text[a - 1] == " " else a
        over = [(s0, s1) for s0, s1 in found if s0 < b and s1 > lead]
        if len(over) != 1 or over[0][0] < lead or over[0][1] > b or text[over[0][0]:over[0][1]].strip() != text[a:b]:
            return False
    return True


def _fits(model, word: str, context: str) -> bool:
    parts = context.split("{W}")
    text, spans = parts[0], []
    for part in parts[1:]:
        spans.append((len(text), len(text) + len(word)))
        text += word + part
    return one_token_each(model, text, spans)


def kept(model, need: P.Need) -> list[Any]:
    """The candidates of ``need`` (a word, or a tuple of words) whose every word is one token in every context."""
    out = []
    for unit in P.CANDIDATES[need.key]:
        words = unit if isinstance(unit, tuple) else (unit,)
        if all(_fits(model, w, c) for w in words for c in need.contexts):
            out.append(unit)
    return out


def check_family(model, family: P.Family, cache: dict | None = None) -> FamilyCheck:
    cache = {} if cache is None else cache  # need -> kept words (the two IOI families share theirs)
    words: dict[str, list[Any]] = {}
    counts: dict[str, tuple[int, int]] = {}
    missing = []
    for need in family.needs:
        if need not in cache:
            cache[need] = kept(model, need)
        words[need.key] = cache[need]
        counts[need.key] = (len(words[need.key]), len(P.CANDIDATES[need.key]))
        if len(words[need.key]) < need.minimum:
            missing.append(f"{need.what}: this tokenizer has {len(words[need.key])} of the "
                           f"{len(P.CANDIDATES[need.key])} (at least {need.minimum} needed)")
    if not missing:
        try:  # what a family needs beyond counts (greater-than: consecutive years, and 01)
            family.make(1, seed=0, words=words)
        except ValueError as exc:
            missing.append(str(exc))
    if missing:
        return FamilyCheck(family.name, None, f"{family.name} needs " + "; ".join(missing), counts)
    return FamilyCheck(family.name, words, None, counts)


_CHECKED: dict[str, dict[str, FamilyCheck]] = {}  # tokenizer's content -> {family name: FamilyCheck}


_KEYS: WeakKeyDictionary = WeakKeyDictionary()  # tokenizer object -> its content's key (pages ask on every render)


def tokenizer_key(model) -> str:
    """What the check depends on: the tokenizer's content (not the object: a model reloaded, or
    another model with the same tokenizer, is not checked again) and whether a BOS is prepended.
    Hashed once per tokenizer object: serialising a 50k-token vocabulary on every page is not free."""
    tokenizer = model.tokenizer
    prepend = getattr(model.cfg, "default_prepend_bos", None)
    try:
        return _KEYS[tokenizer][prepend]
    except (KeyError, TypeError):
        pass
    key = _content_key(tokenizer, prepend)
    try:
        _KEYS.setdefault(tokenizer, {})[prepend] = key
    except TypeError:  # a tokenizer that cannot be weakly referenced is hashed each time
        pass
    return key


def _content_key(tokenizer, prepend) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{prepend}\n{content}".encode()).hexdigest()


def check_families(model) -> dict[str, FamilyCheck]:
    """Every built-in family checked on the model's tokenizer (once per tokenizer's content; the
    model manager does it when a model loads, so that a page or a GET only reads it)."""
    key = tokenizer_key(model)
    if key not in _CHECKED:
        cache: dict = {}
        _CHECKED[key] = {name: check_family(model, f, cache) for name, f in P.FAMILIES.items()}
    return _CHECKED[key]


def family_pairs(model, name: str, n: int, seed: int = 0, **options: Any) -> list[P.PromptPair]:
    """``n`` pairs of the family ``name`` from words that are single tokens for this model; an
    InputError on ``family`` naming what the tokenizer lacks when the family is refused."""
    if name not in P.FAMILIES:
        raise InputError(f"unknown prompt family {name!r}: use one of {', '.join(P.FAMILIES)}", field="family")
    check = check_families(model)[name]
    if check.words is None:
        raise InputError(f"{check.refusal}, so it is not offered on this model", field="family")
    return P.FAMILIES[name].make(n, seed=seed, words=check.words, **options)
