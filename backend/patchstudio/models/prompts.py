"""Prompt families: the default model's training data and the app's ready-made prompt pairs.

Pure Python (no torch), seeded and deterministic: every generator takes a seed and draws from its
own ``random.Random(seed)``, never from global state.

The default model's tokenizer is word level and splits text exactly like ``split_words`` (runs of
word characters, every other non-space character on its own), so ``len(split_words(text))`` is a
prompt's token count (plus one for the BOS token the tokenizer prepends). Every name, place and
object is one word, so all prompts made from one template have the same token length.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

# --------------------------------------------------------------------------------------------
# Word lists
# --------------------------------------------------------------------------------------------

NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Tom", "Anna", "James", "Sarah", "David", "Emma",
    "Michael", "Laura", "Daniel", "Kate", "Paul", "Lisa", "Mark", "Emily", "Peter", "Rachel",
    "Steven", "Jessica", "Andrew", "Linda", "Chris", "Susan", "Robert", "Helen", "Brian", "Karen",
    "Kevin", "Amy", "Jason", "Nancy", "Eric", "Julia", "Adam", "Sophie", "Ryan", "Grace",
    "Jacob", "Olivia", "Henry", "Lucy", "Sam", "Claire", "George", "Hannah", "Frank", "Diana",
    "Oliver", "Rose", "Jack", "Ella", "Matthew", "Megan", "Luke", "Victoria", "Joseph", "Natalie",
)  # fmt: skip
PLACES: tuple[str, ...] = (
    "store", "garden", "school", "park", "hospital", "office", "restaurant", "station", "house",
    "library", "beach", "museum", "market", "church", "gym",
)  # fmt: skip
# Consonant-initial only: templates say "a [OBJECT]".
OBJECTS: tuple[str, ...] = (
    "drink", "ring", "book", "kiss", "bone", "basketball", "computer", "necklace", "flower",
    "snack", "letter", "ball", "gift", "key", "cake",
)  # fmt: skip
NAME_SET = frozenset(NAMES)
# Greater-than (Hanna et al. 2023): the two-digit ends of years 1700..1799, as GPT-2 writes them
# (" 1732" is " 17" then "32").
CENTURY = "17"
YEARS: tuple[str, ...] = tuple(f"{yy:02d}" for yy in range(100))
# Subject-verb agreement (Linzen et al. 2016): nouns in (singular, plural) pairs, and the verbs.
NOUN_PAIRS: tuple[tuple[str, str], ...] = (
    ("key", "keys"), ("cabinet", "cabinets"), ("author", "authors"), ("pilot", "pilots"),
    ("doctor", "doctors"), ("farmer", "farmers"), ("table", "tables"), ("door", "doors"),
    ("teacher", "teachers"), ("student", "students"), ("manager", "managers"), ("painting", "paintings"),
    ("picture", "pictures"), ("report", "reports"), ("officer", "officers"), ("window", "windows"),
    ("house", "houses"), ("friend", "friends"), ("player", "players"), ("car", "cars"),
)  # fmt: skip
VERBS: tuple[str, str] = ("is", "are")  # (singular, plural)
# What each generator draws from when it is given no checked words: the default model's own lists
# for IOI and induction (so its pairs are as they always were), the literature's for the others.
CANDIDATES: dict[str, tuple] = {
    "names": NAMES, "places": PLACES, "objects": OBJECTS, "words": (*NAMES, *OBJECTS, *PLACES),
    "century": (CENTURY,), "years": YEARS, "nouns": NOUN_PAIRS, "verbs": (VERBS,),
}  # fmt: skip

# --------------------------------------------------------------------------------------------
# IOI templates (after Wang et al. 2022). {N1} and {N2} are the two names introduced together,
# {S} is the subject, who repeats one of them; the prompt ends just before the indirect object
# (the name that appears once), which is the answer. Each template makes both orders:
# ABBA (N1 = IO, N2 = S) and BABA (N1 = S, N2 = IO).
# --------------------------------------------------------------------------------------------

IOI_TEMPLATES: tuple[str, ...] = (
    "When {N1} and {N2} went to the {PLACE}, {S} gave a {OBJECT} to",
    "When {N1} and {N2} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "When {N1} and {N2} got a {OBJECT} at the {PLACE}, {S} decided to give the {OBJECT} to",
    "Then, {N1} and {N2} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} were working at the {PLACE}. {S} decided to give a {OBJECT} to",
    "Then, {N1} and {N2} were thinking about going to the {PLACE}. {S} wanted to give a {OBJECT} to",
    "Then, {N1} and {N2} had a long argument, and afterwards {S} said to",
    "After {N1} and {N2} went to the {PLACE}, {S} gave a {OBJECT} to",
    "While {N1} and {N2} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "While {N1} and {N2} were commuting to the {PLACE}, {S} gave a {OBJECT} to",
    "After the lunch, {N1} and {N2} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Afterwards, {N1} and {N2} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} had a long argument. Afterwards {S} said to",
    "The {PLACE} {N1} and {N2} went to had a {OBJECT}. {S} gave it to",
    "Friends {N1} and {N2} found a {OBJECT} at the {PLACE}. {S} gave it to",
    "When {N1} and {N2} arrived at the {PLACE}, {S} handed a {OBJECT} to",
    "After {N1} and {N2} met at the {PLACE}, {S} showed the {OBJECT} to",
    "While {N1} and {N2} were walking to the {PLACE}, {S} threw a {OBJECT} to",
    "Yesterday, {N1} and {N2} went to the {PLACE}. {S} brought a {OBJECT} to",
    "Later that day, {N1} and {N2} were cleaning the {PLACE}, and {S} passed a {OBJECT} to",
    "{N1} and {N2} had a long argument at the {PLACE}. Afterwards {S} said to",
    "At the {PLACE}, {N1} and {N2} were talking, and then {S} said to",
    "On the way to the {PLACE}, {N1} and {N2} found a {OBJECT}. {S} gave it to",
    # Held out (never trained on). Built only from words the training templates use, so no
    # held-out word has an untrained embedding: what is new is the sentence, not the vocabulary.
    "After {N1} and {N2} found a {OBJECT} at the {PLACE}, {S} gave it to",
    "Then, {N1} and {N2} were commuting to the {PLACE}. {S} wanted to give a {OBJECT} to",
    "While {N1} and {N2} had a lot of fun at the {PLACE}, {S} decided to give the {OBJECT} to",
    "After the lunch, {N1} and {N2} had a long argument, and afterwards {S} said to",
)
HELDOUT_TEMPLATES: tuple[int, ...] = (24, 25, 26, 27)
TRAIN_TEMPLATES: tuple[int, ...] = tuple(i for i in range(len(IOI_TEMPLATES)) if i not in HELDOUT_TEMPLATES)

# Training-only lead-in sentences (see ioi_training_texts).
FILLERS: tuple[str, ...] = (
    "It was a nice day.",
    "The weather was warm.",
    "Everyone was happy that morning.",
    "It was late in the evening.",
    "The town was quiet.",
)

_WORD_RE = re.compile(r"\w+|[^\w\s]")
_NAME_RE = re.compile(r"\w+")


def split_words(text: str) -> list[str]:
    """The default tokenizer's pre-tokenization: word runs, each punctuation mark on its own."""
    return _WORD_RE.findall(text)


