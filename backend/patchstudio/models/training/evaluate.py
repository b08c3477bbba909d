"""Held-out measurements of a built-in model (the numbers in its metrics.json), and the report a
training run ends with: metrics.json and the model card rendered from it (cards.py).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from .. import prompts
from ..default_model import DEFAULT_DIR, load_default_model, weights_fingerprint
from ..hydra_report import measure
from . import cards
from .recipes import EVAL_INDUCTION_LEN, EVAL_N_INDUCTION, EVAL_N_IOI, EVAL_SEED, RECIPES, BuiltinRecipe


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
    out_dir = Path(out_dir)
    if training is None:
        training = json.loads((out_dir / "metrics.json").read_text())["training"]
    if recipe is None:
        recipe = training.get("recipe", "default")
    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    model = load_default_model(out_dir)
    metrics = evaluate(model)
    if recipe.self_repair_report:
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
    (out_dir / "CARD.md").write_text(cards.render(metrics, recipe))
    return metrics

