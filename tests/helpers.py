"""Small seeded models built in-process (nothing is downloaded), and prompt pairs for them."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

WORDS = (
    "When Then Mary John Alice Bob Tom Anna went to the store garden school , . and gave a drink "
    "book ring had lot of fun at"
).split()


def build_word_tokenizer(directory, words=WORDS) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<bos>", "<unk>", "<pad>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(str(directory))
    # Built in memory the tokenizer lacks name_or_path, which TransformerLens reads: reload from disk.
    return PreTrainedTokenizerFast.from_pretrained(str(directory))


def build_tiny_model(tokenizer, *, n_layers=2, n_heads=4, d_model=32, seed=0) -> TransformerBridge:
    cfg = TransformerBridgeConfig(
        d_model=d_model,
        d_head=d_model // n_heads,
        n_layers=n_layers,
        n_heads=n_heads,
        n_ctx=32,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
    )
    torch.manual_seed(seed)
    model = TransformerBridge.boot_native(cfg, tokenizer=tokenizer)
    with torch.no_grad():  # larger than default init so effects are far above float noise
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(3.0)
    return model.eval()


TINY_PAIRS = [
    {"clean": "When Mary and John went to the store , John gave a drink to",
     "corrupted": "When Mary and John went to the store , Mary gave a drink to",
     "answer": "Mary", "wrong": "John"},
    {"clean": "When Alice and Bob went to the garden , Bob gave a book to",
     "corrupted": "When Alice and Bob went to the garden , Alice gave a book to",
     "answer": "Alice", "wrong": "Bob"},
]