def vocabulary_words() -> list[str]:
    """Every word and punctuation mark the generators can produce, in a stable order."""
    words: dict[str, None] = {}
    for template in IOI_TEMPLATES:
        for w in split_words(re.sub(r"\{\w+\}", " ", template)):
            words[w] = None
    for w in (*split_words(" ".join(FILLERS)), *NAMES, *PLACES, *OBJECTS):
        words[w] = None
    return list(words)


def is_heldout_pair(a: str, b: str) -> bool:
    """Deterministic ~20% split of unordered name pairs; held-out pairs never occur in training
    in either role or order. sha256, not hash(), so the split survives PYTHONHASHSEED."""
    key = "|".join(sorted((a, b))).encode()
    return hashlib.sha256(key).digest()[0] % 5 == 0


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptPair:
    """A clean/corrupted prompt pair; the metric compares logits of `answer` and `wrong` (the
    clean prompt's correct and incorrect next tokens) at the final position."""

    clean: str
    corrupted: str
    answer: str
    wrong: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _words(words: Mapping[str, Sequence[str]] | None, *keys: str) -> list[list[str]]:
    """The word lists a generator draws from: the given ones, else its candidates (``CANDIDATES``)."""
    return [list(words[k]) if words is not None and k in words else list(CANDIDATES[k]) for k in keys]


def _fill(template: str, n1: str, n2: str, s: str, place: str, obj: str) -> str:
    return template.format(N1=n1, N2=n2, S=s, PLACE=place, OBJECT=obj)


def _pick_pair(rng: random.Random, split: str, names: Sequence[str] = NAMES) -> tuple[str, str]:
    while True:
        io, s = rng.sample(names, 2)
        held = is_heldout_pair(io, s)
        if split == "all" or held == (split == "heldout"):
            return io, s


def ioi_pairs(
    n: int,
    seed: int = 0,
    corruption: str = "swap",
    split: str = "all",
    template: int | None = None,
    words: Mapping[str, Sequence[str]] | None = None,
) -> list[PromptPair]:
    """`n` IOI prompt pairs. The clean prompt ends before the indirect object: answer = IO,
    wrong = S. Orders alternate ABBA, BABA, ...

    corruption: "swap" replaces the repeated subject (S2) by the IO name, so the corrupted
      prompt's correct answer is the clean prompt's S; "abc" replaces all three name slots by
      three other distinct names. Both keep the token length.
    split: "train" (training templates and name pairs), "heldout" (held-out templates and
      held-out name pairs, never trained on), "all" (any template, any pair).
    template: an index into IOI_TEMPLATES; all pairs then have the same token length. With a
      fixed template the split only selects the name pairs (a held-out template is refused for
      split="train").
    words: {"names": ..., "places": ..., "objects": ...}, the words to draw from (checked on a
      tokenizer by ``engine.families``); default the shipped lists NAMES, PLACES, OBJECTS.
    """
    names, places, objects = _words(words, "names", "places", "objects")
    if corruption not in ("swap", "abc"):
        raise ValueError(f"corruption must be 'swap' or 'abc', got {corruption!r}")
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if template is not None:
        if not 0 <= template < len(IOI_TEMPLATES):
            raise ValueError(f"template must be in [0, {len(IOI_TEMPLATES)}), got {template}")
        if split == "train" and template in HELDOUT_TEMPLATES:
            raise ValueError(f"template {template} is held out; it is never used with split='train'")
        choices: tuple[int, ...] = (template,)
    else:
        choices = {"train": TRAIN_TEMPLATES, "heldout": HELDOUT_TEMPLATES}.get(split, tuple(range(len(IOI_TEMPLATES))))
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        t = IOI_TEMPLATES[rng.choice(choices)]
        io, s = _pick_pair(rng, split, names)
        place, obj = rng.choice(places), rng.choice(objects)
        n1, n2 = (io, s) if i % 2 == 0 else (s, io)  # ABBA, then BABA
        clean = _fill(t, n1, n2, s, place, obj)
        if corruption == "swap":
            corrupted = _fill(t, n1, n2, io, place, obj)
        else:
            c1, c2, c3 = rng.sample([x for x in names if x not in (io, s)], 3)
            corrupted = _fill(t, c1, c2, c3, place, obj)
        pairs.append(PromptPair(clean, corrupted, io, s))
    return pairs


