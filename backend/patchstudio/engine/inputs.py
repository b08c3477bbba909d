"""Tokenizing and checking prompt pairs, with errors that name the problem.

Answers are tokenized as they follow the prompt: the answer word (stripped) is appended to the
clean prompt after one space, and its tokens are what the tokenizer writes there minus the
prompt's own tokens. So a byte-level BPE gives "ĠMary", a SentencePiece-style one "▁Mary" and a
word-level one "Mary", whichever way the tokenizer marks a leading space; the tokenizer's BOS
(prepended by it or by TransformerLens, per model) is part of the prompt, never of the answer.
An answer of several tokens is allowed: it is scored by teacher-forced sequence log-probability
(see ``engine.metrics``), by the methods that support it.

Per-position sweeps go by role, not by index (``role_axis``): each pair's tokens are named from its
words (``models.prompts.word_roles``: IO, S1, S2 of an IOI prompt, the template's words, the
copies of a repeated sequence) mapped to tokens through the tokenizer's character offsets, plus
END (the final token), BOS (tokens before the text) and, for other pairs, diff1, diff2, ... (where
clean and corrupted differ). A cell of the position axis is a role every prompt has; where roles
cannot be aligned the spec is refused on ``positions``, never averaged by index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from patchstudio.errors import InputError
from patchstudio.models import prompts as P

__all__ = ["InputError", "PreparedPair", "RoleAxis", "TokenCache", "prepare_pairs", "role_axis", "token_cache"]


@dataclass(frozen=True)
class PreparedPair:
    clean: Tensor  # [1, pos]
    corrupted: Tensor  # [1, pos]
    answer: int  # the answer's first token
    wrong: int  # the wrong answer's first token
    clean_str: list[str] = field(default_factory=list)
    corrupted_str: list[str] = field(default_factory=list)
    answer_str: str = ""
    wrong_str: str = ""
    answer_ids: tuple[int, ...] = ()  # every token of the answer as it follows the prompt
    wrong_ids: tuple[int, ...] = ()
    # a per-position sweep's cells in this pair: each cell's token positions (``role_axis``)
    groups: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if not self.answer_ids:
            object.__setattr__(self, "answer_ids", (self.answer,))
        if not self.wrong_ids:
            object.__setattr__(self, "wrong_ids", (self.wrong,))

    @property
    def multi_token(self) -> bool:
        """An answer or wrong answer of more than one token (scored as a sequence)."""
        return len(self.answer_ids) > 1 or len(self.wrong_ids) > 1


def tokenize(model, text: str) -> Tensor:
    # truncate=False: TransformerLens would otherwise silently cut a long prompt to n_ctx (dropping
    # its final tokens, the ones the metric reads); prepare_pairs reports it instead.
    return model.to_tokens(text, truncate=False)


def tokenize_many(model, texts: Sequence[str]) -> list[Tensor]:
    """Each text's tokens exactly as ``tokenize`` gives them, from two of the tokenizer's batch calls
    instead of one call per text. The batch is padded right and left; a row's padding is the
    smallest shift at which the two agree (x + pad^k = pad^j + x for j < k only where x is all
    padding: such a row, a model that strips an appended EOS per batch, or a tokenizer without a
    pad token, is tokenized alone). The first text is checked against ``tokenize`` itself."""
    texts = list(texts)
    if not texts:
        return []
    pad = getattr(model.tokenizer, "pad_token_id", None)
    if pad is None or getattr(model.cfg, "tokenizer_appends_eos", False) or len(texts) == 1:
        return [tokenize(model, t) for t in texts]
    right = model.to_tokens(texts, padding_side="right", truncate=False)
    left = model.to_tokens(texts, padding_side="left", truncate=False)
    rows, width = right.shape
    shift = torch.full((rows,), -1, dtype=torch.long, device=right.device)
    for j in range(width):
        same = (right[:, : width - j] == left[:, j:]).all(-1)
        shift = torch.where((shift < 0) & same, torch.full_like(shift, j), shift)
    alone = (right == pad).all(-1) | (shift < 0)
    out = [tokenize(model, t) if alone[i] else right[i : i + 1, : width - int(shift[i])].clone() for i, t in enumerate(texts)]
    if not torch.equal(out[0], tokenize(model, texts[0])):  # a to_tokens this reading does not fit: one at a time
        return [tokenize(model, t) for t in texts]
    return out


@dataclass
class TokenCache:
    """What ``prepare_pairs`` reads from the tokenizer, for many pairs at once (``token_cache``):
    each text's tokens, each token's text and each text's unknown words. Looked up, never guessed:
    a text or token not in it is tokenized alone."""

    tokens: dict[str, Tensor] = field(default_factory=dict)
    decoded: dict[int, str] = field(default_factory=dict)
    unknown: dict[str, list[str]] = field(default_factory=dict)


def token_cache(model, pairs: Sequence[Any]) -> TokenCache:
    """Every text ``prepare_pairs`` tokenizes for ``pairs`` (both prompts, each with each answer
    appended), tokenized in batches; the unknown-word check in one batch call too."""
    texts = list(dict.fromkeys(t for p in pairs for t in (
        p.clean, p.corrupted, *(prompt + continuation(a) for prompt in (p.clean, p.corrupted) for a in (p.answer, p.wrong))
    )))
    cache = TokenCache(dict(zip(texts, tokenize_many(model, texts))))
    prompts = list(dict.fromkeys(t for p in pairs for t in (p.clean, p.corrupted)))
    cache.unknown = dict(zip(prompts, unknown_words_many(model, prompts)))
    return cache


def _tokens(model, text: str, cache: TokenCache | None) -> Tensor:
    found = cache.tokens.get(text) if cache is not None else None
    return found if found is not None else tokenize(model, text)


def str_tokens(model, tokens: Tensor, cache: TokenCache | None = None) -> list[str]:
    if cache is None:
        return [model.tokenizer.decode([int(t)]) for t in tokens.reshape(-1)]
    out = []
    for t in tokens.reshape(-1).tolist():
        if t not in cache.decoded:
            cache.decoded[t] = model.tokenizer.decode([t])
        out.append(cache.decoded[t])
    return out


def unknown_words(model, text: str, cache: TokenCache | None = None) -> list[str]:
    """The distinct words of ``text`` the tokenizer maps to its unknown token, as typed. Only the text's own
    tokens count: a BOS that happens to share the unknown token's id (GPT-2) is not a word."""
    if cache is not None and text in cache.unknown:
        return cache.unknown[text]
    return unknown_words_many(model, [text])[0]


