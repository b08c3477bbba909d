"""Independent references for the engine, for any model: TransformerLens's patching module, plain
hooks on full forward passes, and autograd. None of them uses the engine's shortcuts (batch
widening, the trimmed last MLP, resid_mid through attn_out, the two-column readout): every
metric here is read from the model's own logits, soft-capping and all.

Generalised from the references in tests/engine/ (which are written for the tiny native model):
here the answer tokens are whatever the model's tokenizer writes after the prompt, of any length,
and every metric has its one- and several-token form.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd
import torch
import transformer_lens.patching as tlp
from torch import Tensor

TOL = 1e-4


@dataclass(frozen=True)
class Pair:
    clean: Tensor  # [1, pos]
    corrupted: Tensor
    answer: tuple[int, ...]
    wrong: tuple[int, ...]

    @property
    def multi(self) -> bool:
        return len(self.answer) > 1 or len(self.wrong) > 1


def following_ids(model, prompt: str, word: str) -> tuple[int, ...]:
    """The tokens of ``word`` as the tokenizer writes it after ``prompt`` and one space."""
    head = model.to_tokens(prompt)[0].tolist()
    full = model.to_tokens(prompt + " " + word.strip())[0].tolist()
    assert full[: len(head)] == head, (head, full)
    return tuple(full[len(head):])


def pairs_of(model, prompts: Sequence[dict]) -> list[Pair]:
    return [Pair(model.to_tokens(p["clean"]), model.to_tokens(p["corrupted"]),
                 following_ids(model, p["clean"], p["answer"]), following_ids(model, p["clean"], p["wrong"]))
            for p in prompts]


def final_metric(logits: Tensor, metric: str, answer: int, wrong: int, clean_lp: Tensor | None = None) -> Tensor:
    """A metric of one final-position logit vector [vocab] (one-token answers)."""
    if metric in ("logit_diff", "normalized_logit_diff"):
        return logits[answer] - logits[wrong]
    lp = logits.log_softmax(-1)
    if metric == "prob":
        return lp[answer].exp()
    if metric == "loss":
        return -lp[answer]
    if metric == "kl":
        return (clean_lp.exp() * (clean_lp - lp)).sum()
    raise AssertionError(metric)


Hooks = Sequence[tuple[str, Callable]]


def score(model, prompt: Tensor, pair: Pair, metric: str, hooks: Hooks = (), clean_lp: Tensor | None = None) -> Tensor:
    """The metric of ``prompt`` run with ``hooks``, from full forward passes. Answers of several
    tokens: teacher forcing, S(x) = sum_j log P(x_j | prompt, x_<j) from the model's own logits;
    logit_diff = S(answer) - S(wrong), prob = exp S(answer), loss = -S(answer). Hooks see the whole
    teacher-forced sequence and must touch only the prompt's positions (``[:, :P]``)."""
    if not pair.multi or metric == "kl":
        logits = model.run_with_hooks(prompt, fwd_hooks=list(hooks))[0, -1]
        return final_metric(logits, metric, pair.answer[0], pair.wrong[0], clean_lp)
    n = prompt.shape[1]

    def seq(ids: tuple[int, ...]) -> Tensor:
        tokens = torch.cat([prompt, torch.tensor([list(ids[:-1])], dtype=prompt.dtype)], dim=1)
        lp = model.run_with_hooks(tokens, fwd_hooks=list(hooks))[0].log_softmax(-1)
        return sum(lp[n - 1 + j, t] for j, t in enumerate(ids))

    if metric in ("logit_diff", "normalized_logit_diff"):
        return seq(pair.answer) - seq(pair.wrong)
    if metric == "prob":
        return seq(pair.answer).exp()
    if metric == "loss":
        return -seq(pair.answer)
    raise AssertionError(metric)


def clean_log_probs(model, pair: Pair) -> Tensor:
    with torch.no_grad():
        return model(pair.clean)[0, -1].log_softmax(-1)


def baselines(model, pairs: list[Pair], metric: str) -> tuple[float, float]:
    """Mean clean and corrupted metric over the pairs."""
    with torch.no_grad():
        clean = [float(score(model, p.clean, p, metric, clean_lp=clean_log_probs(model, p))) for p in pairs]
        corrupted = [float(score(model, p.corrupted, p, metric, clean_lp=clean_log_probs(model, p))) for p in pairs]
    return sum(clean) / len(clean), sum(corrupted) / len(corrupted)


# --- TransformerLens's patching module ----------------------------------------------------------------


def _whole_activation_setter(corrupted_activation, index, clean_activation):
    corrupted_activation[...] = clean_activation
    return corrupted_activation