def induction_pairs(
    n: int, seed: int = 0, length: int = 8, words: Mapping[str, Sequence[str]] | None = None
) -> list[PromptPair]:
    """`n` induction pairs. Clean: `length` distinct words w1..wL, then w1..w(L-1) again; the
    answer is wL (what an induction head predicts). Corrupted: the first half replaced by another
    sequence that shares only w(L-1), at the same place, followed by a different word `wrong`;
    the second half is unchanged, so induction now predicts `wrong`. Words come from
    NAMES + OBJECTS + PLACES (or ``words["words"]``); all pairs have 2*length-1 words."""
    (pool,) = _words(words, "words")
    if not 2 <= length <= len(pool) // 2:
        raise ValueError(f"length must be in [2, {len(pool) // 2}], got {length}")
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        seq = rng.sample(pool, length)
        others = rng.sample([w for w in pool if w not in seq], length - 1)
        first = others[: length - 2] + [seq[-2], others[-1]]  # anchor w(L-1), then `wrong`
        second = seq[:-1]
        pairs.append(
            PromptPair(" ".join(seq + second), " ".join(first + second), answer=seq[-1], wrong=others[-1])
        )
    return pairs


GREATER_THAN_TEMPLATE = "The war lasted from the year {C}{YY} to the year"
GREATER_THAN_START = "01"  # the paper's corrupted start year: every year after it is licensed


def greater_than_pairs(n: int, seed: int = 0, words: Mapping[str, Sequence[str]] | None = None) -> list[PromptPair]:
    """`n` greater-than pairs (Hanna et al. 2023). Clean: "The war lasted from the year 17YY to the
    year"; answer = the year 17(YY+1), wrong = 17(YY-1): the smallest year the sentence allows against
    the largest it rules out. Corrupted: the start year 1701 (the paper's corruption), after which both
    are allowed. YY is drawn from the years whose neighbours are in the list too, with YY-1 >= 02."""
    century, years = _words(words, "century", "years")
    have = set(years)
    usable = [y for y in years if 3 <= int(y) <= 98 and {f"{int(y) - 1:02d}", f"{int(y) + 1:02d}"} <= have]
    if not usable or GREATER_THAN_START not in have:
        raise ValueError("greater-than needs the year 01 and three consecutive two-digit years from 02 to 99")
    c = century[0]
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        yy = int(rng.choice(usable))
        clean = GREATER_THAN_TEMPLATE.format(C=c, YY=f"{yy:02d}")
        corrupted = GREATER_THAN_TEMPLATE.format(C=c, YY=GREATER_THAN_START)
        pairs.append(PromptPair(clean, corrupted, answer=f"{c}{yy + 1:02d}", wrong=f"{c}{yy - 1:02d}"))
    return pairs


# Subject, a preposition, the attractor noun; the verb comes next (Linzen et al. 2016's "The keys
# to the cabinet are"). Every template has the same number of words.
AGREEMENT_TEMPLATES: tuple[str, ...] = (
    "The {SUBJ} to the {ATTR}",
    "The {SUBJ} near the {ATTR}",
    "The {SUBJ} behind the {ATTR}",
    "The {SUBJ} beside the {ATTR}",
)


def agreement_pairs(
    n: int, seed: int = 0, words: Mapping[str, Sequence[Any]] | None = None, template: int | None = None
) -> list[PromptPair]:
    """`n` subject-verb agreement pairs. Clean: "The key to the cabinets" (a subject, a preposition,
    an attractor noun of another noun pair), answer the verb that agrees with the subject (" is"),
    wrong the other (" are"). Corrupted: the subject's number flipped ("The keys to the cabinets"),
    so the answer flips; the attractor is unchanged. Subjects alternate singular, plural; the
    attractor's number is drawn (half agree with the subject, half do not). template: an index into
    AGREEMENT_TEMPLATES (one preposition, so one token length on any tokenizer); default any."""
    nouns, verbs = _words(words, "nouns", "verbs")
    if template is not None and not 0 <= template < len(AGREEMENT_TEMPLATES):
        raise ValueError(f"template must be in [0, {len(AGREEMENT_TEMPLATES)}), got {template}")
    templates = AGREEMENT_TEMPLATES if template is None else AGREEMENT_TEMPLATES[template:template + 1]
    if len(nouns) < 2:
        raise ValueError("subject-verb agreement needs two (singular, plural) noun pairs")
    sg_verb, pl_verb = verbs[0]
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        chosen = rng.choice(templates)
        subj, attr = rng.sample(nouns, 2)
        number, attr_number = i % 2, rng.randrange(2)  # 0 singular, 1 plural
        attractor = attr[attr_number]
        clean = chosen.format(SUBJ=subj[number], ATTR=attractor)
        corrupted = chosen.format(SUBJ=subj[1 - number], ATTR=attractor)
        answer, wrong = (sg_verb, pl_verb) if number == 0 else (pl_verb, sg_verb)
        pairs.append(PromptPair(clean, corrupted, answer, wrong))
    return pairs


# --------------------------------------------------------------------------------------------
# Corruptions of user-typed IOI-shaped prompts
# --------------------------------------------------------------------------------------------