def unknown_words_many(model, texts: Sequence[str]) -> list[list[str]]:
    """``unknown_words`` of each text, from one batch call of the tokenizer."""
    tok = model.tokenizer
    unk = unknown_token_id(tok)
    if unk is None or not texts:
        return [[] for _ in texts]
    enc = tok(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"]):
        words = [text[a:b] for t, (a, b) in zip(ids, offsets) if t == unk]
        out.append(list(dict.fromkeys(words)))  # each once, in order
    return out


def unknown_token_id(tokenizer) -> int | None:
    """The id that marks a word the tokenizer does not know, or None where there is no such token.

    GPT-2's and GPT-NeoX's tokenizers name ``<|endoftext|>`` as their unk_token, but it is also
    their BOS and EOS, and a byte-level BPE never needs it for an unknown word: there, the BOS that
    TransformerLens prepends is not an unknown word. A tokenizer with an unk token of its own
    (``<unk>``) is checked."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return None
    unk_str = getattr(tokenizer, "unk_token", None)
    if unk_str is not None and unk_str in {getattr(tokenizer, "bos_token", None), getattr(tokenizer, "eos_token", None)}:
        return None
    return int(unk)


def continuation(text: str) -> str:
    """The text appended to the prompt for an answer: one space, then the answer word."""
    return " " + text.strip()


def answer_tokens(model, prompt: str, prompt_tokens: Tensor, text: str, which: str, index: int,
                  cache: TokenCache | None = None) -> tuple[int, ...]:
    """The token ids of an answer word as the tokenizer writes it after ``prompt`` (see the module
    docstring); an InputError on ``which`` if the prompt's tokens change when it is appended, or if
    a token is unknown."""
    where = f"prompt {index + 1}: {which}"
    full = _tokens(model, prompt + continuation(text), cache).reshape(-1).tolist()
    head = prompt_tokens.reshape(-1).tolist()
    if full[: len(head)] != head or len(full) == len(head):
        pieces = [model.tokenizer.decode([i]) for i in full]
        raise InputError(
            f"{where} {text.strip()!r} does not follow the prompt as separate tokens: the prompt and the "
            f"answer tokenize together as {pieces}; end the prompt with a complete word",
            field=which,
            detail={"tokens": pieces},
        )
    ids = tuple(full[len(head):])
    unk = unknown_token_id(model.tokenizer)
    if unk is not None and unk in ids:
        raise InputError(f"{where} {text.strip()!r} is not in the model's vocabulary", field=which)
    return ids


def prepare_pairs(model, prompts: Sequence[Any], *, same_length: bool,
                  cache: TokenCache | None = None) -> list[PreparedPair]:
    """Tokenize and check every pair: equal clean/corrupted lengths, within the context, answers
    that follow the prompt as tokens of their own, known words; with ``same_length`` also one
    length across the whole set. ``cache``: the pairs' tokens from batched calls (``token_cache``)."""
    if not prompts:
        raise InputError("the prompt set is empty: give at least one prompt pair", field="prompts")
    n_ctx = int(model.cfg.n_ctx)
    out: list[PreparedPair] = []
    for i, p in enumerate(prompts):
        clean, corrupted = _tokens(model, p.clean, cache), _tokens(model, p.corrupted, cache)
        clean_str, corrupted_str = str_tokens(model, clean, cache), str_tokens(model, corrupted, cache)
        for name, toks, strs in (("clean", clean, clean_str), ("corrupted", corrupted, corrupted_str)):
            if toks.shape[-1] > n_ctx:
                raise InputError(
                    f"prompt {i + 1}: the {name} prompt is {toks.shape[-1]} tokens, longer than the "
                    f"model's context of {n_ctx}",
                    field=name,
                )
            words = unknown_words(model, getattr(p, name), cache)
            if words:
                quoted = ", ".join(repr(w) for w in words)
                are, become = ("is", "it would become") if len(words) == 1 else ("are", "they would become")
                raise InputError(
                    f"prompt {i + 1}: {quoted} {are} not in this model's vocabulary ({become} "
                    f"{model.tokenizer.unk_token!r}); check the spelling or use words the model knows",
                    field=name,
                    detail={"tokens": strs, "unknown": words},
                )
        if clean.shape[-1] != corrupted.shape[-1]:
            diff = next(
                (j for j, (a, b) in enumerate(zip(clean_str, corrupted_str)) if a != b),
                min(len(clean_str), len(corrupted_str)),
            )
            raise InputError(
                f"prompt {i + 1}: clean and corrupted prompts must have the same number of tokens, "
                f"but clean has {len(clean_str)} {clean_str} and corrupted has {len(corrupted_str)} "
                f"{corrupted_str}; they first differ at position {diff}",
                field="corrupted",
                detail={"clean_tokens": clean_str, "corrupted_tokens": corrupted_str, "first_difference": diff},
            )
        answer_ids = answer_tokens(model, p.clean, clean, p.answer, "answer", i, cache)
        wrong_ids = answer_tokens(model, p.clean, clean, p.wrong, "wrong", i, cache)
        for which, text, ids in (("answer", p.answer, answer_ids), ("wrong", p.wrong, wrong_ids)):
            # the continuation is scored after either prompt: it must tokenize the same way there
            if answer_tokens(model, p.corrupted, corrupted, text, which, i, cache) != ids:
                raise InputError(
                    f"prompt {i + 1}: {which} {text.strip()!r} tokenizes differently after the clean and "
                    f"the corrupted prompt; end both prompts with the same complete word",
                    field=which,
                )
            if len(ids) + clean.shape[-1] - 1 > n_ctx:
                raise InputError(
                    f"prompt {i + 1}: the prompt and its {which} {text.strip()!r} ({len(ids)} tokens) do not fit "
                    f"in the model's context of {n_ctx}",
                    field=which,
                )
        if answer_ids == wrong_ids:
            raise InputError(
                f"prompt {i + 1}: the answer {p.answer.strip()!r} and wrong {p.wrong.strip()!r} are the same token(s) "
                f"for this model, so the logit difference is 0 on every run; choose a different wrong answer",
                field="wrong",
            )
        out.append(
            PreparedPair(
                clean=clean,
                corrupted=corrupted,
                answer=answer_ids[0],
                wrong=wrong_ids[0],
                clean_str=clean_str,
                corrupted_str=corrupted_str,
                answer_str=p.answer.strip(),
                wrong_str=p.wrong.strip(),
                answer_ids=answer_ids,
                wrong_ids=wrong_ids,
            )
        )
    if same_length:
        lengths = {pp.clean.shape[-1] for pp in out}
        if len(lengths) > 1:
            first = out[0].clean.shape[-1]
            bad = next(i for i, pp in enumerate(out) if pp.clean.shape[-1] != first)
            raise InputError(
                f"all prompts must have the same number of tokens for this experiment (a mean or resample "
                f"ablation takes activations from other prompts position by position): prompt 1 has {first}, prompt {bad + 1} has "
                f"{out[bad].clean.shape[-1]}; use prompts from one template",
                field="prompts",
            )
    return out


def refuse_multi_token(pairs: Sequence[PreparedPair], method_label: str, model) -> None:
    """An InputError on the first answer of several tokens: for methods that score one token."""
    for i, pair in enumerate(pairs):
        for which, text, ids in (("answer", pair.answer_str, pair.answer_ids), ("wrong", pair.wrong_str, pair.wrong_ids)):
            if len(ids) > 1:
                pieces = [model.tokenizer.decode([t]) for t in ids]
                raise InputError(
                    f"prompt {i + 1}: {which} {text!r} is {len(ids)} tokens {pieces}; {method_label} needs a "
                    f"single-token {which} (answers of several tokens work with activation patching and ablation)",
                    field=which,
                    detail={"tokens": pieces},
                )


# --- positions by role --------------------------------------------------------------------------------

MAX_ROLES_SHOWN = 12  # roles a message lists


@dataclass(frozen=True)
class PairRoles:
    """Every token of one prompt named by its role: role -> token positions, in order of occurrence."""

    kind: str  # a key of ``models.prompts.ROLE_KINDS``
    at: dict[str, tuple[int, ...]]
    length: int
    diffs: int = 0  # positions named diff1, diff2, ... (kind "words")

    def role_of(self, position: int) -> str:
        return next(role for role, where in self.at.items() if position in where)

    def listing(self) -> str:
        names = list(self.at)
        return ", ".join(names[:MAX_ROLES_SHOWN]) + (", ..." if len(names) > MAX_ROLES_SHOWN else "")


@dataclass(frozen=True)
class RoleAxis:
    """The position axis of a per-position sweep: each cell's name (a role, or an index picked as
    such) and its token positions in each pair, ``groups[pair][cell]``; with warnings about roles
    left off."""

    names: tuple[str, ...]
    groups: tuple[tuple[tuple[int, ...], ...], ...]
    warnings: tuple[str, ...] = ()


def token_spans(model, text: str, ids: Sequence[int]) -> list[tuple[int, int] | None]:
    """Each token's characters [start, end) in ``text``; None for a token before the text (a BOS
    prepended by the tokenizer or TransformerLens). From the tokenizer's offsets; where they do not
    describe these tokens, by finding each token's text in turn (a token not found gets an empty span)."""
    tok = model.tokenizer
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        own, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):  # a tokenizer without offsets
        own, offsets = None, []
    extra = len(ids) - len(own) if own is not None else -1
    if own is not None and extra >= 0 and list(ids[extra:]) == own:
        return [None] * extra + [(int(a), int(b)) for a, b in offsets]
    special = set(getattr(tok, "all_special_ids", []) or [])
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for i, t in enumerate(ids):
        if i == len(spans) and all(s is None for s in spans) and int(t) in special:
            spans.append(None)
            continue
        piece = tok.decode([int(t)]).strip()
        at = text.find(piece, cursor) if piece else -1
        spans.append((at, at + len(piece)) if at >= 0 else (cursor, cursor))
        cursor = at + len(piece) if at >= 0 else cursor
    return spans