# (component, positions) -> (activation name, TL patch setter, TL's axes). TL's named sweeps where
# they exist; its generic core with its own setters for the rest.
TL_SWEEPS = {
    ("head", "all"): tlp.get_act_patch_attn_head_out_all_pos,
    ("head", "each"): tlp.get_act_patch_attn_head_out_by_pos,
    ("head_q", "all"): tlp.get_act_patch_attn_head_q_all_pos,
    ("head_q", "each"): tlp.get_act_patch_attn_head_q_by_pos,
    ("head_k", "all"): tlp.get_act_patch_attn_head_k_all_pos,
    ("head_k", "each"): tlp.get_act_patch_attn_head_k_by_pos,
    ("head_v", "all"): tlp.get_act_patch_attn_head_v_all_pos,
    ("head_v", "each"): tlp.get_act_patch_attn_head_v_by_pos,
    ("pattern", "all"): tlp.get_act_patch_attn_head_pattern_all_pos,
    ("pattern", "each"): tlp.get_act_patch_attn_head_pattern_by_pos,
    ("resid_pre", "each"): tlp.get_act_patch_resid_pre,
    ("resid_mid", "each"): tlp.get_act_patch_resid_mid,
    ("attn_out", "each"): tlp.get_act_patch_attn_out,
    ("mlp_out", "each"): tlp.get_act_patch_mlp_out,
}
STREAM = {"resid_pre": "resid_pre", "resid_mid": "resid_mid", "resid_post": "resid_post", "attn_out": "attn_out",
          "mlp_out": "mlp_out"}
for _component, _name in STREAM.items():
    TL_SWEEPS.setdefault((_component, "each"), {"patch_setter": tlp.layer_pos_patch_setter, "activation_name": _name,
                                                "index_axis_names": ("layer", "pos")})
    TL_SWEEPS[(_component, "all")] = {"patch_setter": _whole_activation_setter, "activation_name": _name,
                                      "index_axis_names": ("layer",)}
# Engine axes: layer, pos, head. TL's axis names for the same things.
_ENGINE_AXIS = {"layer": "layer", "pos": "pos", "dest_pos": "pos", "head": "head", "head_index": "head"}


def _keywords(sweep) -> dict:
    return dict(sweep.keywords) if hasattr(sweep, "keywords") else dict(sweep)


def tl_metric(model, pairs: list[Pair], metric: str, clean_logits: Tensor):
    """The spec's metric on TL's batched logits, averaged over the prompt pairs."""
    rows = torch.arange(len(pairs))
    ans = torch.tensor([p.answer[0] for p in pairs])
    wrong = torch.tensor([p.wrong[0] for p in pairs])
    clean_lp = clean_logits[:, -1].log_softmax(-1)

    def fn(logits):
        final = logits[:, -1]
        if metric == "logit_diff":
            return (final[rows, ans] - final[rows, wrong]).mean()
        lp = final.log_softmax(-1)
        if metric == "prob":
            return lp[rows, ans].exp().mean()
        if metric == "loss":
            return -lp[rows, ans].mean()
        if metric == "kl":
            return (clean_lp.exp() * (clean_lp - lp)).sum(-1).mean()
        raise AssertionError(metric)

    return fn


def tl_patching(model, pairs: list[Pair], key: tuple[str, str], direction: str, metric: str,
                positions: Sequence[int] | None = None) -> tuple[list[tuple], Tensor]:
    """TransformerLens's activation patching of every prompt pair at once (one full forward pass per
    patch). Returns (engine cell indices, values): every cell, or with ``positions`` only the cells
    at those positions (TL's ``index_df``)."""
    clean = torch.cat([p.clean for p in pairs])
    corrupted = torch.cat([p.corrupted for p in pairs])
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)
    base, source = (corrupted, clean_cache) if direction == "denoise" else (clean, corrupted_cache)
    fn = tl_metric(model, pairs, metric, clean_logits)
    kw = _keywords(TL_SWEEPS[key])
    axes = kw.pop("index_axis_names")
    n_heads = int(model.cfg.n_heads)
    if kw["activation_name"] in ("k", "v") and getattr(model.cfg, "n_key_value_heads", None):
        n_heads = int(model.cfg.n_key_value_heads)
    ranges = {"layer": range(int(model.cfg.n_layers)), "head": range(n_heads), "head_index": range(n_heads),
              "pos": positions if positions is not None else range(clean.shape[1])}
    ranges["dest_pos"] = ranges["pos"]
    cells = list(itertools.product(*(ranges[a] for a in axes)))
    df = pd.DataFrame(cells, columns=list(axes))
    with torch.no_grad():
        values = tlp.generic_activation_patch(model, base, source, fn, index_df=df, **kw)
    order = ["layer", "pos", "head"]
    engine_cells = []
    for cell in cells:
        named = {_ENGINE_AXIS[a]: v for a, v in zip(axes, cell)}
        engine_cells.append(tuple(named[a] for a in order if a in named))
    return engine_cells, values.detach().reshape(-1)