def _ioi_names(prompt: str) -> tuple[str, str, list[re.Match]] | None:
    """(io, s, matches of every name) if the prompt names exactly two people from NAMES, one
    once (IO) and one at least twice (S); otherwise None."""
    matches = [m for m in _NAME_RE.finditer(prompt) if m.group() in NAME_SET]
    counts: dict[str, int] = {}
    for m in matches:
        counts[m.group()] = counts.get(m.group(), 0) + 1
    if len(counts) != 2 or sorted(counts.values())[0] != 1 or max(counts.values()) < 2:
        return None
    io = next(k for k, v in counts.items() if v == 1)
    s = next(k for k, v in counts.items() if v > 1)
    return io, s, matches


def _require_ioi(prompt: str) -> tuple[str, str, list[re.Match]]:
    found = _ioi_names(prompt)
    if found is None:
        names = [m.group() for m in _NAME_RE.finditer(prompt) if m.group() in NAME_SET]
        raise ValueError(
            "not an IOI-shaped prompt: it needs exactly two distinct names from the name list, "
            f"one appearing once and the other repeated; names found: {names or 'none'}"
        )
    return found


def _replace(prompt: str, matches: list[re.Match], new: list[str]) -> str:
    out, last = [], 0
    for m, w in zip(matches, new):
        out += [prompt[last : m.start()], w]
        last = m.end()
    return "".join(out) + prompt[last:]


def guess_answers(prompt: str) -> tuple[str, str] | None:
    """(answer, wrong) for an IOI-shaped prompt: the name that appears once and the repeated
    name; None if the prompt is not IOI-shaped."""
    found = _ioi_names(prompt)
    return None if found is None else (found[0], found[1])


def swap_names(prompt: str) -> str:
    """The "swap" corruption of any IOI-shaped prompt: the last mention of the repeated name S
    becomes the IO name, so the other name is now the licensed answer. Same token length.
    Raises ValueError if the prompt is not IOI-shaped."""
    io, s, matches = _require_ioi(prompt)
    last_s = max(i for i, m in enumerate(matches) if m.group() == s)
    return _replace(prompt, matches, [io if i == last_s else m.group() for i, m in enumerate(matches)])


def abc_corruption(prompt: str, seed: int = 0) -> str:
    """The "ABC" corruption of any IOI-shaped prompt: every name mention becomes a different,
    random name, all distinct and none of the original two. Same token length.
    Raises ValueError if the prompt is not IOI-shaped."""
    io, s, matches = _require_ioi(prompt)
    rng = random.Random(seed)
    new = rng.sample([x for x in NAMES if x not in (io, s)], len(matches))
    return _replace(prompt, matches, new)


# --------------------------------------------------------------------------------------------
# Recognising a prompt set's template, and reference sets drawn from it
# --------------------------------------------------------------------------------------------

_SLOT_RE = re.compile(r"(\{\w+\})")
_SLOT_WORDS: dict[str, frozenset[str]] = {
    "N1": NAME_SET, "N2": NAME_SET, "S": NAME_SET, "PLACE": frozenset(PLACES), "OBJECT": frozenset(OBJECTS),
}  # fmt: skip
_INDUCTION_WORDS = frozenset((*NAMES, *OBJECTS, *PLACES))
# Reference sets are drawn with their own seeds (this offset + the spec's seed), so a reference set
# never repeats a prompt set made by the same generator with the same small seed.
REFERENCE_SEED_OFFSET = 1_000_000_007


def _template_words(template: str) -> list[str]:
    """A template as the words ``split_words`` gives its prompts, slots ('{N1}') kept as words."""
    out: list[str] = []
    for part in _SLOT_RE.split(template):
        out += [part] if _SLOT_RE.fullmatch(part) else split_words(part)
    return out


_IOI_TEMPLATE_WORDS = [_template_words(t) for t in IOI_TEMPLATES]


def ioi_template_of(prompt: str) -> int | None:
    """The index of the IOI template that ``prompt`` fills (names, places and objects from the
    generator's word lists in its slots; spacing around punctuation ignored), or None."""
    words = split_words(prompt)
    for index, pattern in enumerate(_IOI_TEMPLATE_WORDS):
        if len(pattern) == len(words) and all(
            (w in _SLOT_WORDS[p[1:-1]]) if p.startswith("{") else w == p for p, w in zip(pattern, words)
        ):
            return index
    return None


def induction_length_of(prompt: str) -> int | None:
    """L if ``prompt`` is an induction prompt of ``induction_pairs`` (L distinct generator words,
    then the first L-1 of them again), else None."""
    words = split_words(prompt)
    if len(words) < 3 or len(words) % 2 == 0:
        return None
    length = (len(words) + 1) // 2
    first = words[:length]
    if words[length:] != first[:-1] or len(set(first)) != length or not all(w in _INDUCTION_WORDS for w in first):
        return None
    return length


def recognise(prompts: Sequence[str]) -> tuple[str, int] | None:
    """("ioi", template index) or ("induction", L) when every prompt comes from that one built-in
    template; None otherwise (a mix of templates, or prompts the generator does not make)."""
    if not prompts:
        return None
    for kind, find in (("ioi", ioi_template_of), ("induction", induction_length_of)):
        found = {find(p) for p in prompts}
        if len(found) == 1 and None not in found:
            return kind, found.pop()
    return None


def describe_template(kind: str, which: int) -> str:
    if kind == "ioi":
        return f"IOI template {which} ({IOI_TEMPLATES[which]!r}) with other names, places and objects"
    return f"induction sequences of {which} random words, repeated"


