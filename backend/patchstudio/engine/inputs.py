"""Tokenizing and checking prompt pairs, with errors that name the problem.

Answers are tokenized as they follow the prompt: the answer word (stripped) is appended to the
clean prompt after one space, and its tokens are what the tokenizer writes there minus the
prompt's own tokens. So a byte-level BPE gives "ĠMary", a SentencePiece-style one "▁Mary" and a
word-level one "Mary", whichever way the tokenizer marks a leading space; the tokenizer's BOS
(prepended by it or by TransformerLens, per model) is part of the prompt, never of the answer.
An answer of several tokens is allowed: it is scored by teacher-forced sequence log-probability
(see ``engine.metrics``), by the methods that support it.
"""

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
    answer: int  # the answer's first token
    wrong: int  # the wrong answer's first token
    clean_str: list[str] = field(default_factory=list)
    corrupted_str: list[str] = field(default_factory=list)
    answer_str: str = ""
    wrong_str: str = ""
    answer_ids: tuple[int, ...] = ()  # every token of the answer as it follows the prompt
    wrong_ids: tuple[int, ...] = ()

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


def str_tokens(model, tokens: Tensor) -> list[str]:
    return [model.tokenizer.decode([int(t)]) for t in tokens.reshape(-1)]


def unknown_words(model, text: str) -> list[str]:
    """The distinct words of ``text`` the tokenizer maps to its unknown token, as typed. Only the text's own
    tokens count: a BOS that happens to share the unknown token's id (GPT-2) is not a word."""
    tok = model.tokenizer
    unk = unknown_token_id(tok)
    if unk is None:
        return []
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    words = [text[a:b] for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if t == unk]
    return list(dict.fromkeys(words))  # each once, in order


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


def answer_tokens(model, prompt: str, prompt_tokens: Tensor, text: str, which: str, index: int) -> tuple[int, ...]:
    """The token ids of an answer word as the tokenizer writes it after ``prompt`` (see the module
    docstring); an InputError on ``which`` if the prompt's tokens change when it is appended, or if
    a token is unknown."""
    where = f"prompt {index + 1}: {which}"
    full = tokenize(model, prompt + continuation(text)).reshape(-1).tolist()
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


def prepare_pairs(model, prompts: Sequence[Any], *, same_length: bool) -> list[PreparedPair]:
    """Tokenize and check every pair: equal clean/corrupted lengths, within the context, answers
    that follow the prompt as tokens of their own, known words; with ``same_length`` also one
    length across the whole set."""
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
        answer_ids = answer_tokens(model, p.clean, clean, p.answer, "answer", i)
        wrong_ids = answer_tokens(model, p.clean, clean, p.wrong, "wrong", i)
        for which, text, ids in (("answer", p.answer, answer_ids), ("wrong", p.wrong, wrong_ids)):
            # the continuation is scored after either prompt: it must tokenize the same way there
            if answer_tokens(model, p.corrupted, corrupted, text, which, i) != ids:
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
                f"all prompts must have the same number of tokens for this experiment (positions 'each', "
                f"or a mean/resample ablation): prompt 1 has {first}, prompt {bad + 1} has "
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