def text_roles(model, text: str, tokens: Tensor, answer: str | None = None, wrong: str | None = None,
               corrupted: Tensor | None = None, given: Mapping[str, str] | None = None) -> PairRoles:
    """The role of every token of ``text`` (tokenized as ``tokens``): its word's role
    (``models.prompts.word_roles``; a word of several tokens gives its role to all of them), BOS
    before the text, END at the final token and, for a pair of kind "words" (``corrupted`` given),
    diff1, diff2, ... where the corrupted tokens differ.

    ``given``: roles the user named (a prompt set's role columns, ``PromptPair.roles``: role -> a word,
    ``models.prompts.word_at``). They take precedence over every guessed name: the word's tokens get
    the given role whatever was guessed for them (a diff or END included), and a token guessed to have
    a role of the same name is named by its own text instead, so the user's role is the only one of
    that name and prompts of different templates align by it."""
    kind, words = P.word_roles(text, answer, wrong)
    ids = tokens.reshape(-1).tolist()
    spans = token_spans(model, text, ids)
    chosen = {P.word_at(text, value): role for role, value in (given or {}).items()}
    names: list[str] = []
    loose: list[int] = []  # tokens of no word (before the text, or whitespace): named one by one
    mine: dict[int, str] = {}  # tokens of a given role's word
    for pos, span in enumerate(spans):
        word = None if span is None or span[0] >= span[1] else next(
            (w for w in words if w.start < span[1] and w.end > span[0]), None)
        if word is not None and (word.start, word.end) in chosen:
            mine[pos] = chosen[word.start, word.end]
            names.append(mine[pos])
        elif word is not None and word.role not in (given or {}):
            names.append(word.role)
        else:
            names.append(P.BOS if span is None else P.literal_role(repr(model.tokenizer.decode([ids[pos]]))))
            loose.append(pos)
    for pos, name in zip(loose, P.numbered([names[p] for p in loose])):
        names[pos] = name
    diffs = 0
    if kind == "words" and corrupted is not None:
        other = corrupted.reshape(-1).tolist()
        for pos in range(len(ids) - 1):
            if ids[pos] != other[pos]:
                diffs += 1
                names[pos] = f"diff{diffs}"
    names[-1] = P.END
    for pos, role in mine.items():
        names[pos] = role
    at: dict[str, list[int]] = {}
    for pos, name in enumerate(names):
        at.setdefault(name, []).append(pos)
    return PairRoles(kind, {name: tuple(where) for name, where in at.items()}, len(ids), diffs)