def reference_prompts(prompts: Sequence[str], n: int, seed: int = 0) -> list[str] | None:
    """``n`` prompts from the built-in template that every one of ``prompts`` fills, or None if the
    generator does not recognise them (``recognise``): the clean prompts of
    ``ioi_pairs(n, template=t)`` (IOI sentences of that template with other names, places and
    objects, both name orders) or of ``induction_pairs(n, length=L)``. Seeded: generated with seed
    ``REFERENCE_SEED_OFFSET + seed``. The reference distribution of mean and resample ablation."""
    found = recognise(prompts)
    if found is None:
        return None
    kind, which = found
    if kind == "ioi":
        pairs = ioi_pairs(n, seed=REFERENCE_SEED_OFFSET + seed, template=which)
    else:
        pairs = induction_pairs(n, seed=REFERENCE_SEED_OFFSET + seed, length=which)
    return [p.clean for p in pairs]


# --------------------------------------------------------------------------------------------
# Position roles: what each word of a prompt is, so that prompts of different templates, name
# orders and lengths can be compared position by position (engine/inputs.py maps words to tokens)
# --------------------------------------------------------------------------------------------

BOS, END = "BOS", "END"  # the tokens before the text (added by the engine), and the final one
# Names the taggers give; a literal word spelled like one of them (or like an index, or like a
# numbered role) is quoted instead ("'END'"), so that a role name always means one thing.
STRUCTURAL_ROLES = frozenset({BOS, END, "IO", "S1", "S2", "PLACE", "OBJECT", "A", "B", "YEAR", "SUBJ", "ATTR"})
_NUMBERED_ROLE = re.compile(r"(first|repeat|diff)\d+")
ROLE_KINDS = {
    "ioi": "an IOI prompt (one name once, the other twice)",
    "induction": "a repeated sequence",
    "greater_than": "a greater-than prompt (a start year, then 'to the year')",
    "agreement": "a subject-verb agreement prompt (a subject, a preposition, an attractor noun)",
    "words": "neither an IOI prompt nor a repeated sequence",
}


@dataclass(frozen=True)
class WordRole:
    """A word of a prompt (``split_words``) at characters [start, end), and its role."""

    start: int
    end: int
    role: str


def word_roles(prompt: str, answer: str | None = None, wrong: str | None = None) -> tuple[str, list[WordRole]]:
    """(kind, every word's role) for a clean prompt, from its words and (when given) its answers.

    - ``"ioi"``: the answer appears once and the wrong answer twice (else, or without answers: two
      names of the name list, one once and one twice). Wang et al.'s names: IO (the name once), S1 and S2
      (the repeated subject, first and second time); for a built-in template also PLACE and OBJECT.
    - ``"induction"``: L distinct words and the first L-1 of them again (the answer, when given,
      is the L-th word). After Olsson et al.'s [A][B] ... [A] -> [B]: A is the earlier copy of the
      final word, B the word after it (the answer's earlier copy); the others ``first1``..
      ``first{L-2}`` and ``repeat1``..``repeat{L-2}``, counted from the start.
    - ``"greater_than"``: a prompt of ``GREATER_THAN_TEMPLATE``; its start year ("1732", one word
      of two tokens on GPT-2: " 17" and "32") is YEAR.
    - ``"agreement"``: a prompt of ``AGREEMENT_TEMPLATES`` with nouns of ``NOUN_PAIRS``: SUBJ (the
      subject) and ATTR (the attractor noun, the final word, so its token is END).
    - ``"words"``: anything else.

    Every other word is named by its own text, a repeated one numbered from its second time
    (``the``, ``the#2``). The final token (END), the tokens before the text (BOS) and, for
    ``"words"``, the positions where clean and corrupted differ are tokens, not words: the engine
    names those (``engine.inputs.pair_roles``)."""
    matches = list(_WORD_RE.finditer(prompt))
    words = [m.group() for m in matches]
    kind, named = "ioi", _ioi_roles(prompt, words, answer, wrong)
    if named is None:
        kind, named = "induction", _induction_roles(words, answer)
    for other, tagger in (("greater_than", _greater_than_roles), ("agreement", _agreement_roles)):
        if named is None:
            kind, named = other, tagger(words)
    if named is None:
        kind, named = "words", {}
    roles = numbered([named.get(i) or literal_role(w) for i, w in enumerate(words)])
    return kind, [WordRole(m.start(), m.end(), role) for m, role in zip(matches, roles)]


_WORD_AT = re.compile(r"(.+?)(?:#([1-9][0-9]*))?")


def word_at(prompt: str, value: str) -> tuple[int, int]:
    """Where a role column's value (``prompt_sets``) names a word of ``prompt``: characters [start, end)
    of the word ``value`` (a word of ``split_words``), or of its n-th time for ``word#n`` (counted
    from 1, as the guessed roles number a repeated word). A ValueError saying why it names none."""
    m = _WORD_AT.fullmatch(value.strip())
    if m is None:
        raise ValueError("is empty: name a word of the clean prompt")
    word, n = m.group(1), int(m.group(2) or 1)
    found = [w for w in _WORD_RE.finditer(prompt) if w.group() == word]
    if not found:
        raise ValueError(f"{word[:40]!r} is not a word of the clean prompt")
    if n > len(found):
        raise ValueError(f"{word[:40]!r} is {len(found)} time(s) in the clean prompt, not {n}")
    if len(found) > 1 and m.group(2) is None:
        raise ValueError(f"{word[:40]!r} is {len(found)} times in the clean prompt: say which, e.g. {word[:40]}#2")
    return found[n - 1].start(), found[n - 1].end()


