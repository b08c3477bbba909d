"""Load the shipped built-in models: small word-level transformers trained offline on IOI and
induction data (see NAME/CARD.md and models/training/). ``default`` is the plain one; ``hydra`` is
``default`` with one head, L3H4, planted as a backup of L2H2 by an explicit objective (a loss that
holds the logit difference to the default model's when L2H2 is ablated), so that self-repair can be
seen. They share one tokenizer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DEFAULT_DIR = Path(__file__).parent / "default"
HYDRA_DIR = Path(__file__).parent / "hydra"
BUILTIN_MODELS: dict[str, Path] = {"default": DEFAULT_DIR, "hydra": HYDRA_DIR}  # name -> directory
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


def _require(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.exists():
        raise FileNotFoundError(
            f"built-in model file missing: {path}. Run `patchstudio train-default` to train and write it."
        )
    return path


def load_tokenizer(directory: str | Path = DEFAULT_DIR):
    """The saved word-level tokenizer; it prepends <bos> itself (a TemplateProcessing post-processor)."""
    from transformers import PreTrainedTokenizerFast

    tok_dir = _require(Path(directory), TOKENIZER_DIR)
    _require(tok_dir, "tokenizer.json")
    # Loaded from disk (not built in memory) so it carries name_or_path, which TransformerLens reads.
    return PreTrainedTokenizerFast.from_pretrained(str(tok_dir))


def load_default_model(directory: str | Path = DEFAULT_DIR, device: str = "cpu"):
    """A built-in model (default: the default model; any directory of BUILTIN_MODELS or one
    written by `patchstudio train-default`) as a TransformerBridge in eval mode, tokenizer attached.

    ``to_tokens(text)`` gives [<bos>, words...]: the tokenizer prepends BOS and TransformerLens
    detects that at boot (cfg.tokenizer_prepends_bos=True), so it neither adds a second one nor
    loses it; ``prepend_bos=False`` strips it.
    """
    from safetensors.torch import load_file
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    directory = Path(directory)
    cfg_path = _require(directory, CONFIG_FILE)
    weights = _require(directory, WEIGHTS_FILE)
    tokenizer = load_tokenizer(directory)
    fields = json.loads(cfg_path.read_text())
    # Keep the seeded init even though the weights overwrite it: TL runs a seeded init under
    # fork_rng, whereas init_weights=False would draw from (and so perturb) the global torch RNG.
    cfg = TransformerBridgeConfig.from_dict({**fields, "device": device})
    model = TransformerBridge.boot_native(cfg, tokenizer=tokenizer, device=device)
    model.load_state_dict(load_file(str(weights), device=str(device)), strict=True)
    return model.eval()


def weights_fingerprint(directory: str | Path = DEFAULT_DIR) -> str:
    """sha256 (hex) of the weights file: identifies exactly which built-in model ran."""
    h = hashlib.sha256()
    with open(_require(Path(directory), WEIGHTS_FILE), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
