"""Tiny random models of five architecture families, built offline and saved the way users get them.

Each family is a Hugging Face config (2 layers, d_model 64, a few hundred tokens of vocabulary)
with random weights whose norm weights and biases are perturbed away from their 1/0 defaults
(otherwise a norm's weight or a zero bias could hide a readout that forgets them), saved with
``save_pretrained`` next to a BPE tokenizer with leading-space words, and loaded back through
``patchstudio.load_model(directory)``, as a user would.

- ``gpt2``: GPT2Config: LayerNorm, learned positions, Conv1D projections; byte-level BPE whose
  ``<|endoftext|>`` is BOS, EOS *and* unk (as GPT-2's is).
- ``neox`` (Pythia): GPTNeoXConfig: parallel attention and MLP, partial rotary, untied unembedding;
  the same byte-level tokenizer as GPT-2.
- ``llama``: LlamaConfig: RMSNorm, SwiGLU, rotary, grouped-query attention (2 k/v heads for 4);
  a SentencePiece-style ("▁Mary") tokenizer that adds ``<s>`` itself and has a real ``<unk>``.
- ``gemma2``: Gemma2Config: RMSNorm with (1 + w), norms after attention and MLP too, final logit
  soft-capping and attention-score soft-capping (set low, so both bite), a sliding window shorter
  than the prompts, GQA, tied embeddings scaled by sqrt(d_model); SentencePiece-style tokenizer.
- ``qwen2``: Qwen2Config: RMSNorm, SwiGLU, rotary, GQA, biases on q/k/v, tied embeddings; a
  byte-level tokenizer with no BOS at all (as Qwen2's has none).

Nothing is downloaded. ``build_family(name, directory)`` writes one; the session fixture in
``tests/engine/test_families.py`` builds each once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

FAMILIES = ("gpt2", "neox", "llama", "gemma2", "qwen2")

NAMES = "Mary John Alice Bob Tom Anna Sarah James Kate Paul".split()
PLACES = "store garden school park office".split()
OBJECTS = "drink book ring bag letter".split()
NOUN_PAIRS = [("key", "keys"), ("cabinet", "cabinets"), ("author", "authors"), ("pilot", "pilots"), ("table", "tables")]
# With ``words=True`` (the built-in prompt families' tests): a larger vocabulary, merges seen fewer than
# MIN_FREQUENCY times left out (whole years are seen 8 times, their two-digit ends over 100).
VOCAB_SIZE = {"byte_level": 800, "metaspace": 640}
MIN_FREQUENCY = 20

# IOI prompt pairs (Wang et al. 2022), short (11 words) to keep the references' sweeps small.
PAIRS = [
    {"clean": "When Mary and John met, John gave a drink to",
     "corrupted": "When Mary and John met, Mary gave a drink to",
     "answer": "Mary", "wrong": "John"},
    {"clean": "When Alice and Bob met, Bob gave a book to",
     "corrupted": "When Alice and Bob met, Alice gave a book to",
     "answer": "Alice", "wrong": "Bob"},
]
# The same prompts with answers of several tokens (the words are not in the tokenizer's vocabulary).
MULTI_TOKEN_PAIRS = [
    {**PAIRS[0], "answer": "Mary Ann", "wrong": "Jonathan"},
    {**PAIRS[1], "answer": "Alicia", "wrong": "Bob"},
]


def _corpus(words: bool = False) -> list[str]:
    lines = []
    for i, a in enumerate(NAMES):
        for j, b in enumerate(NAMES):
            if a == b:
                continue
            place, obj = PLACES[(i + j) % len(PLACES)], OBJECTS[(i * 3 + j) % len(OBJECTS)]
            lines.append(f"When {a} and {b} went to the {place}, {b} gave a {obj} to {a}.")
            lines.append(f"When {a} and {b} met, {b} gave a {obj} to {a}.")
            lines.append(f"Then {a} and {b} had a lot of fun at the {place}.")
    if words:
        lines += _family_words()
    return lines


def _family_words() -> list[str]:
    """For the built-in families (engine/families.py): names at the start of a text, induction's words
    there too, years as GPT-2 writes them (" 17" then "32": each two-digit end also appears alone, far
    more often than any whole year), and nouns in the singular and the plural."""
    lines = [f"{a} and {NAMES[i - 1]} had a long argument." for i, a in enumerate(NAMES)]
    for w in (*NAMES, *PLACES, *OBJECTS):
        lines += [f"{w} {w} {w}"] * 10
    for yy in range(100):
        lines.append(f"The war lasted from the year 17{yy:02d} to the year 17{(yy + 7) % 100:02d}.")
        lines += [f"Track #{yy:02d} is here."] * 25
    for s, p in NOUN_PAIRS:
        for s2, p2 in NOUN_PAIRS:
            if s != s2:
                lines.append(f"The {s} to the {p2} is here. The {p} near the {s2} are here.")
    return lines


def _ascii() -> list[str]:
    return [chr(c) for c in range(33, 127)]


def build_tokenizer(directory: Path, style: str, words: bool = False) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on IOI sentences: every name, place and object is one token with its
    leading space. ``style``: ``byte_level`` (GPT-2's: "ĠMary"), ``byte_level_no_bos`` (Qwen2's:
    no BOS token), or ``metaspace`` (SentencePiece's: "▁Mary", BOS added by the tokenizer). ``words``: also
    trained on the built-in families' words (``_family_words``), with a larger vocabulary, and (metaspace)
    punctuation split off as SentencePiece splits it ("▁store", "," rather than "▁store,")."""
    directory = Path(directory)
    if style.startswith("byte_level"):
        special = ["<|endoftext|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        vocab_size = 420
    else:
        special = ["<unk>", "<s>", "</s>", "<pad>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        if words:
            tok.pre_tokenizer = pre_tokenizers.Sequence([tok.pre_tokenizer, pre_tokenizers.Punctuation("isolated")])
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = _ascii() + ["▁"]
        vocab_size = 260
    options = {"vocab_size": VOCAB_SIZE["metaspace" if style == "metaspace" else "byte_level"], "min_frequency": MIN_FREQUENCY} if words else {"vocab_size": vocab_size}
    trainer = trainers.BpeTrainer(special_tokens=special, initial_alphabet=alphabet, show_progress=False, **options)
    tok.train_from_iterator(_corpus(words) * 4, trainer)
    if style == "byte_level":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                       unk_token="<|endoftext|>")
    elif style == "byte_level_no_bos":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                       pad_token="<pad>")
    fast.save_pretrained(str(directory))
    # Built in memory the tokenizer lacks name_or_path, which TransformerLens reads: reload from disk.
    return PreTrainedTokenizerFast.from_pretrained(str(directory))