def engine_cells(values, cells: list[tuple]) -> Tensor:
    """The engine's nested-list values at the given cells."""
    out = []
    for cell in cells:
        v = values
        for i in cell:
            v = v[i]
        out.append(v)
    return torch.tensor(out)


# --- plain hooks --------------------------------------------------------------------------------------


def hook_name(component: str, layer: int) -> str:
    suffix = {"head": "attn.hook_z", "head_q": "attn.hook_q", "head_k": "attn.hook_k", "head_v": "attn.hook_v",
              "pattern": "attn.hook_pattern", "resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post",
              "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}[component]
    return f"blocks.{layer}.{suffix}"


def set_at(component: str, source: Tensor, n: int, pos: int | None, head: int | None) -> Callable:
    """A hook writing ``source`` (cached on a prompt of length n) into one site: a head (all or one
    position), or a stream position (or all). Only the first n positions are touched."""

    def hook(act, hook):
        act = act.clone()
        p = slice(0, n) if pos is None else pos
        if component == "pattern":  # [batch, head, dest, src]
            act[:, head, p, :n] = source[:, head, p, :n]
        elif head is not None:  # [batch, pos, head, d_head]
            act[:, p, head] = source[:, p, head]
        else:  # [batch, pos, d_model]
            act[:, p] = source[:, p]
        return act

    return hook


def layer_hooks(layer: int, delta: Tensor, n: int, pos: int | None) -> list:
    """A block's contribution replaced: resid_post := own resid_pre + ``delta`` at ``pos``."""
    store = {}
    p = slice(0, n) if pos is None else pos

    def keep_pre(act, hook):
        store["pre"] = act.clone()

    def set_post(act, hook):
        act = act.clone()
        act[:, p] = store["pre"][:, p] + delta[:, p]
        return act

    return [(f"blocks.{layer}.hook_resid_pre", keep_pre), (f"blocks.{layer}.hook_resid_post", set_post)]


def cache_of(model, tokens: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=list(names))
    return {name: cache[name] for name in names}


# --- path patching (Wang et al. 2022), by plain hooks --------------------------------------------------


def path_patching(model, pairs: list[Pair], direction: str, receivers: Sequence[dict]) -> Tensor:
    """Wang et al.'s definition with plain hooks: the sender from the counterfactual run, every other
    head frozen at the base run, MLPs recomputed; then (head receivers) a free run with only the
    receivers' inputs set to what the first run gave them."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
    out = torch.zeros(n_layers, n_heads)
    for pair in pairs:
        base, cf = (pair.clean, pair.corrupted) if direction == "noise" else (pair.corrupted, pair.clean)
        bc, cc = cache_of(model, base, z_names), cache_of(model, cf, z_names)
        with torch.no_grad():
            base_metric = float(score(model, base, pair, "logit_diff"))
        for L in range(n_layers):
            for h in range(n_heads):
                freeze = []
                for l, name in enumerate(z_names):
                    def set_z(act, hook, l=l, name=name):
                        z = bc[name].clone()
                        if l == L:
                            z[:, :, h] = cc[name][:, :, h]
                        return z

                    freeze.append((name, set_z))
                if not receivers:
                    with torch.no_grad():
                        out[L, h] += float(score(model, base, pair, "logit_diff", freeze))
                    continue
                live = [r for r in receivers if r["layer"] > L]
                if not live:
                    out[L, h] += base_metric
                    continue
                recorded, record = {}, []
                for r in live:
                    name = f"blocks.{r['layer']}.attn.hook_{r['input']}"

                    def keep(act, hook, name=name):
                        recorded[name] = act.clone()
                        return act

                    record.append((name, keep))
                with torch.no_grad():
                    model.run_with_hooks(base, fwd_hooks=freeze + record)
                patch = []
                for r in live:
                    name = f"blocks.{r['layer']}.attn.hook_{r['input']}"

                    def put(act, hook, name=name, head=r["head"]):
                        act = act.clone()
                        g = head // (n_heads // act.shape[2])  # a query head's k/v input: its group's head
                        act[:, :, g] = recorded[name][:, :, g]
                        return act

                    patch.append((name, put))
                with torch.no_grad():
                    out[L, h] += float(score(model, base, pair, "logit_diff", patch))
    return out / len(pairs)


def resample_draws(pool_size: int, index: int, seed: int, draws: int, exclude: set[int]) -> list[int]:
    """Resample ablation's draws for prompt ``index``, written from engine/reference.py's docstring
    (not its code): ``random.Random(seed * 1_000_003 + index)``; the first draw is ``choice`` of the
    allowed prompts, then ``sample`` of the others, cycled to ``draws``."""
    allowed = [j for j in range(pool_size) if j not in exclude]
    rng = random.Random(seed * 1_000_003 + index)
    first = rng.choice(allowed)
    order = [first] + rng.sample([j for j in allowed if j != first], len(allowed) - 1)
    return [order[k % len(order)] for k in range(draws)]
