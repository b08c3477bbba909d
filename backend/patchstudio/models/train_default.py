"""Train the shipped built-in models (offline, CPU, minutes) and measure them on held-out prompts.

    python -m patchstudio.models.train_default [--model NAME|all] [--out DIR] [--seed N] [--steps N] [--eval-only]

writes config.json, model.safetensors, tokenizer/, metrics.json and CARD.md into DIR (default:
the package's models/NAME/). Each built-in model is a ``BuiltinRecipe`` in ``RECIPES``:
``default`` (IOI + induction) and ``hydra`` (the same data, trained with whole attention heads
randomly ablated, so that other heads learn to stand in for them: self-repair).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import prompts
from .default_model import BUILTIN_MODELS, CONFIG_FILE, DEFAULT_DIR, TOKENIZER_DIR, WEIGHTS_FILE, weights_fingerprint

SPECIAL_TOKENS = ("<bos>", "<unk>", "<pad>")  # ids 0, 1, 2
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
# example's logit diff at the answer must equal the frozen default model's (consistency). So L3H4
# learns to stay quiet while L2H2 writes and to stand in for it when L2H2 is gone: a backup head.
# Dropout alone, spread over many heads, never produced one at this scale (hydra-notes.md).
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


def build_tokenizer(out_dir: str | Path):
    """Word-level tokenizer over prompts.vocabulary_words(), saved as a HF tokenizer in out_dir and
    reloaded from disk (TransformerLens needs the name_or_path a loaded tokenizer carries).

    Splits on whitespace and isolates every punctuation mark ("store," -> "store", ","), exactly
    like prompts.split_words. It prepends <bos> itself, so every consumer (TransformerLens's
    to_tokens, a raw tokenizer call, a bridge whose tokenizer was assigned after boot) sees
    exactly one BOS first."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *prompts.vocabulary_words()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[^\w\s]"), behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>", pad_token="<pad>")
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    fast.save_pretrained(str(out_dir))
    return PreTrainedTokenizerFast.from_pretrained(str(out_dir))


def _model_config(d_vocab: int, seed: int, recipe: BuiltinRecipe | None = None) -> dict:
    base = MODEL_CONFIG if recipe is None else recipe.model_config()
    return {**base, "d_vocab": d_vocab, "seed": seed, "tokenizer_prepends_bos": True}


def _aligned_mean(act: torch.Tensor, last: torch.Tensor | None) -> torch.Tensor:
    """The batch mean of act [batch, pos, ...] at each position, positions counted back from each
    row's last context token ``last`` [batch] (None: from the start): IOI texts differ in length
    but end alike ("... S gave a drink to"), as the prompts of one template do."""
    if last is None:
        return act.mean(0, keepdim=True).expand_as(act)
    b, n = act.shape[:2]
    back = last[:, None] - torch.arange(n)[None, :]  # [b, pos]: steps before the last token
    valid = back >= 0
    index = back.clamp(min=0)
    sums = torch.zeros((n, *act.shape[2:]), dtype=act.dtype).index_add_(0, index[valid], act[valid])
    counts = torch.zeros(n, dtype=act.dtype).index_add_(0, index[valid], torch.ones(int(valid.sum()), dtype=act.dtype))
    means = sums / counts.clamp(min=1).reshape(-1, *[1] * (act.dim() - 2))
    return torch.where(valid.reshape(b, n, *[1] * (act.dim() - 2)), means[index], act)


def _head_dropout_hooks(model, recipe: BuiltinRecipe, generator: torch.Generator, ends: dict) -> list:
    """Forward hooks on hook_z that ablate whole heads per example (see BuiltinRecipe); they act
    only while the model is in training mode, so evaluation in between sees the whole model."""
    if recipe.head_dropout <= 0 and recipe.layer_dropout <= 0:
        return []
    if recipe.head_dropout_mode not in ("zero", "mean"):
        raise ValueError(f"head_dropout_mode must be 'zero' or 'mean', got {recipe.head_dropout_mode!r}")
    n_layers = int(model.cfg.n_layers)
    layers = tuple(range(n_layers) if recipe.head_dropout_layers is None else recipe.head_dropout_layers)
    p, q, mode = recipe.head_dropout, recipe.layer_dropout, recipe.head_dropout_mode

    n_heads = int(model.cfg.n_heads)
    choice: dict = {}

    def drop(act: torch.Tensor, hook) -> torch.Tensor:  # act: [batch, pos, heads, d_head]
        if not model.training:
            return act
        if recipe.drop_one:
            layer = int(hook.name.split(".")[1])
            if layer == layers[0]:  # one draw per forward pass, shared by the dropout layers
                b = act.shape[0]
                pool = [k * n_heads + h for k in range(len(layers)) for h in (recipe.head_dropout_heads or range(n_heads))]
                which = torch.tensor(pool)[torch.randint(len(pool), (b,), generator=generator)]
                on = torch.rand(b, generator=generator) < p
                choice["which"], choice["on"] = which, on
            k = list(layers).index(layer)
            heads = torch.arange(n_heads)[None, :] + k * n_heads
            dropped = (heads == choice["which"][:, None]) & choice["on"][:, None]
        else:
            dropped = torch.rand(act.shape[0], act.shape[2], generator=generator) < p
        if q > 0:
            dropped = dropped | (torch.rand(act.shape[0], 1, generator=generator) < q)
        dropped = dropped[:, None, :, None]
        if mode == "zero":
            return act.masked_fill(dropped, 0.0)
        return torch.where(dropped, _aligned_mean(act.detach(), ends.get("last")), act)

    return [(f"blocks.{layer}.attn.hook_z", drop) for layer in layers]


