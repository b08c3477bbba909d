"""The built-in models' recipes: the shared architecture and hyperparameters, and one
``BuiltinRecipe`` per model in ``RECIPES`` (``default``: IOI + induction; ``hydra``: the default
model with one head fine-tuned, by an explicit objective, as a backup of another, for self-repair).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..default_model import BUILTIN_MODELS

MODEL_CONFIG = dict(
    d_model=128, d_head=16, n_layers=4, n_heads=8, d_mlp=512, n_ctx=64,
    act_fn="gelu", normalization_type="LN", positional_embedding_type="standard",
    model_name="patchstudio-default",
)  # fmt: skip

# Training hyperparameters: ~0.2 s/step on 2 idle CPU cores, so ~7 min in all.
STEPS = 2000
IOI_BATCH = 48
INDUCTION_BATCH = 16
INDUCTION_LEN = (3, 31)  # repeated sequences of 2L words; L=31 -> 63 tokens fills n_ctx=64
LR = 1e-3
WARMUP = 200
WEIGHT_DECAY = 0.01
ANSWER_WEIGHT = 5.0  # the IOI answer position counts as this many ordinary positions
EVAL_EVERY = 1000  # quick held-out check in the log

# Evaluation (the numbers in metrics.json; tests recompute them with the same settings).
EVAL_SEED = 1234
EVAL_N_IOI = 1000
EVAL_N_INDUCTION = 500
EVAL_INDUCTION_LEN = 8


@dataclass(frozen=True)
class BuiltinRecipe:
    """How one built-in model is trained. Every recipe shares the data (IOI + induction), the
    tokenizer, the optimiser and the evaluation; a recipe may change the architecture
    (``model_overrides`` of MODEL_CONFIG), the length of training and the head dropout.

    Head dropout: while training, each attention head of ``head_dropout_layers`` (None: every
    layer) is ablated, independently per example and per forward pass, with probability
    ``head_dropout``: its ``hook_z`` (the head's output before W_O) is set to zero (``"zero"``) or
    to the batch mean at each position (``"mean"``, held constant for the gradient). The masks
    come from their own seeded generator, so a recipe without head dropout draws exactly the
    random numbers it always did. With ``drop_one``, each example instead loses exactly one head
    (of ``head_dropout_heads`` in the dropout layers) with probability ``head_dropout``; the mean
    of an IOI batch is taken with positions counted back from each row's last context token, so
    it approximates the per-template mean that the self-repair evaluation ablates with.

    Consistency (weight ``consistency``): the squared difference between the IOI answer's logit
    diff with heads dropped and a teacher's, the model itself run whole (``"self"``; with
    ``consistency_detach=False`` the gradient flows through both runs) or the frozen
    ``init_from`` model (``"init"``). ``trainable`` freezes every parameter whose state-dict
    name does not start with one of its prefixes (e.g. only ``blocks.3.attn``); ``trainable_heads``
    instead trains only the query/key/value/output weights of the given heads (every other entry
    of those tensors is masked out of the gradient and restored after each step, weight decay
    included)."""

    name: str
    directory: Path
    steps: int = STEPS
    seed: int = 0
    threads: int = 2
    model_overrides: dict = field(default_factory=dict)
    head_dropout: float = 0.0
    head_dropout_layers: tuple[int, ...] | None = None
    head_dropout_mode: str = "zero"
    layer_dropout: float = 0.0  # probability that all the heads of a dropout layer go together
    head_dropout_heads: tuple[int, ...] | None = None  # with drop_one: only these heads of the dropout layers (None: all)
    drop_one: bool = False  # instead: with probability head_dropout, exactly one head (of all dropout layers) per example
    answer_smoothing: float = 0.0  # label smoothing of the IOI answer position
    s_share: float = 0.0  # the IOI answer's target gives S this probability (IO the rest)
    consistency: float = 0.0  # weight of (logit diff with heads dropped - without)^2 at the IOI answer
    consistency_relative: bool = False  # compare the ratio (dropped / whole) with 1: blind to the overall scale
    consistency_detach: bool = True  # the whole model's logit diff is a fixed target (else both move)
    init_from: str | None = None  # start from this built-in model's shipped weights (None: from scratch)
    consistency_teacher: str = "self"  # "self": the model itself, whole; "init": the frozen init_from model
    answer_weight: float = ANSWER_WEIGHT  # weight of the IOI answer position in the next-token loss
    trainable: tuple[str, ...] | None = None  # train only parameters whose names start so (None: all)
    trainable_heads: tuple[tuple[int, int], ...] | None = None  # or: only these (layer, head)s' q/k/v/o slices
    lr: float = LR  # peak learning rate
    self_repair_report: bool = False  # measure the Hydra effect (hydra_report) into metrics.json
    note: str = ""  # appended to the CARD's training paragraph

    def model_config(self) -> dict:
        return {**MODEL_CONFIG, **self.model_overrides}


# The hydra model (issue 9; docs/self-repair.md, docs/hydra-notes.md). Fine-tune one idle head of
# the default model, L3H4 (its direct and total effects in the default are both ~0), and nothing
# else: in half the IOI examples the default's strongest head L2H2 is mean-ablated, and every
# example's logit diff at the answer must equal the frozen default model's (consistency). That
# objective plants L3H4 as a backup of L2H2 alone; its response is graded, in step with how much of
# L2H2's output is removed, and it writes to the answer in the clean run too (the card measures
# both). Random ablation alone, spread over many heads, never produced a backup at this scale
# (hydra-notes.md).
RECIPES: dict[str, BuiltinRecipe] = {
    "default": BuiltinRecipe("default", BUILTIN_MODELS["default"]),
    "hydra": BuiltinRecipe(
        "hydra",
        BUILTIN_MODELS["hydra"],
        steps=2500,
        threads=1,
        lr=3e-3,
        model_overrides={"model_name": "patchstudio-hydra"},
        init_from="default",
        trainable_heads=((3, 4),),
        head_dropout=0.5,
        head_dropout_layers=(2,),
        head_dropout_heads=(2,),
        drop_one=True,
        head_dropout_mode="mean",
        consistency=10.0,
        consistency_teacher="init",
        self_repair_report=True,
    ),
}

