"""Train the shipped default model (offline, CPU, a few minutes) and measure it on held-out prompts.

    python -m patchstudio.models.train_default [--out DIR] [--seed N] [--steps N] [--eval-only]

writes config.json, model.safetensors, tokenizer/, metrics.json and CARD.md into DIR (default:
the package's models/default/).
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
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import prompts
from .default_model import CONFIG_FILE, DEFAULT_DIR, TOKENIZER_DIR, WEIGHTS_FILE, weights_fingerprint

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


def _model_config(d_vocab: int, seed: int) -> dict:
    return {**MODEL_CONFIG, "d_vocab": d_vocab, "seed": seed, "tokenizer_prepends_bos": True}


def _encode(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [batch, pos] and a mask of real tokens."""
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"].bool()


def _ioi_loss(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Next-token loss on every position; the final (answer) position weighs ANSWER_WEIGHT."""
    ids, mask = _encode(tokenizer, texts)
    logits = model(ids)[:, :-1]
    targets, valid = ids[:, 1:], mask[:, 1:]
    weights = valid.float()
    last = valid.sum(1) - 1  # index of each row's answer target (right padding)
    weights[torch.arange(len(texts)), last] = ANSWER_WEIGHT
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (losses * weights.reshape(-1)).sum() / weights.sum()


def _induction_loss(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Loss on the repeated half only, from its second token on (the first is unpredictable).
    All texts in the batch share one length L: [bos, w1..wL, w1..wL]."""
    ids, _ = _encode(tokenizer, texts)
    L = (ids.shape[1] - 1) // 2
    logits = model(ids)[:, L + 1 : 2 * L]  # positions holding the repeat's w1..w(L-1)
    targets = ids[:, L + 2 :]  # the repeat's w2..wL
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _lr_at(step: int, steps: int) -> float:
    """Linear warmup, then cosine decay to 10%."""
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    frac = (step - WARMUP) / max(1, steps - WARMUP)
    return LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


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


def train(
    out_dir: str | Path = DEFAULT_DIR,
    seed: int = 0,
    steps: int = STEPS,
    log: Callable[[str], None] = print,
    threads: int = 2,
) -> dict:
    """Train the default model from scratch and write it, with metrics.json and CARD.md, to out_dir.
    Returns the metrics."""
    from safetensors.torch import save_file
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    t_start = time.time()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir / TOKENIZER_DIR)
    config = _model_config(len(tokenizer), seed)
    model = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(config), tokenizer=tokenizer)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"vocab {len(tokenizer)}, {n_params} parameters, {steps} steps")

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.98),
    )  # fmt: skip
    rng = random.Random(seed)
    t_train = time.time()
    running = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps)
        data_seed = seed * 1_000_003 + step
        ioi = prompts.ioi_training_texts(IOI_BATCH, seed=2 * data_seed)
        L = rng.randint(*INDUCTION_LEN)
        ind = prompts.induction_training_texts(INDUCTION_BATCH, seed=2 * data_seed + 1, min_len=L, max_len=L)
        loss_ioi = _ioi_loss(model, tokenizer, ioi)
        loss_ind = _induction_loss(model, tokenizer, ind)
        loss = loss_ioi + loss_ind
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        cur = (loss_ioi.item(), loss_ind.item())
        running = cur if running is None else tuple(0.98 * r + 0.02 * c for r, c in zip(running, cur))
        if (step + 1) % 250 == 0 or step == 0:
            log(f"step {step + 1}/{steps}  ioi loss {running[0]:.3f}  induction loss {running[1]:.3f}  "
                f"{time.time() - t_train:.0f}s")  # fmt: skip
        if (step + 1) % EVAL_EVERY == 0 and step + 1 < steps:
            quick = evaluate(model, n=200, seed=seed + 99, n_induction=100)
            per_t = " ".join(f"{k}:{v['accuracy']:.2f}" for k, v in quick["ioi_heldout_per_template"].items())
            log(f"  heldout ioi acc {quick['ioi_accuracy']:.3f} diff {quick['ioi_logit_diff']:.2f} ({per_t})  "
                f"train-split acc {quick['ioi_train_split_accuracy']:.3f}  induction acc {quick['induction_accuracy']:.3f}")  # fmt: skip
    train_seconds = time.time() - t_train

    model.eval()
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    training = {
        "steps": steps, "ioi_batch": IOI_BATCH, "induction_batch": INDUCTION_BATCH,
        "induction_len": list(INDUCTION_LEN), "optimizer": "AdamW", "betas": [0.9, 0.98], "lr": LR,
        "warmup": WARMUP, "schedule": "linear warmup, cosine decay to 10%", "weight_decay": WEIGHT_DECAY,
        "answer_weight": ANSWER_WEIGHT, "grad_clip": 1.0, "seed": seed, "threads": threads,
        "final_ioi_loss": running[0], "final_induction_loss": running[1],
        "train_seconds": round(train_seconds, 1),
        "cpu_count": os.cpu_count(), "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "torch": torch.__version__, "platform": platform.platform(), "processor": platform.machine(),
    }  # fmt: skip
    metrics = write_report(out_dir, training, started=t_start)
    log(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    log(f"wrote {out_dir} in {metrics['training']['total_seconds']:.0f}s")
    return metrics


def write_report(out_dir: str | Path = DEFAULT_DIR, training: dict | None = None, started: float | None = None) -> dict:
    """Evaluate the saved model in out_dir exactly as users load it and write metrics.json and
    CARD.md. training: the training record (default: keep the one already in metrics.json);
    started: time.time() at the start of training, to record the total wall time."""
    from .default_model import load_default_model

    out_dir = Path(out_dir)
    if training is None:
        training = json.loads((out_dir / "metrics.json").read_text())["training"]
    model = load_default_model(out_dir)
    metrics = evaluate(model)
    if started is not None:
        training = {**training, "total_seconds": round(time.time() - started, 1)}
    metrics["training"] = training
    metrics["model"] = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "d_vocab": model.cfg.d_vocab,
        "fingerprint": weights_fingerprint(out_dir),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "CARD.md").write_text(_card(metrics))
    return metrics