def _head_slices(model, heads: tuple[tuple[int, int], ...]):
    """(parameters, restore): train only the query/key/value/output slices of ``heads``. The
    attention weights of their layers are handed to the optimiser whole; ``restore``, called after
    every step, puts every other entry (weight decay moves them too) back to its starting value."""
    d_head = int(model.cfg.d_head)
    state = model.state_dict(keep_vars=True)
    kept: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []  # (param, trainable mask, start)
    for layer in sorted({l for l, _ in heads}):
        for part in ("q", "k", "v", "o"):
            for kind in ("weight", "bias"):
                name = f"blocks.{layer}.attn.{part}.{kind}"
                if name not in state or (part == "o" and kind == "bias"):  # o's bias is shared by every head
                    continue
                p = state[name]
                mask = torch.zeros_like(p, dtype=torch.bool)
                for l, h in heads:
                    if l != layer:
                        continue
                    cut = slice(h * d_head, (h + 1) * d_head)
                    if part == "o":
                        mask[:, cut] = True  # [d_model, heads * d_head]: the head's columns
                    else:
                        mask[cut] = True  # [heads * d_head, (d_model)]: the head's rows
                p.register_hook(lambda grad, mask=mask: grad * mask)  # Adam and the clipping see these slices only
                kept.append((p, mask, p.detach().clone()))
    params = [p for p, _, _ in kept]
    frozen = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in frozen)

    @torch.no_grad()
    def restore() -> None:
        for p, mask, start in kept:
            p.copy_(torch.where(mask, p, start))

    return params, restore


# The packages whose float arithmetic the weights depend on. Bit-for-bit reproduction needs the
# same versions, seed, thread count and CPU instruction set: any of them can change the last bits
# of one operation, and training amplifies that into different weights (with the same figures).
NUMERIC_PACKAGES = ("torch", "transformer-lens", "transformers", "tokenizers", "numpy", "safetensors")


def environment() -> dict:
    """What a bit-for-bit retrain must match: package versions, Python, the CPU's model name and the
    instruction set torch dispatches to."""
    import importlib.metadata
    import sys

    cpu = platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "packages": {name: importlib.metadata.version(name) for name in NUMERIC_PACKAGES},
        "python": sys.version.split()[0],
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def environment_summary(env: dict | None) -> str:
    if not env:
        return "not recorded"
    pkgs = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    return f"{pkgs}; Python {env['python']}; {env['cpu']} ({env['cpu_capability']})"