def pair_roles(model, prompt: Any, pair: PreparedPair) -> PairRoles:
    """``text_roles`` of a prompt pair's clean prompt, from its answers and its corruption."""
    return text_roles(model, prompt.clean, pair.clean, prompt.answer, prompt.wrong, pair.corrupted,
                      getattr(prompt, "roles", None))


def role_axis(model, prompts: Sequence[Any], pairs: Sequence[PreparedPair], positions: Any) -> RoleAxis:
    """The cells of a per-position sweep: with ``positions`` "each" every role all prompts have (in
    the order of the first prompt; a warning names the roles some prompts lack), or the roles and
    indices picked. An InputError on ``positions`` where the prompts' roles cannot be aligned."""
    found = [pair_roles(model, p, pair) for p, pair in zip(prompts, pairs)]
    if positions == "each":
        return _every_role(found)
    return _picked(found, positions)


def _check_diffs(found: Sequence[PairRoles]) -> None:
    first = found[0]
    for j, roles in enumerate(found[1:], start=2):
        if roles.diffs != first.diffs:
            raise InputError(
                f"prompt {j} differs from its corruption at {roles.diffs} position(s) and prompt 1 at {first.diffs}: "
                f"the changed positions (diff1, diff2, ...) cannot be aligned by role; sweep pairs that change as "
                f"many tokens, or use positions 'all'",
                field="positions",
            )