TOKENIZER_STYLE = {"gpt2": "byte_level", "neox": "byte_level", "llama": "metaspace", "gemma2": "metaspace",
                   "qwen2": "byte_level_no_bos"}


def _config(family: str, tokenizer: PreTrainedTokenizerFast):
    from transformers import GPT2Config, GPTNeoXConfig, Gemma2Config, LlamaConfig, Qwen2Config

    vocab = len(tokenizer)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if family == "gpt2":
        return GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=vocab,
                          initializer_range=0.25, **ids)
    if family == "neox":
        return GPTNeoXConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=256,
                             max_position_embeddings=64, vocab_size=vocab, rotary_pct=0.25,
                             use_parallel_residual=True, tie_word_embeddings=False, initializer_range=0.25, **ids)
    if family == "llama":
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=64, vocab_size=vocab,
                           tie_word_embeddings=False, initializer_range=0.25, **ids)
    if family == "gemma2":
        return Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=64,
                            vocab_size=vocab, sliding_window=6, final_logit_softcapping=4.0,
                            attn_logit_softcapping=8.0, initializer_range=0.25, **ids)
    if family == "qwen2":
        return Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=64, vocab_size=vocab,
                           tie_word_embeddings=True, initializer_range=0.25, **ids)
    raise ValueError(f"unknown family {family!r}")


def _perturb(model, seed: int) -> None:
    """Norm weights away from 1 (or 0 for Gemma's 1 + w) and every bias away from 0."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim != 1:
                continue
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name or ".ln_" in name or name.endswith(("ln_f.weight", "ln_f.bias")):
                p.add_(0.2 * noise)
            else:  # biases
                p.copy_(0.1 * noise)


def build_family(family: str, directory: Path, *, seed: int = 0, words: bool = False) -> Path:
    """Write a tiny random ``family`` model and its tokenizer to ``directory`` (save_pretrained);
    ``words``: a tokenizer that also knows the built-in prompt families' words (``build_tokenizer``)."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    tokenizer = build_tokenizer(directory, TOKENIZER_STYLE[family], words)
    config = _config(family, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    _perturb(model, seed)
    model.save_pretrained(str(directory))
    (directory / "FAMILY").write_text(json.dumps({"family": family, "seed": seed}))
    return directory