TOKEN_NAMES = re.compile(r"BOS|END|diff\d+|\d+")  # names a sweep gives tokens, not words


def role_errors(prompt: str, roles: Mapping[str, str]) -> list[tuple[str, str]]:
    """(role, why) for each role the user gave (a prompt set's role columns) that does not name a
    word of ``prompt`` of its own (``word_at``): a token's name taken, no such word, a word named twice."""
    out: list[tuple[str, str]] = []
    where: dict[tuple[int, int], str] = {}
    for name, value in roles.items():
        if TOKEN_NAMES.fullmatch(name):
            out.append((name, f"role column {name[:40]}: the sweep gives that name to tokens (BOS, END, diff1, ..., "
                              f"indices), not words; name the role otherwise"))
            continue
        try:
            span = word_at(prompt, value)
        except ValueError as exc:
            out.append((name, f"role {name[:40]}: {exc}"))
            continue
        if span in where:
            out.append((name, f"roles {where[span][:40]} and {name[:40]} name the same word: a word has one role"))
        where.setdefault(span, name)
    return out


def literal_role(text: str) -> str:
    """A word (or token) named by its own text, quoted where it would read as another role or an index."""
    if text in STRUCTURAL_ROLES or text.isdigit() or _NUMBERED_ROLE.fullmatch(text):
        return f"'{text}'"
    return text


def numbered(roles: Sequence[str]) -> list[str]:
    """Roles made unique: a name's second and later times get '#2', '#3', ..."""
    seen: dict[str, int] = {}
    out = []
    for role in roles:
        seen[role] = seen.get(role, 0) + 1
        out.append(role if seen[role] == 1 else f"{role}#{seen[role]}")
    return out


def _ioi_roles(prompt: str, words: list[str], answer: str | None, wrong: str | None) -> dict[int, str] | None:
    found = _ioi_names(prompt)
    candidates = ([(answer.strip(), wrong.strip())] if answer and wrong else []) + ([found[:2]] if found else [])
    for io, s in candidates:
        io_at = [i for i, w in enumerate(words) if w == io]
        s_at = [i for i, w in enumerate(words) if w == s]
        if len(io_at) == 1 and len(s_at) == 2:
            break
    else:
        return None
    named = {io_at[0]: "IO", s_at[0]: "S1", s_at[1]: "S2"}
    template = ioi_template_of(prompt)
    if template is not None:  # the words are the template's, one for one (ioi_template_of)
        for i, part in enumerate(_IOI_TEMPLATE_WORDS[template]):
            if part in ("{PLACE}", "{OBJECT}"):
                named[i] = part[1:-1]
    return named


def _induction_roles(words: list[str], answer: str | None) -> dict[int, str] | None:
    n = len(words)
    if n < 3 or n % 2 == 0:
        return None
    length = (n + 1) // 2
    first = words[:length]
    if words[length:] != first[:-1] or len(set(first)) != length:
        return None
    if answer is not None and answer.strip() != first[-1]:
        return None
    named = {length - 2: "A", length - 1: "B", n - 1: f"repeat{length - 1}"}  # the last: END, as a token
    for k in range(length - 2):
        named[k], named[length + k] = f"first{k + 1}", f"repeat{k + 1}"
    return named


_GREATER_THAN_WORDS = _template_words(GREATER_THAN_TEMPLATE.replace("{C}{YY}", "{YEAR}"))
_AGREEMENT_WORDS = [_template_words(t) for t in AGREEMENT_TEMPLATES]
_NOUNS = frozenset(w for pair in NOUN_PAIRS for w in pair)


def _greater_than_roles(words: list[str]) -> dict[int, str] | None:
    if len(words) != len(_GREATER_THAN_WORDS):
        return None
    for i, (part, w) in enumerate(zip(_GREATER_THAN_WORDS, words)):
        if part == "{YEAR}":
            if not re.fullmatch(r"\d{4}", w):
                return None
            at = i
        elif part != w:
            return None
    return {at: "YEAR"}


def _agreement_roles(words: list[str]) -> dict[int, str] | None:
    for pattern in _AGREEMENT_WORDS:
        if len(pattern) == len(words) and all(
            (w in _NOUNS) if p.startswith("{") else w == p for p, w in zip(pattern, words)
        ):
            return {i: p[1:-1] for i, p in enumerate(pattern) if p.startswith("{")}
    return None


# --------------------------------------------------------------------------------------------
# Training data
# --------------------------------------------------------------------------------------------


def ioi_training_texts(n: int, seed: int = 0, prefix_prob: float = 0.5) -> list[str]:
    """Complete IOI sentences (clean prompt + " " + IO) from training templates and pairs only.

    With probability `prefix_prob` a sentence is preceded by a lead-in: a filler sentence or
    another complete training IOI sentence with two other names (each of which then appears
    twice, so the answer is still the one name that appears once). Without this the model ties
    IOI to the absolute positions of the training templates and fails held-out templates whose
    names sit elsewhere."""
    rng = random.Random(seed)
    main = ioi_pairs(n, seed=rng.randrange(2**32), split="train")
    texts = []
    for p in main:
        text = f"{p.clean} {p.answer}"
        r = rng.random()
        if r < prefix_prob / 2:
            text = f"{rng.choice(FILLERS)} {text}"
        elif r < prefix_prob:
            while True:
                q = ioi_pairs(1, seed=rng.randrange(2**32), split="train")[0]
                if not {q.answer, q.wrong} & {p.answer, p.wrong}:
                    break
            text = f"{q.clean} {q.answer}. {text}"
        texts.append(text)
    return texts