def _base(role: str) -> str:
    """A role without its number: 'the#2' -> 'the'."""
    return role.rsplit("#", 1)[0] if "#" in role[1:] else role


def _times(found: Sequence[PairRoles], base: str) -> list[int]:
    """How many times each prompt has a role of this base name (a word twice: 'the', 'the#2')."""
    return [sum(1 for name in roles.at if _base(name) == base) for roles in found]


def _common(found: Sequence[PairRoles]) -> set[str]:
    """The roles every prompt has, of a name every prompt has as many times (a word once in one
    template and twice in another cannot be aligned by its count)."""
    shared = set(found[0].at).intersection(*(roles.at for roles in found[1:]))
    return {name for name in shared if len(set(_times(found, _base(name)))) == 1}


def _slots(found: Sequence[PairRoles], common: set[str]) -> list[int]:
    """Template slots: where prompts of one kind and one length each have a role no other prompt has
    (the object 'drink' in one pair, 'book' in the next). A slot holds no role of the sweep in any
    prompt, so it is aligned by its index without mixing roles; elsewhere an index is never used."""
    if len({roles.length for roles in found}) > 1 or len({roles.kind for roles in found}) > 1:
        return []
    return [p for p in range(found[0].length) if not any(roles.role_of(p) in common for roles in found)]


