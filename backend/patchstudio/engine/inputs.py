"""Tokenizing and checking prompt pairs, with errors that name the problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import Tensor

from patchstudio.errors import InputError

__all__ = ["InputError", "PreparedPair", "prepare_pairs"]


@dataclass(frozen=True)
class PreparedPair:
    clean: Tensor  # [1, pos]
    corrupted: Tensor  # [1, pos]
    answer: int
    wrong: int
    clean_str: list[str] = field(default_factory=list)
    corrupted_str: list[str] = field(default_factory=list)
    answer_str: str = ""
    wrong_str: str = ""


def tokenize(model, text: str) -> Tensor:
    # truncate=False: TransformerLens would otherwise silently cut a long prompt to n_ctx (dropping
    # its final tokens, the ones the metric reads); prepare_pairs reports it instead.
    return model.to_tokens(text, truncate=False)


def str_tokens(model, tokens: Tensor) -> list[str]:
    return [model.tokenizer.decode([int(t)]) for t in tokens.reshape(-1)]


def unknown_words(model, text: str) -> list[str]:
    """The distinct words of ``text`` the tokenizer maps to its unknown token, as typed. Only the text's own
    tokens count: a BOS that happens to share the unknown token's id (GPT-2) is not a word."""
    tok = model.tokenizer
    unk = getattr(tok, "unk_token_id", None)
    if unk is None:
        return []
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    words = [text[a:b] for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if t == unk]
    return list(dict.fromkeys(words))  # each once, in order


def answer_token(model, text: str, which: str, index: int) -> int:
    """The single token id of an answer word, as it would follow the prompt (leading space)."""
    word = text if text.startswith(" ") else " " + text
    ids = model.to_tokens(word, prepend_bos=False).reshape(-1).tolist()
    where = f"prompt {index + 1}: {which}"
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise InputError(
            f"{where} {text.strip()!r} is {len(ids)} tokens {pieces}; it must be a single token",
            field=which,
            detail={"tokens": pieces},
        )
    unk = getattr(model.tokenizer, "unk_token_id", None)
    if unk is not None and ids[0] == unk:
        raise InputError(f"{where} {text.strip()!r} is not in the model's vocabulary", field=which)
    return ids[0]


def prepare_pairs(model, prompts: Sequence[Any], *, same_length: bool) -> list[PreparedPair]:
    """Tokenize and check every pair: equal clean/corrupted lengths, within the context, one-token
    answers, known words; with ``same_length`` also one length across the whole set."""
    if not prompts:
        raise InputError("the prompt set is empty: give at least one prompt pair", field="prompts")
    n_ctx = int(model.cfg.n_ctx)
    out: list[PreparedPair] = []
    for i, p in enumerate(prompts):
        clean, corrupted = tokenize(model, p.clean), tokenize(model, p.corrupted)
        clean_str, corrupted_str = str_tokens(model, clean), str_tokens(model, corrupted)
        for name, toks, strs in (("clean", clean, clean_str), ("corrupted", corrupted, corrupted_str)):
            if toks.shape[-1] > n_ctx:
                raise InputError(
                    f"prompt {i + 1}: the {name} prompt is {toks.shape[-1]} tokens, longer than the "
                    f"model's context of {n_ctx}",
                    field=name,
                )
            words = unknown_words(model, getattr(p, name))
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
        answer, wrong = answer_token(model, p.answer, "answer", i), answer_token(model, p.wrong, "wrong", i)
        if answer == wrong:
            raise InputError(
                f"prompt {i + 1}: the answer {p.answer.strip()!r} and wrong {p.wrong.strip()!r} are the same token "
                f"for this model, so the logit difference is 0 on every run; choose a different wrong answer",
                field="wrong",
            )
        out.append(
            PreparedPair(
                clean=clean,
                corrupted=corrupted,
                answer=answer,
                wrong=wrong,
                clean_str=clean_str,
                corrupted_str=corrupted_str,
                answer_str=p.answer.strip(),
                wrong_str=p.wrong.strip(),
            )
        )
    if same_length:
        lengths = {pp.clean.shape[-1] for pp in out}
        if len(lengths) > 1:
            first = out[0].clean.shape[-1]
            bad = next(i for i, pp in enumerate(out) if pp.clean.shape[-1] != first)
            raise InputError(
                f"all prompts must have the same number of tokens for this experiment (positions 'each', "
                f"or a mean/resample ablation): prompt 1 has {first}, prompt {bad + 1} has "
                f"{out[bad].clean.shape[-1]}; use prompts from one template",
                field="prompts",
            )
    return out

