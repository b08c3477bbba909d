"""Train a built-in model from its recipe (offline, CPU, minutes) and write it: config.json,
model.safetensors, tokenizer/, then metrics.json and CARD.md (evaluate.write_report). One CLI runs
it: ``patchstudio train-default [--model NAME|all]``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from .. import prompts
from ..default_model import BUILTIN_MODELS, CONFIG_FILE, TOKENIZER_DIR, WEIGHTS_FILE, weights_fingerprint
from .environment import environment, reproduction_report
from .evaluate import evaluate, write_report
from .heads import head_dropout_hooks, head_slices
from .objective import answer_logit_diff, encode, induction_loss, ioi_loss, lr_at
from .recipes import (
    ANSWER_WEIGHT, EVAL_EVERY, INDUCTION_BATCH, INDUCTION_LEN, IOI_BATCH, LR, MODEL_CONFIG, RECIPES, WARMUP, WEIGHT_DECAY,
    BuiltinRecipe,
)  # fmt: skip

SPECIAL_TOKENS = ("<bos>", "<unk>", "<pad>")  # ids 0, 1, 2


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
            group["lr"] = lr_at(step, steps, lr)
        data_seed = seed * 1_000_003 + step
        ioi = prompts.ioi_training_texts(IOI_BATCH, seed=2 * data_seed)
        L = rng.randint(*INDUCTION_LEN)
        ind = prompts.induction_training_texts(INDUCTION_BATCH, seed=2 * data_seed + 1, min_len=L, max_len=L)
        if ends is not None:
            ends["last"] = encode(tokenizer, ioi)[1].sum(1) - 2  # each row's last context token
        if consistency > 0:
            # The whole model's logit difference (no heads dropped), which the run with heads
            # dropped must reproduce: the other heads have to make up for the missing ones.
            if teacher_model is not None:
                with torch.no_grad():
                    teacher = answer_logit_diff(teacher_model, tokenizer, ioi)
            else:
                model.eval()
                with torch.no_grad() if consistency_detach else nullcontext():
                    teacher = answer_logit_diff(model, tokenizer, ioi)
                model.train()
            loss_ioi, loss_cons = ioi_loss(model, tokenizer, ioi, answer_smoothing, s_share, teacher, answer_weight, relative)
        else:
            loss_ioi = ioi_loss(model, tokenizer, ioi, answer_smoothing, s_share, answer_weight=answer_weight)
        if ends is not None:
            ends["last"] = None  # induction rows all have the same length
        loss_ind = induction_loss(model, tokenizer, ind)
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


def _boot(recipe: BuiltinRecipe, out_dir: Path, seed: int, init_dir: str | Path | None, log: Callable[[str], None]):
    """The tokenizer (written to out_dir), the config and the model, from scratch or from the
    recipe's init_from weights; and the init weights' fingerprint (None from scratch)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    tokenizer = build_tokenizer(out_dir / TOKENIZER_DIR)
    config = _model_config(len(tokenizer), seed, recipe)
    model = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(config), tokenizer=tokenizer)
    if recipe.init_from is None:
        return tokenizer, config, model, None
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
    return tokenizer, config, model, init_fingerprint


def _trainable(model, recipe: BuiltinRecipe, log: Callable[[str], None]):
    """(parameters to optimise, a function to call after each step or None): all of them, those
    whose state-dict names the recipe's ``trainable`` prefixes, or its ``trainable_heads``' slices."""
    params = list(model.parameters())
    if recipe.trainable is not None:  # by state-dict name (blocks.3.attn.q.weight), as saved
        named = model.state_dict(keep_vars=True).items()
        params = [p for n, p in named if isinstance(p, torch.nn.Parameter) and n.startswith(recipe.trainable)]
        kept = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in kept)
        log(f"training {sum(p.numel() for p in params)} parameters ({', '.join(recipe.trainable)}), the rest frozen")
    if recipe.trainable_heads is None:
        return params, None
    log(f"training the q/k/v/o slices of heads {', '.join(f'L{l}H{h}' for l, h in recipe.trainable_heads)}, the rest frozen")
    return head_slices(model, recipe.trainable_heads)


def _record(recipe: BuiltinRecipe, seed: int, steps: int, threads: int, running: tuple[float, float], train_seconds: float,
            init_fingerprint: str | None) -> dict:
    """The training record kept in metrics.json (and read by the card): settings, timing, environment."""
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
    return training


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
    tokenizer, config, model, init_fingerprint = _boot(recipe, out_dir, seed, init_dir, log)
    teacher_model = None
    if recipe.consistency_teacher == "init":
        import copy

        teacher_model = copy.deepcopy(model).eval().requires_grad_(False)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{recipe.name}: vocab {len(tokenizer)}, {n_params} parameters, {steps} steps")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7)  # head-dropout masks only
    ends: dict = {}  # the IOI batch's last context positions, for aligned mean ablation
    dropout_hooks = head_dropout_hooks(model, recipe, generator, ends)
    params, after_step = _trainable(model, recipe, log)
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
    training = _record(recipe, seed, steps, threads, running, train_seconds, init_fingerprint)
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

