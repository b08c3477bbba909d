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


def build_tiny_model(tokenizer, *, n_layers=2, n_heads=4, d_model=32, seed=0, perturb=False, n_key_value_heads=None) -> TransformerBridge:
    """A seeded random model. ``perturb``: a non-zero unembedding bias and non-trivial LayerNorm
    weights and biases everywhere (the default has b_U = 0 and LN weight 1, bias 0, which hides
    code that drops them). ``n_key_value_heads``: grouped-query attention."""
    extra = {} if n_key_value_heads is None else {"n_key_value_heads": n_key_value_heads}
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
        **extra,
    )
    torch.manual_seed(seed)
    model = TransformerBridge.boot_native(cfg, tokenizer=tokenizer)
    with torch.no_grad():  # larger than default init so effects are far above float noise
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(3.0)
        if perturb:
            generator = torch.Generator().manual_seed(seed + 1)
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.copy_(1.0 + 0.5 * torch.randn(module.weight.shape, generator=generator))
                    module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=generator))
            b_u = model.unembed._original_component.bias
            b_u.copy_(2.0 * torch.randn(b_u.shape, generator=generator))
    return model.eval()


TINY_PAIRS = [
    {"clean": "When Mary and John went to the store , John gave a drink to",
     "corrupted": "When Mary and John went to the store , Mary gave a drink to",
     "answer": "Mary", "wrong": "John"},
    {"clean": "When Alice and Bob went to the garden , Bob gave a book to",
     "corrupted": "When Alice and Bob went to the garden , Alice gave a book to",
     "answer": "Alice", "wrong": "Bob"},
]