def _every_role(found: Sequence[PairRoles]) -> RoleAxis:
    first = found[0]
    for j, roles in enumerate(found[1:], start=2):
        if roles.kind != first.kind:
            raise InputError(
                f"positions are swept by role, and prompt {j} is {P.ROLE_KINDS[roles.kind]} while prompt 1 is "
                f"{P.ROLE_KINDS[first.kind]}: they share no roles but the final position; sweep them separately, "
                f"pick positions they all have (e.g. END), or use positions 'all'",
                field="positions",
            )
    if first.kind == "words":
        _check_diffs(found)
    common = _common(found)
    slots = _slots(found, common)
    cells = [(name, tuple(roles.at[name] for roles in found)) for name in first.at if name in common]
    cells += [(str(p), tuple((p,) for _ in found)) for p in slots]
    cells.sort(key=lambda cell: cell[1][0])  # in the first prompt's order
    left: dict[str, str] = {}
    for roles in found:
        for name, where in roles.at.items():
            base = _base(name)
            if name in common or set(where) <= set(slots) or base in left:
                continue
            times = _times(found, base)
            if 0 in times:
                left[base] = f"{base} (in {sum(t > 0 for t in times)} of {len(found)} prompts)"
            else:
                left[base] = f"{base} ({' or '.join(map(str, sorted(set(times))))} times in a prompt)"
    warnings = ()
    if left:
        shown = ", ".join(list(left.values())[:MAX_ROLES_SHOWN]) + (", ..." if len(left) > MAX_ROLES_SHOWN else "")
        warnings = (
            f"Positions are swept by role, and only roles every prompt has (as many times) are on the position axis; "
            f"left off: {shown}. Each cell averages all {len(found)} prompts at the same role.",
        )
    return _axis(found, cells, warnings)


def _axis(found: Sequence[PairRoles], cells: list[tuple[str, tuple[tuple[int, ...], ...]]],
          warnings: tuple[str, ...] = ()) -> RoleAxis:
    return RoleAxis(tuple(name for name, _ in cells), tuple(tuple(cell[1][i] for cell in cells) for i in range(len(found))),
                    warnings)


def _picked(found: Sequence[PairRoles], picks: Sequence[Any]) -> RoleAxis:
    cells: list[tuple[str, tuple[tuple[int, ...], ...]]] = []
    common = _common(found)
    for pick in picks:
        if isinstance(pick, int):
            for j, roles in enumerate(found, start=1):
                if pick >= roles.length:
                    raise InputError(f"position {pick} is past the end of prompt {j} ({roles.length} tokens, "
                                     f"0 to {roles.length - 1})", field="positions")
            named = [roles.role_of(pick) for roles in found]
            bad = next((j for j, name in enumerate(named) if name != named[0]), None)
            if bad is not None and pick not in _slots(found, common):
                raise InputError(
                    f"position {pick} is {named[0]} in prompt 1 but {named[bad]} in prompt {bad + 1}: an index would "
                    f"average different roles; pick roles by name (e.g. {named[0]}) instead",
                    field="positions",
                )
            cells.append((str(pick), tuple((pick,) for _ in found)))
            continue
        for j, roles in enumerate(found, start=1):
            if pick not in roles.at:
                raise InputError(
                    f"prompt {j} has no position {pick[:40]!r}: its roles are {roles.listing()}; pick roles every "
                    f"prompt has, or an index",
                    field="positions",
                )
        if pick.startswith("diff"):
            _check_diffs(found)
        if pick not in common:
            times = _times(found, _base(pick))
            bad = next(j for j, n in enumerate(times) if n != times[0])
            raise InputError(
                f"{_base(pick)[:40]!r} is {times[0]} time(s) in prompt 1 but {times[bad]} in prompt {bad + 1}: which of "
                f"them {pick[:40]!r} is cannot be aligned by role; pick a role every prompt has as many times",
                field="positions",
            )
        cells.append((pick, tuple(roles.at[pick] for roles in found)))
    for a in range(len(cells)):
        for b in range(a + 1, len(cells)):
            if cells[a][1] == cells[b][1]:
                raise InputError(f"positions {cells[a][0]} and {cells[b][0]} are the same position(s) in every "
                                 f"prompt: pick each once", field="positions")
    cells.sort(key=lambda cell: cell[1][0])  # in the first prompt's order
    return _axis(found, cells)