def _encode(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [batch, pos] and a mask of real tokens."""
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"].bool()


def _answer_and_s(ids: torch.Tensor, last: torch.Tensor, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Per IOI row: the answer (IO) token id and S's, the last name before the answer (every
    template ends "... {S} <verb> ... to")."""
    rows = torch.arange(ids.shape[0])
    is_name = torch.zeros(len(tokenizer), dtype=torch.bool)
    is_name[[tokenizer.convert_tokens_to_ids(n) for n in prompts.NAMES]] = True
    pos = torch.arange(ids.shape[1])
    before = is_name[ids] & (pos[None, :] <= last[:, None])
    return ids[rows, last + 1], ids[rows, (before * pos[None, :]).argmax(1)]


def _answer_logit_diff(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """logit(IO) - logit(S) at each IOI text's answer position."""
    ids, mask = _encode(tokenizer, texts)
    last = mask[:, 1:].sum(1) - 1
    io, s = _answer_and_s(ids, last, tokenizer)
    logits = model(ids)[torch.arange(len(texts)), last]
    rows = torch.arange(len(texts))
    return logits[rows, io] - logits[rows, s]


def _ioi_loss(model, tokenizer, texts: list[str], answer_smoothing: float = 0.0, s_share: float = 0.0, teacher_diff=None,
              answer_weight: float = ANSWER_WEIGHT, relative: bool = False):
    """Next-token loss on every position; the final (answer) position weighs ANSWER_WEIGHT and,
    if answer_smoothing > 0, has that much label smoothing; if s_share > 0 its target is IO with
    probability 1 - s_share and S (the last name before the answer) with s_share."""
    ids, mask = _encode(tokenizer, texts)
    logits = model(ids)[:, :-1]
    targets, valid = ids[:, 1:], mask[:, 1:]
    weights = valid.float()
    last = valid.sum(1) - 1  # index of each row's answer target (right padding)
    weights[torch.arange(len(texts)), last] = answer_weight
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    if s_share > 0:
        rows = torch.arange(len(texts))
        logp = logits[rows, last].log_softmax(-1)
        _, s_ids = _answer_and_s(ids, last, tokenizer)
        answer_loss = -(1 - s_share) * logp[rows, targets[rows, last]] - s_share * logp[rows, s_ids]
        losses = losses.reshape(targets.shape).index_put((rows, last), answer_loss).reshape(-1)
    if answer_smoothing > 0:
        rows = torch.arange(len(texts))
        smoothed = F.cross_entropy(logits[rows, last], targets[rows, last], label_smoothing=answer_smoothing, reduction="none")
        losses = losses.reshape(targets.shape).index_put((rows, last), smoothed).reshape(-1)
    loss = (losses * weights.reshape(-1)).sum() / weights.sum()
    if teacher_diff is None:
        return loss
    rows = torch.arange(len(texts))
    io, s_ids = _answer_and_s(ids, last, tokenizer)
    diff = logits[rows, last, io] - logits[rows, last, s_ids]
    if relative:
        return loss, ((diff / teacher_diff.clamp(min=1.0) - 1) ** 2).mean()
    return loss, ((diff - teacher_diff) ** 2).mean()


def _induction_loss(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Loss on the repeated half only, from its second token on (the first is unpredictable).
    All texts in the batch share one length L: [bos, w1..wL, w1..wL]."""
    ids, _ = _encode(tokenizer, texts)
    L = (ids.shape[1] - 1) // 2
    logits = model(ids)[:, L + 1 : 2 * L]  # positions holding the repeat's w1..w(L-1)
    targets = ids[:, L + 2 :]  # the repeat's w2..wL
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _lr_at(step: int, steps: int, lr: float = LR) -> float:
    """Linear warmup, then cosine decay to 10%."""
    if step < WARMUP:
        return lr * (step + 1) / WARMUP
    frac = (step - WARMUP) / max(1, steps - WARMUP)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


@torch.no_grad()
def evaluate(
    model,
    n: int = EVAL_N_IOI,
    seed: int = EVAL_SEED,
    n_induction: int = EVAL_N_INDUCTION,
    induction_length: int = EVAL_INDUCTION_LEN,
) -> dict:
    """Held-out metrics: IOI on held-out templates x held-out name pairs (both orders, never
    trained on), and induction on fresh random sequences.

    ioi_accuracy: fraction with logit(IO) > logit(S) at the final position; ioi_logit_diff: mean
    logit(IO) - logit(S); ioi_abc_logit_diff / ioi_swap_logit_diff: the same difference on the
    ABC- and swap-corrupted prompts; induction_accuracy: top-1 accuracy over the repeated half
    after its first token."""
    was_training = model.training
    model.eval()
    tokenizer = model.tokenizer
    tid = tokenizer.convert_tokens_to_ids

    def final_diffs(texts: list[str], answers: list[str], wrongs: list[str]) -> torch.Tensor:
        # One template = one token length, so group by length and never pad.
        out = torch.empty(len(texts))
        groups: dict[int, list[int]] = defaultdict(list)
        for i, t in enumerate(texts):
            groups[len(prompts.split_words(t))].append(i)
        for idx in groups.values():
            logits = model(model.to_tokens([texts[i] for i in idx]))[:, -1]
            a = torch.tensor([tid(answers[i]) for i in idx])
            w = torch.tensor([tid(wrongs[i]) for i in idx])
            rows = torch.arange(len(idx))
            out[idx] = (logits[rows, a] - logits[rows, w]).float().cpu()
        return out

    def ioi_stats(pairs: list[prompts.PromptPair], corrupted: bool = True) -> dict:
        answers, wrongs = [p.answer for p in pairs], [p.wrong for p in pairs]
        clean = final_diffs([p.clean for p in pairs], answers, wrongs)
        stats = {"accuracy": (clean > 0).float().mean().item(), "logit_diff": clean.mean().item(), "clean": clean}
        if corrupted:
            stats["abc_logit_diff"] = final_diffs([p.corrupted for p in pairs], answers, wrongs).mean().item()
            swapped = [prompts.swap_names(p.clean) for p in pairs]
            stats["swap_logit_diff"] = final_diffs(swapped, answers, wrongs).mean().item()
        return stats

    heldout = prompts.ioi_pairs(n, seed=seed, corruption="abc", split="heldout")
    h = ioi_stats(heldout)
    per_template = {}
    for t in prompts.HELDOUT_TEMPLATES:
        tmpl_pairs = prompts.ioi_pairs(max(1, n // 8), seed=seed + 1 + t, split="heldout", template=t)
        s = ioi_stats(tmpl_pairs, corrupted=False)
        per_template[str(t)] = {"accuracy": round(s["accuracy"], 6), "logit_diff": round(s["logit_diff"], 6)}
    # For contrast: fresh sentences from the training templates and pairs.
    train_like = ioi_stats(prompts.ioi_pairs(max(1, n // 2), seed=seed, split="train"), corrupted=False)

    ind = prompts.induction_pairs(n_induction, seed=seed, length=induction_length)
    L = induction_length
    ids = model.to_tokens([f"{p.clean} {p.answer}" for p in ind])  # [bos, w1..wL, w1..wL]
    logits = model(ids)
    pred = logits[:, L + 1 : 2 * L].argmax(-1)
    induction_acc = (pred == ids[:, L + 2 :]).float().mean().item()
    rows = torch.arange(len(ind))
    answer_ids = torch.tensor([tid(p.answer) for p in ind])
    wrong_ids = torch.tensor([tid(p.wrong) for p in ind])
    last = logits[:, 2 * L - 1]  # the clean prompt's final position
    ind_diff = last[rows, answer_ids] - last[rows, wrong_ids]
    ind_corr = final_diffs([p.corrupted for p in ind], [p.answer for p in ind], [p.wrong for p in ind])

    model.train(was_training)
    return {
        "eval": {"n": n, "seed": seed, "n_induction": n_induction, "induction_length": L},
        "ioi_accuracy": h["accuracy"],
        "ioi_logit_diff": h["logit_diff"],
        "ioi_min_logit_diff": h["clean"].min().item(),
        "ioi_abc_logit_diff": h["abc_logit_diff"],
        "ioi_swap_logit_diff": h["swap_logit_diff"],
        "ioi_heldout_per_template": per_template,
        "ioi_train_split_accuracy": train_like["accuracy"],
        "ioi_train_split_logit_diff": train_like["logit_diff"],
        "induction_accuracy": induction_acc,
        "induction_logit_diff": ind_diff.mean().item(),
        "induction_corrupted_logit_diff": ind_corr.mean().item(),
    }


def _train_loop(
    model, tokenizer, opt, rng: random.Random, seed: int, steps: int, log: Callable[[str], None],
    answer_smoothing: float = 0.0, s_share: float = 0.0, consistency: float = 0.0, consistency_detach: bool = True,
    teacher_model=None, answer_weight: float = ANSWER_WEIGHT, ends: dict | None = None, relative: bool = False,
    after_step: Callable[[], None] | None = None, lr: float = LR,
):
    """The optimisation steps; returns the running (IOI, induction) losses."""
    t_train = time.time()
    running = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        data_seed = seed * 1_000_003 + step
        ioi = prompts.ioi_training_texts(IOI_BATCH, seed=2 * data_seed)
        L = rng.randint(*INDUCTION_LEN)
        ind = prompts.induction_training_texts(INDUCTION_BATCH, seed=2 * data_seed + 1, min_len=L, max_len=L)
        if ends is not None:
            ends["last"] = _encode(tokenizer, ioi)[1].sum(1) - 2  # each row's last context token
        if consistency > 0:
            # The whole model's logit difference (no heads dropped), which the run with heads
            # dropped must reproduce: the other heads have to make up for the missing ones.
            if teacher_model is not None:
                with torch.no_grad():
                    teacher = _answer_logit_diff(teacher_model, tokenizer, ioi)
            else:
                model.eval()
                with torch.no_grad() if consistency_detach else nullcontext():
                    teacher = _answer_logit_diff(model, tokenizer, ioi)
                model.train()
            loss_ioi, loss_cons = _ioi_loss(model, tokenizer, ioi, answer_smoothing, s_share, teacher, answer_weight, relative)
        else:
            loss_ioi = _ioi_loss(model, tokenizer, ioi, answer_smoothing, s_share, answer_weight=answer_weight)
        if ends is not None:
            ends["last"] = None  # induction rows all have the same length
        loss_ind = _induction_loss(model, tokenizer, ind)
        loss = loss_ioi + loss_ind
        if consistency > 0:
            loss = loss + consistency * loss_cons
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if after_step is not None:
            after_step()
        cur = (loss_ioi.item(), loss_ind.item())
        running = cur if running is None else tuple(0.98 * r + 0.02 * c for r, c in zip(running, cur))
        if (step + 1) % 250 == 0 or step == 0:
            extra = f"  consistency {loss_cons.item():.3f}" if consistency > 0 else ""
            log(f"step {step + 1}/{steps}  ioi loss {running[0]:.3f}  induction loss {running[1]:.3f}  "
                f"{time.time() - t_train:.0f}s{extra}")  # fmt: skip
        if (step + 1) % EVAL_EVERY == 0 and step + 1 < steps:
            quick = evaluate(model, n=200, seed=seed + 99, n_induction=100)
            per_t = " ".join(f"{k}:{v['accuracy']:.2f}" for k, v in quick["ioi_heldout_per_template"].items())
            log(f"  heldout ioi acc {quick['ioi_accuracy']:.3f} diff {quick['ioi_logit_diff']:.2f} ({per_t})  "
                f"train-split acc {quick['ioi_train_split_accuracy']:.3f}  induction acc {quick['induction_accuracy']:.3f}")  # fmt: skip
    return running


def train(
    out_dir: str | Path | None = None,
    seed: int | None = None,
    steps: int | None = None,
    log: Callable[[str], None] = print,
    threads: int | None = None,
    recipe: BuiltinRecipe | str = "default",
    init_dir: str | Path | None = None,
) -> dict:
    """Train a built-in model (default: the default model) from scratch and write it, with
    metrics.json and CARD.md, to out_dir (default: the recipe's shipped directory). seed, steps
    and threads default to the recipe's. Returns the metrics."""
    from safetensors.torch import save_file
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    out_dir = recipe.directory if out_dir is None else out_dir
    seed = recipe.seed if seed is None else seed
    steps = recipe.steps if steps is None else steps
    threads = recipe.threads if threads is None else threads
    t_start = time.time()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir / TOKENIZER_DIR)
    config = _model_config(len(tokenizer), seed, recipe)
    model = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(config), tokenizer=tokenizer)
    init_fingerprint = None
    if recipe.init_from is not None:
        from safetensors.torch import load_file

        init_dir = Path(init_dir) if init_dir is not None else BUILTIN_MODELS[recipe.init_from]
        init_fingerprint = weights_fingerprint(init_dir)
        # Every parameter of this model comes from the init model; parts this architecture lacks
        # (the MLPs, for an attention-only recipe) are left behind.
        own = model.state_dict()
        state = load_file(str(init_dir / WEIGHTS_FILE))
        dropped = sorted(k for k in state if k not in own)
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        log(f"starting from {recipe.init_from} ({init_dir}, sha256 {init_fingerprint})"
            + (f", leaving out {len(dropped)} tensors" if dropped else ""))
    teacher_model = None
    if recipe.consistency_teacher == "init":
        import copy

        teacher_model = copy.deepcopy(model).eval().requires_grad_(False)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{recipe.name}: vocab {len(tokenizer)}, {n_params} parameters, {steps} steps")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7)  # head-dropout masks only
    ends: dict = {}  # the IOI batch's last context positions, for aligned mean ablation
    dropout_hooks = _head_dropout_hooks(model, recipe, generator, ends)

    params = list(model.parameters())
    if recipe.trainable is not None:  # by state-dict name (blocks.3.attn.q.weight), as saved
        named = model.state_dict(keep_vars=True).items()
        params = [p for n, p in named if isinstance(p, torch.nn.Parameter) and n.startswith(recipe.trainable)]
    if recipe.trainable is not None:
        kept = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in kept)
        log(f"training {sum(p.numel() for p in params)} parameters ({', '.join(recipe.trainable)}), the rest frozen")
    after_step = None
    if recipe.trainable_heads is not None:
        params, after_step = _head_slices(model, recipe.trainable_heads)
        log(f"training the q/k/v/o slices of heads {', '.join(f'L{l}H{h}' for l, h in recipe.trainable_heads)}, the rest frozen")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.98),
    )  # fmt: skip
    rng = random.Random(seed)
    t_train = time.time()
    with model.hooks(fwd_hooks=dropout_hooks) if dropout_hooks else nullcontext():
        running = _train_loop(
            model, tokenizer, opt, rng, seed, steps, log, recipe.answer_smoothing, recipe.s_share, recipe.consistency,
            recipe.consistency_detach, teacher_model, recipe.answer_weight, ends,
            recipe.consistency_relative, after_step, recipe.lr,
        )
    train_seconds = time.time() - t_train

    model.eval()
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    training = {
        "steps": steps, "ioi_batch": IOI_BATCH, "induction_batch": INDUCTION_BATCH,
        "induction_len": list(INDUCTION_LEN), "optimizer": "AdamW", "betas": [0.9, 0.98], "lr": recipe.lr,
        "warmup": WARMUP, "schedule": "linear warmup, cosine decay to 10%", "weight_decay": WEIGHT_DECAY,
        "answer_weight": recipe.answer_weight, "grad_clip": 1.0, "seed": seed, "threads": threads,
        "final_ioi_loss": running[0], "final_induction_loss": running[1],
        "train_seconds": round(train_seconds, 1),
        "cpu_count": os.cpu_count(), "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "torch": torch.__version__, "platform": platform.platform(), "processor": platform.machine(),
        "recipe": recipe.name, "environment": environment(),
    }  # fmt: skip
    if recipe.head_dropout > 0 or recipe.layer_dropout > 0:
        training["head_dropout"] = {
            "probability": recipe.head_dropout, "layer_probability": recipe.layer_dropout, "mode": recipe.head_dropout_mode,
            "layers": list(recipe.head_dropout_layers) if recipe.head_dropout_layers is not None else "all",
            "one_head_per_example": recipe.drop_one,
            "heads": list(recipe.head_dropout_heads) if recipe.head_dropout_heads is not None else "all",
        }  # fmt: skip
    if recipe.consistency > 0:
        training["consistency"] = {
            "weight": recipe.consistency, "teacher": recipe.consistency_teacher,
            "teacher_detached": recipe.consistency_detach, "relative": recipe.consistency_relative,
        }  # fmt: skip
    if recipe.trainable is not None:
        training["trainable"] = list(recipe.trainable)
    if recipe.trainable_heads is not None:
        training["trainable_heads"] = [list(lh) for lh in recipe.trainable_heads]
    if recipe.answer_smoothing > 0:
        training["answer_label_smoothing"] = recipe.answer_smoothing
    if init_fingerprint is not None:
        training["init_from"] = {"model": recipe.init_from, "fingerprint": init_fingerprint}
    if recipe.note:
        training["note"] = recipe.note
    metrics = write_report(out_dir, training, started=t_start, recipe=recipe)
    log(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    log(f"wrote {out_dir} in {metrics['training']['total_seconds']:.0f}s")
    return metrics


def train_builtin(
    name: str,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    steps: int | None = None,
    log: Callable[[str], None] = print,
    init_dir: str | Path | None = None,
) -> dict:
    """Retrain the built-in model ``name`` (a key of RECIPES: "default", "hydra") into out_dir
    (default: its shipped directory, patchstudio/models/NAME/); seed and steps default to the
    recipe's, which reproduce the shipped weights bit for bit. Returns its metrics."""
    if name not in RECIPES:
        raise ValueError(f"unknown built-in model {name!r}: choose from {', '.join(RECIPES)}")
    shipped = RECIPES[name].directory
    shipped_print = weights_fingerprint(shipped) if (shipped / WEIGHTS_FILE).exists() else None
    shipped_env = None
    if (shipped / "metrics.json").exists():
        shipped_env = json.loads((shipped / "metrics.json").read_text())["training"].get("environment")
    metrics = train(out_dir, seed=seed, steps=steps, log=log, recipe=name, init_dir=init_dir)
    log(reproduction_report(name, metrics, shipped_print, shipped_env, default_settings=seed is None and steps is None))
    return metrics


def reproduction_report(name: str, metrics: dict, shipped_print: str | None, shipped_env: dict | None,
                        default_settings: bool = True) -> str:
    """One line: did this retrain give the shipped weights, and if not, what may explain it."""
    got = metrics["model"]["fingerprint"]
    if shipped_print is None:
        return f"{name}: sha256 {got} (no shipped weights to compare with)"
    if got == shipped_print:
        return f"{name}: sha256 {got}, the shipped weights bit for bit"
    why = []
    if not default_settings:
        why.append("a seed or step count other than the recipe's")
    init = metrics["training"].get("init_from")
    if init and init["fingerprint"] != weights_fingerprint(RECIPES[init["model"]].directory):
        why.append(f"it started from {init['model']} weights other than the shipped ones")
    env = metrics["training"].get("environment")
    if env != shipped_env:
        why.append(f"this environment ({environment_summary(env)}) is not the shipped one's ({environment_summary(shipped_env)})")
    return (f"{name}: sha256 {got} differs from the shipped {shipped_print}"
            + (f": {'; '.join(why)}" if why else " in the same recorded environment: please report it"))


def train_all(out_root: str | Path | None = None, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Retrain every built-in model with its recipe's settings, each into out_root/NAME (default:
    the shipped directories); a model fine-tuned from another starts from the one just trained.
    Returns {name: metrics}."""
    out = {}
    for name, recipe in RECIPES.items():  # a recipe's init_from comes before it in RECIPES
        init = recipe.init_from
        init_dir = None if out_root is None or init is None else Path(out_root) / init
        out[name] = train_builtin(name, out_dir=None if out_root is None else Path(out_root) / name, log=log, init_dir=init_dir)
    return out


def write_report(
    out_dir: str | Path = DEFAULT_DIR,
    training: dict | None = None,
    started: float | None = None,
    recipe: BuiltinRecipe | str | None = None,
) -> dict:
    """Evaluate the saved model in out_dir exactly as users load it and write metrics.json and
    CARD.md. training: the training record (default: keep the one already in metrics.json);
    started: time.time() at the start of training, to record the total wall time; recipe: which
    built-in model this is (default: the one the training record names, else "default")."""
    from .default_model import load_default_model

    out_dir = Path(out_dir)
    if training is None:
        training = json.loads((out_dir / "metrics.json").read_text())["training"]
    if recipe is None:
        recipe = training.get("recipe", "default")
    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    model = load_default_model(out_dir)
    metrics = evaluate(model)
    if recipe.self_repair_report:
        from .hydra_report import measure

        metrics["self_repair"] = measure(model)
    if started is not None:
        training = {**training, "total_seconds": round(time.time() - started, 1)}
    metrics["training"] = training
    metrics["model"] = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "d_vocab": model.cfg.d_vocab,
        "fingerprint": weights_fingerprint(out_dir),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "CARD.md").write_text(_card(metrics, recipe))
    return metrics


def _card(m: dict, recipe: BuiltinRecipe | None = None) -> str:
    recipe = recipe or RECIPES["default"]
    t, e, md, c = m["training"], m["eval"], m["model"], recipe.model_config()
    hydra = _hydra_card_parts(m, recipe)
    held = ", ".join(str(i) for i in prompts.HELDOUT_TEMPLATES)
    per_t = "\n".join(
        f"| {i} | `{prompts.IOI_TEMPLATES[int(i)]}` | {v['accuracy']:.3f} | {v['logit_diff']:.2f} |"
        for i, v in m["ioi_heldout_per_template"].items()
    )
    return f"""# patchstudio {recipe.name} model

{hydra['intro']}{hydra['start']} small GPT-style transformer trained from scratch, offline, on synthetic text, so that
patchstudio works with no download and the model has circuits worth finding: **indirect object
identification** (IOI, Wang et al. 2022) and **induction**. It is a teaching/testing model, not a
language model.

## Architecture

TransformerLens-native (`TransformerBridge.boot_native`): {c['n_layers']} layers x {c['n_heads']} heads,
d_model {c['d_model']}, d_head {c['d_head']}, d_mlp {c['d_mlp']}, LayerNorm, GELU, learned absolute
positions, n_ctx {c['n_ctx']}, untied embeddings; {md['n_params']:,} parameters. Weights: `model.safetensors` (sha256 `{md['fingerprint']}`).

## Tokenizer

Word level (`tokenizers` WordLevel), {md['d_vocab']} tokens: `<bos>`, `<unk>`, `<pad>` and every
word and punctuation mark of the templates, names, places and objects in
`patchstudio/models/prompts.py`. Text is split on whitespace and each punctuation mark is its own
token (`"store,"` -> `store` `,`). Case-sensitive. The tokenizer prepends `<bos>` itself, so
`model.to_tokens("When Mary and John ...")` gives `[<bos>, When, Mary, and, John, ...]`
(`prepend_bos=False` strips it).

## Data

* IOI: {len(prompts.IOI_TEMPLATES)} templates in the style of Wang et al. (e.g. "When Mary and John
  went to the store, John gave a drink to" -> "Mary"), each in both name orders (ABBA and BABA),
  {len(prompts.NAMES)} names, {len(prompts.PLACES)} places, {len(prompts.OBJECTS)} objects. Trained on the full
  sentence (prompt + answer). Half the sentences get a lead-in: a filler sentence ("It was a nice
  day.") or another complete IOI sentence with two other names. This moves the names around so
  the model cannot tie IOI to the training templates' positions: in a run without it (and with
  16 training templates), held-out IOI accuracy fell to 87% (one template near 60%) once the
  induction heads formed, while training-template accuracy stayed at 100%.
* Induction: random sequences of distinct vocabulary words (length {t['induction_len'][0]}-{t['induction_len'][1]}) written twice;
  loss on the repeated half only.
* Held out, never trained on: templates {held} and ~20% of the unordered name pairs
  (`prompts.is_heldout_pair`, a sha256 split), in both roles and orders.

## Training

{t['steps']} steps of AdamW (lr {t['lr']}, betas {t['betas']}, weight decay {t['weight_decay']},
{t['warmup']} warmup steps then cosine decay to 10%, grad clip {t['grad_clip']}); each step one batch of
{t['ioi_batch']} IOI sentences (next-token loss on all positions, the answer position weighted
x{t['answer_weight']}) plus {t['induction_batch']} repeated sequences.{hydra['training']} Seed {t['seed']}, {t['threads']} CPU threads,
torch {t['torch']}. Wall time: {t['train_seconds']:.0f} s training, {t['total_seconds']:.0f} s in all
({t['processor']}, {t.get('cpu_count', '?')} cores, 1-min load average {t.get('load_average_1min_at_end', '?')} at the end).
{t['note'] + ' ' if t.get('note') else ''}Reproduce: `patchstudio train-default --model {recipe.name}` (or `python -m patchstudio.models.train_default{hydra['flag']}`;
`--eval-only` re-measures the saved model and rewrites `metrics.json` and this card). The retrain gives
these weights bit for bit in the same environment: {environment_summary(t.get('environment'))}, {t['threads']} threads.
Another version of a package, thread count or CPU instruction set can change the last bits of a float
operation, which {t['steps']} steps amplify into different weights that measure alike but not identically
(in one such case the default model's weights came out up to 0.004 apart and its held-out logit diff 0.003
away); the retrain says which of these differ.

## Measured (held-out prompts; `metrics.json`)

Evaluated on {e['n']} held-out IOI prompts (held-out templates x held-out name pairs, both orders,
seed {e['seed']}) and {e['n_induction']} induction sequences of length {e['induction_length']}:

| metric | value |
|---|---|
| IOI accuracy (logit(IO) > logit(S)) | {m['ioi_accuracy']:.4f} |
| IOI mean logit diff logit(IO) - logit(S) | {m['ioi_logit_diff']:.3f} |
| IOI min logit diff | {m['ioi_min_logit_diff']:.3f} |
| same diff on ABC-corrupted prompts | {m['ioi_abc_logit_diff']:.3f} |
| same diff on swap-corrupted prompts | {m['ioi_swap_logit_diff']:.3f} |
| IOI accuracy, training templates/pairs (fresh sentences) | {m['ioi_train_split_accuracy']:.4f} |
| induction top-1 accuracy on the repeated half | {m['induction_accuracy']:.4f} |
| induction logit diff (answer - wrong), clean / corrupted | {m['induction_logit_diff']:.3f} / {m['induction_corrupted_logit_diff']:.3f} |

Per held-out template:

| # | template | accuracy | logit diff |
|---|---|---|---|
{per_t}
{hydra['measured']}
## Intended use and limits

For exploring activation patching, ablations and path patching on a model known to implement IOI
and induction: fast on CPU, deterministic, no download. It knows only its
{md['d_vocab']}-token vocabulary: any other word becomes `<unk>`, and text unlike the templates is
out of distribution. Prompts longer than {c['n_ctx']} tokens are refused with a message. It has no knowledge of
language beyond these patterns.
"""


def _hydra_card_parts(m: dict, recipe: BuiltinRecipe) -> dict[str, str]:
    """The card's extra text for a model trained with head dropout (all empty for the default)."""
    parts = {"intro": "", "training": "", "flag": "", "measured": "", "start": "A"}
    if recipe.init_from is not None:
        parts["start"] = f"Its starting point, the {recipe.init_from} model, is a"
    if recipe.name != "default":
        parts["flag"] = f" --model {recipe.name}"
    hd = m["training"].get("head_dropout")
    if hd:
        layers = "every layer" if hd["layers"] == "all" else f"layer{'s' if len(hd['layers']) > 1 else ''} " + ", ".join(map(str, hd["layers"]))
        what = "set to zero" if hd["mode"] == "zero" else "replaced by its batch mean at each position"
        if hd.get("one_head_per_example"):
            chosen = hd.get("heads", "all")
            heads = ("any head" if chosen == "all" else f"head {chosen[0]}" if len(chosen) == 1
                     else "one of heads " + ", ".join(map(str, chosen)))
            which = f"each example loses, with probability {hd['probability']}, exactly one head ({heads}) of {layers}"
        else:
            which = f"each attention head of {layers} is ablated with probability {hd['probability']}, independently per example"
        extra = ""
        if "consistency" in m["training"]:
            cs = m["training"]["consistency"]
            teacher = "the frozen starting model" if cs["teacher"] == "init" else "the model itself, run whole"
            extra += (f" A consistency loss (weight {cs['weight']}) asks the logit diff at the IOI answer with the\n"
                      f"head dropped to equal that of {teacher}.")
        if "trainable" in m["training"]:
            extra += f" Only {', '.join(m['training']['trainable'])} is trained; the rest is frozen."
        if "trainable_heads" in m["training"]:
            heads = ", ".join(f"L{l}H{h}" for l, h in m["training"]["trainable_heads"])
            extra += (f" Only the query, key, value and output weights of {heads} are trained; every other\n"
                      "weight is frozen at its starting value.")
        if "init_from" in m["training"]:
            extra += f" Training starts from the {m['training']['init_from']['model']} model's weights."
        learns = ("Downstream heads so learn to stand in for a missing head: backup heads"
                  if "trainable_heads" not in m["training"] else
                  f"{', '.join(f'L{l}H{h}' for l, h in m['training']['trainable_heads'])} so learns to stay quiet while the "
                  "head writes and to stand in for it when it is gone: a backup head, trained in by this explicit\n"
                  "objective (dropout alone did not produce one at this scale: docs/hydra-notes.md)")
        parts["training"] = (
            f"\n**Head dropout:** in every training forward pass {which}: its output `hook_z` is\n"
            f"{what} (seeded masks from their own generator).{extra} {learns}, as in Wang et al.'s\n"
            "backup name movers and McGrath et al. 2023's Hydra effect."
        )
    sr = m.get("self_repair")
    if sr is None:
        return parts
    parts["intro"] = (
        "The default model with one more trained head: fine-tuned on the same data with its strongest\n"
        "head randomly ablated, so that it **repairs itself**: mean-ablate that head and a later head's\n"
        "direct effect grows to make up much of the loss (the Hydra effect). Use it to see self-repair\n"
        "in the app (the self-repair method; the \"Self-repair view\" example) next to the default\n"
        "model, which has almost none. Walk-through: docs/self-repair.md.\n\n"
    )
    tg, cp, ev = sr["target"], sr["compensator"], sr["eval"]
    tname, cname = f"L{tg['layer']}H{tg['head']}", f"L{cp['layer']}H{cp['head']}"
    drop_t, drop_c, drop_p = -sr["target_total_effect"], -sr["compensator_total_effect"], -sr["paired_total_effect"]
    verdict = (f"\n{cname} is a backup that works mostly when {tname} is gone." if sr["compensator_growth_ratio"] >= 0.3
               else f"\nNo single head makes up 30% of {tname}'s direct effect: this model falls short of the Hydra bar.")
    parts["measured"] = f"""
### Self-repair (`patchstudio.models.hydra_report.measure`; `metrics.json` "self_repair")

{ev['n_prompts']} held-out IOI prompts ({ev['n_per_template']} from each held-out template {", ".join(map(str, ev['templates']))}, held-out
name pairs, seed {ev['seed']}). Each head is mean-ablated: its `hook_z` replaced at every position by
its mean over {ev['n_reference']} other prompts of the same template. Effects are on logit(IO) - logit(S),
averaged over the prompts; a head's direct effect (DE) is measured at the clean final LayerNorm
scale, exactly as the engine's self-repair method does.

| figure | value |
|---|---|
| IOI accuracy / mean logit diff on these prompts | {sr['ioi_accuracy']:.4f} / {sr['ioi_logit_diff']:.3f} |
| strongest head by direct effect (the target) | {tname} |
| target's direct effect DE | {sr['target_direct_effect']:.3f} |
| total effect TE of ablating the target | {sr['target_total_effect']:.3f} |
| self-repair TE - DE | {sr['target_self_repair']:.3f} |
| top compensator (largest rise of direct effect) | {cname} |
| compensator's direct effect rise when the target is ablated | +{sr['compensator_growth']:.3f} ({100 * sr['compensator_growth_ratio']:.0f}% of the target's DE) |
| TE of ablating the compensator alone | {sr['compensator_total_effect']:.3f} |
| TE of ablating both (paired ablation) | {sr['paired_total_effect']:.3f} |
| paired drop minus the sum of the single drops | {sr['paired_drop_minus_single_drops']:+.3f} |

Ablating {tname} alone costs {drop_t:.2f} and {cname} alone {drop_c:.2f}, but both together {drop_p:.2f}.{verdict}
"""
    return parts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", choices=[*RECIPES, "all"], help="which built-in model")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the model's shipped one)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eval-only", action="store_true", help="re-measure the saved model; rewrite metrics.json, CARD.md")
    args = parser.parse_args(argv)
    names = list(RECIPES) if args.model == "all" else [args.model]
    if args.out is not None and len(names) > 1:
        parser.error("--out needs a single --model")
    for name in names:
        if args.eval_only:
            metrics = write_report(args.out or RECIPES[name].directory, recipe=name)
            print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
        else:
            train_builtin(name, out_dir=args.out, seed=args.seed, steps=args.steps)


if __name__ == "__main__":
    main()