def induction_training_texts(n: int, seed: int = 0, min_len: int = 4, max_len: int = 30) -> list[str]:
    """Random sequences of distinct vocabulary words (any word the tokenizer knows, so induction
    is learnt for every token), each of random length L in [min_len, max_len], written twice:
    2*L words."""
    vocab = vocabulary_words()
    rng = random.Random(seed)
    return [" ".join(seq + seq) for seq in (rng.sample(vocab, rng.randint(min_len, max_len)) for _ in range(n))]


def training_texts(n_ioi: int, n_induction: int, seed: int = 0) -> list[str]:
    """A shuffled mix of IOI sentences and repeated sequences."""
    texts = ioi_training_texts(n_ioi, seed) + induction_training_texts(n_induction, seed + 1)
    random.Random(seed + 2).shuffle(texts)
    return texts


def iter_training_texts(seed: int = 0, chunk: int = 1024, ioi_fraction: float = 0.75) -> Iterator[str]:
    """Endless stream of training texts, generated in seeded chunks."""
    for k in range(10**12):
        n_ioi = int(chunk * ioi_fraction)
        yield from training_texts(n_ioi, chunk - n_ioi, seed=seed * 1_000_003 + 3 * k)


# --------------------------------------------------------------------------------------------
# Families, for the UI
# --------------------------------------------------------------------------------------------


def _contexts(templates: Sequence[str], slot: str, **fill: str) -> tuple[str, ...]:
    """Each template with ``slot`` as ``{W}`` (every time it occurs) and the other slots filled."""
    out = []
    for t in templates:
        if "{" + slot + "}" in t:
            out.append(t.replace("{" + slot + "}", "{W}").format(W="{W}", **fill))
    return tuple(out)


_IOI_FILL = {"N1": NAMES[0], "N2": NAMES[1], "S": NAMES[1], "PLACE": PLACES[0], "OBJECT": OBJECTS[0]}


def _ioi_contexts(slot: str) -> tuple[str, ...]:
    """Where IOI puts a word of ``slot``: every template; a name (slot "N") in all three name slots
    at once, and after the prompt, as the answer."""
    if slot == "N":
        templates = [t.replace("{N2}", "{N}").replace("{N1}", "{N}").replace("{S}", "{N}") for t in IOI_TEMPLATES]
        fill = {"PLACE": PLACES[0], "OBJECT": OBJECTS[0]}
        return _contexts(templates, "N", **fill) + (IOI_TEMPLATES[0].format(**_IOI_FILL) + " {W}",)
    return _contexts(IOI_TEMPLATES, slot, **{k: v for k, v in _IOI_FILL.items() if k != slot})


@dataclass(frozen=True)
class Need:
    """Words a family draws from ``CANDIDATES[key]``: each (or, for a tuple, each of its words) is
    kept only where it is one token in every context (a text with ``{W}`` where the word goes: the
    places the family puts it, the answer after the prompt included); at least ``minimum`` kept."""

    key: str
    what: str  # how a refusal names them: "names", "two-digit years after 17", ...
    contexts: tuple[str, ...]
    minimum: int


@dataclass(frozen=True)
class Family:
    name: str
    description: str  # one line, for the picker
    make: Callable[..., list[PromptPair]]  # make(n, seed=0, words=None, **options)
    note: str = ""  # what it tests, how pairs are made, the corruption, the metric, its limits, the paper
    needs: tuple[Need, ...] = ()
    roles: str = ""  # the positions a sweep by role gets


