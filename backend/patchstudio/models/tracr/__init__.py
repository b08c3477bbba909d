"""Models whose circuits are known: RASP programs compiled by Tracr (Lindner et al. 2023) into
transformer weights, converted to TransformerLens-native TransformerBridge models and shipped
with their tokenizers and ground-truth circuits (see ``compile.py``, which needs the optional
``tracr`` extra, and docs/tracr-models.md). Loading them needs only torch and TransformerLens.

Each model directory holds ``config.json``, ``model.safetensors``, ``tokenizer/`` (the layout
``default_model.load_default_model`` reads), ``ground_truth.json`` (nodes and edges derived from
the compiled program; layout in docs/tracr-models.md) and ``CARD.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TRACR_DIR = Path(__file__).parent
GROUND_TRUTH_FILE = "ground_truth.json"


@dataclass(frozen=True)
class TracrTask:
    """One compiled program: its name as a model, where it lives, and what it reads and writes.

    ``vocab``: the input tokens (words), ``outputs``: the tokens the unembedding scores (for a
    numerical program, the values it can output, written as reduced fractions), ``causal``: the
    attention mask it was compiled with."""

    name: str
    directory: Path
    program: str  # the RASP source, as compile.py builds it
    vocab: tuple[str, ...]
    outputs: tuple[str, ...]
    max_seq_len: int
    causal: bool
    numerical: bool = False

    @property
    def logit_scale(self) -> int:
        """S in a numerical program's logits S (2 c v - c^2) (compile.py): max_seq_len^2, so that
        answers k/n and (k-1)/n at n = max_seq_len have logit differences +1 and -1."""
        return self.max_seq_len**2 if self.numerical else 1


def fraction_tokens(max_seq_len: int) -> tuple[str, ...]:
    """Every value k/n (0 <= k <= n <= max_seq_len) as a reduced fraction, ascending: '0', '1/5', ..., '1'."""
    from fractions import Fraction

    values = sorted({Fraction(k, n) for n in range(1, max_seq_len + 1) for k in range(n + 1)})
    return tuple(str(v) for v in values)


MAX_SEQ_LEN = 5  # as in ACDC's tracr tasks (Conmy et al. 2023)

TASKS: dict[str, TracrTask] = {
    task.name: task
    for task in (
        TracrTask(
            "tracr-reverse", TRACR_DIR / "reverse", "make_reverse(rasp.tokens)",
            vocab=("a", "b", "c"), outputs=("a", "b", "c"), max_seq_len=MAX_SEQ_LEN, causal=False,
        ),
        TracrTask(
            "tracr-proportion", TRACR_DIR / "proportion", 'make_frac_prevs(rasp.tokens == "x")',
            vocab=("w", "x", "y", "z"), outputs=fraction_tokens(MAX_SEQ_LEN), max_seq_len=MAX_SEQ_LEN,
            causal=True, numerical=True,
        ),
        TracrTask(
            "tracr-sort", TRACR_DIR / "sort", "make_sort(rasp.tokens, rasp.tokens, max_seq_len=5, min_key=1)",
            vocab=("1", "2", "3", "4", "5"), outputs=("1", "2", "3", "4", "5"), max_seq_len=MAX_SEQ_LEN,
            causal=False,
        ),
    )
}

TRACR_MODELS: dict[str, Path] = {name: task.directory for name, task in TASKS.items()}  # name -> directory


def load_ground_truth(name: str) -> dict:
    """The ground-truth circuit of a Tracr model (``TASKS`` name), as shipped beside its weights."""
    return json.loads((TASKS[name].directory / GROUND_TRUTH_FILE).read_text())