def _card(m: dict) -> str:
    t, e, md, c = m["training"], m["eval"], m["model"], MODEL_CONFIG
    held = ", ".join(str(i) for i in prompts.HELDOUT_TEMPLATES)
    per_t = "\n".join(
        f"| {i} | `{prompts.IOI_TEMPLATES[int(i)]}` | {v['accuracy']:.3f} | {v['logit_diff']:.2f} |"
        for i, v in m["ioi_heldout_per_template"].items()
    )
    return f"""# patchstudio default model

A small GPT-style transformer trained from scratch, offline, on synthetic text, so that
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
x{t['answer_weight']}) plus {t['induction_batch']} repeated sequences. Seed {t['seed']}, {t['threads']} CPU threads,
torch {t['torch']}. Wall time: {t['train_seconds']:.0f} s training, {t['total_seconds']:.0f} s in all
({t['processor']}, {t.get('cpu_count', '?')} cores, 1-min load average {t.get('load_average_1min_at_end', '?')} at the end).
{t.get('note', '')} Reproduce: `python -m patchstudio.models.train_default`
(`--eval-only` re-measures the saved model and rewrites `metrics.json` and this card).

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

## Intended use and limits

For exploring activation patching, ablations and path patching on a model known to implement IOI
and induction: fast on CPU, deterministic, no download. It knows only its
{md['d_vocab']}-token vocabulary: any other word becomes `<unk>`, and text unlike the templates is
out of distribution. Prompts longer than {c['n_ctx']} tokens are refused with a message. It has no knowledge of
language beyond these patterns.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--eval-only", action="store_true", help="re-measure the saved model; rewrite metrics.json, CARD.md")
    args = parser.parse_args(argv)
    if args.eval_only:
        metrics = write_report(args.out)
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    else:
        train(args.out, seed=args.seed, steps=args.steps)


if __name__ == "__main__":
    main()