_IOI_NEEDS = (
    Need("names", "first names", _ioi_contexts("N"), 6),
    Need("places", "places (after 'the')", _ioi_contexts("PLACE"), 2),
    Need("objects", "objects (after 'a')", _ioi_contexts("OBJECT"), 2),
)
_IOI_NOTE = (
    "Tests indirect object identification (Wang et al. 2022, 'Interpretability in the Wild'): after two names "
    "and a repeat of one of them (S), the model should name the other (IO). Pairs: {n_templates} templates, both "
    "name orders (ABBA, BABA), names, places and objects drawn from the lists, each kept only where it is one "
    "token in every place a template puts it. Metric: logit(IO) - logit(S). "
)
_INDUCTION_NOTE = (
    "Tests induction (Olsson et al. 2022, 'In-context learning and induction heads'): [A][B] ... [A] -> [B]. "
    "Pairs: L distinct words (default 8) and the first L-1 again; the answer is the L-th word. Corrupted: the "
    "first half replaced by other words that keep only the anchor A (the repeat's last word) in its place, "
    "followed by another word, so induction now predicts that word (the wrong answer); the second half is "
    "unchanged. Metric: logit(answer) - logit(wrong). Words are drawn from the name, object and place lists, kept "
    "only where one token at the start, inside and at the end of a text. It cannot separate induction from "
    "other copying of the bigram A B; on a byte-level tokenizer the first word is a different token at the "
    "start of the text (no leading space) than in the repeat."
)
_GREATER_THAN_NOTE = (
    "Tests whether the model prefers years after a start year (Hanna et al. 2023, 'How does GPT-2 compute "
    "greater-than?'). Clean: 'The war lasted from the year 17YY to the year'; answer ' 17(YY+1)', wrong "
    "' 17(YY-1)', YY from 03 to 98. Corrupted: the start year 1701 (the paper's corruption), after which both "
    "answers are allowed, so the corruption removes the information rather than flipping the answer. Deviation "
    "from the paper: the paper ends the prompt at '17' and its metric is the probability difference "
    "sum p(years > YY) - sum p(years <= YY) over all 100 two-digit tokens; Patch Studio's answers follow the "
    "prompt after a space, so the prompt ends at 'year' and each answer is two tokens, ' 17' then the "
    "two-digit token; with ' 17' shared, the sequence log-probability difference S(answer) - S(wrong) is "
    "exactly the logit difference logit(YY+1) - logit(YY-1) at the '17' position, one neighbour on each "
    "side of the boundary instead of the paper's sums. The '17' position is the answer's, not the prompt's, "
    "so it is never patched (the paper's MLPs act there): sweeps see only what reaches it from the prompt, "
    "and methods that need one-token answers refuse this family. Needs ' 17' and the two-digit years as "
    "tokens of their own (true of GPT-2's tokenizer; a word-level or digit-by-digit tokenizer is refused)."
)
_AGREEMENT_NOTE = (
    "Tests subject-verb number agreement across an attractor (Linzen et al. 2016, 'Assessing the ability of "
    "LSTMs to learn syntax-sensitive dependencies'; Finlayson et al. 2021, 'Causal analysis of syntactic "
    "agreement mechanisms in neural language models'). Clean: 'The key to the cabinets' (a subject, one of "
    "four prepositions, an attractor noun), answer the verb agreeing with the subject (' is'), wrong the "
    "other (' are'). Corrupted: the subject's number flipped ('The keys to the cabinets'), so the answer "
    "flips; the attractor is unchanged, and agrees with the subject in about half of the pairs. Metric: "
    "logit(agreeing verb) - logit(other verb). It measures where the subject's number is carried to the "
    "verb; it cannot separate number from the lexical identity of the singular and plural forms (they are "
    "different tokens), nor say how the attractor interferes (its number is never the corrupted variable)."
)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "ioi_swap",
            "Indirect object identification; corrupted = the repeated subject replaced by the "
            "other name, which flips the answer.",
            lambda n, seed=0, words=None, **kw: ioi_pairs(n, seed=seed, corruption="swap", words=words, **kw),
            _IOI_NOTE.format(n_templates=len(IOI_TEMPLATES))
            + "Corrupted: the repeated subject's second mention (S2) replaced by the IO name, so the licensed "
            "answer flips to S. Only S2 changes, so a sweep sees what flows from S2 (the duplicate-token and "
            "S-inhibition route); what is read from IO and S1 themselves is the same in both prompts, and this "
            "corruption cannot show it.",
            _IOI_NEEDS,
            "IO, S1, S2, PLACE, OBJECT, END and the template's words",
        ),
        Family(
            "ioi_abc",
            "Indirect object identification; corrupted = all three names replaced by three "
            "unrelated names (no answer licensed).",
            lambda n, seed=0, words=None, **kw: ioi_pairs(n, seed=seed, corruption="abc", words=words, **kw),
            _IOI_NOTE.format(n_templates=len(IOI_TEMPLATES))
            + "Corrupted: all three name mentions replaced by three other distinct names, so neither IO nor S "
            "is licensed (Wang et al.'s ABC distribution). It cannot separate which name mention carries "
            "the signal: all of them change at once.",
            _IOI_NEEDS,
            "IO, S1, S2, PLACE, OBJECT, END and the template's words",
        ),
        Family(
            "induction",
            "A random word sequence followed by its repeat; the answer is the next word of the "
            "repeat. Corrupted = a different first half whose copy of the last word is followed "
            "by another word.",
            lambda n, seed=0, words=None, **kw: induction_pairs(n, seed=seed, words=words, **kw),
            _INDUCTION_NOTE,
            (Need("words", "words (names, objects, places)", ("{W} {W} {W}",), 15),),
            "A (the earlier copy of the final word), B (the word after it), first1.., repeat1.., END",
        ),
        Family(
            "greater_than",
            "Greater-than (Hanna et al. 2023): 'The war lasted from the year 17YY to the year', answer a "
            "later year; corrupted = the start year 1701.",
            lambda n, seed=0, words=None, **kw: greater_than_pairs(n, seed=seed, words=words, **kw),
            _GREATER_THAN_NOTE,
            (
                Need("century", "'17' as a token of its own before a two-digit year",
                     (GREATER_THAN_TEMPLATE.format(C="{W}", YY="32"),
                      GREATER_THAN_TEMPLATE.format(C="17", YY="32") + " {W}33"), 1),
                Need("years", "two-digit years that are single tokens after '17'",
                     (GREATER_THAN_TEMPLATE.format(C="17", YY="{W}"),
                      GREATER_THAN_TEMPLATE.format(C="17", YY="32") + " 17{W}"), 10),
            ),
            "YEAR (the start year's tokens, ' 17' and YY), the template's words, END ('year')",
        ),
        Family(
            "agreement",
            "Subject-verb agreement (Linzen et al. 2016): 'The key(s) to the cabinet(s)' -> ' is'/' are'; "
            "corrupted = the subject's number flipped, which flips the answer.",
            lambda n, seed=0, words=None, **kw: agreement_pairs(n, seed=seed, words=words, **kw),
            _AGREEMENT_NOTE,
            (
                Need("nouns", "nouns whose singular and plural are single tokens",
                     _contexts(AGREEMENT_TEMPLATES, "SUBJ", ATTR="cabinet")
                     + _contexts(AGREEMENT_TEMPLATES, "ATTR", SUBJ="key"), 4),
                Need("verbs", "the verbs 'is' and 'are' as single tokens after the prompt",
                     (AGREEMENT_TEMPLATES[0].format(SUBJ="key", ATTR="cabinet") + " {W}",), 1),
            ),
            "SUBJ, the preposition and 'the', END (the attractor ATTR is the final token)",
        ),
    )
}
