"""Benchmark: the engine against two peers and the FLOP bound, in one process, on one model.

Builds a random GPT-2-small-shaped model offline (12 layers, 12 heads, d_model 768, d_vocab 50257)
and two 16-token prompt pairs: "random" (the prompts differ at positions 4 and 10) and
"IOI-shaped" (one name swapped at position 11, as an IOI sentence's second subject: the first
difference is late). For each sweep it times, interleaved and repeated (best of R):

- ``TL``: ``transformer_lens.patching`` (one full forward pass per patch, full logits);
- ``hand``: the sweep batched by hand the way a careful user would with ``run_with_hooks``: all
  patches of a layer as rows of a batch (chunks of 64 rows), a full forward pass each;
- ``engine``: ``patchstudio.engine.run.run`` on the spec (its clean and corrupted caches included);

and prints each ratio, the largest absolute difference from TL, and the engine's fraction of the
FLOP bound: the multiply-adds its plan cannot avoid (every patch's layers from its patch point
on, at the positions that can change; the final position only in the last MLP; the two cached
runs), at the matmul rate measured in this process ([2048 x 768] @ [768 x 3072], best of 5).

    python bench/bench_patching.py [--quick] [--threads N] [--repeat R] [--profile] [--pairs random,ioi]

``--quick`` times TL on a sample of 12 patches per sweep and the hand-batched peer on its first
batch (every TL patch is the same full forward pass, and every batch of the peer the same work)
and scales each to the whole sweep; without it both run in full. ``--profile`` prints a torch.profiler breakdown of the
engine's sweeps. Not a test: timings depend on the machine. The README records the numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import pandas as pd
import torch
import transformer_lens.patching as tlp
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerFast

from patchstudio.engine import hooks as H
from patchstudio.engine.allocator import keep_freed_memory
from patchstudio.engine.fast import block_stage, layer_flops, row_flops
from patchstudio.engine.methods.attribution_patching import attribution_sweep
from patchstudio.engine.metrics import Readout
from patchstudio.engine.patching import first_difference, site_spans
from patchstudio.engine.profile import profile as model_profile
from patchstudio.engine.run import run

D_VOCAB = 50257
SEQ = 16


def build_model(seed: int = 0, n_layers: int = 12) -> TransformerBridge:
    directory = tempfile.mkdtemp()
    vocab = {"<bos>": 0, "<unk>": 1, **{f"t{i}": i for i in range(2, D_VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>").save_pretrained(directory)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    cfg = TransformerBridgeConfig(
        d_model=768, d_head=64, n_layers=n_layers, n_heads=12, n_ctx=1024, d_vocab=D_VOCAB,
        act_fn="gelu_new", normalization_type="LN", seed=seed,
    )
    return TransformerBridge.boot_native(cfg, tokenizer=tokenizer).eval()


def prompt_pair(kind: str = "random", seed: int = 0) -> dict:
    """16 tokens with BOS. random: differs at positions 4 and 10; ioi: one swap at position 11."""
    g = torch.Generator().manual_seed(seed)
    words = [f"t{int(i)}" for i in torch.randint(2, D_VOCAB, (SEQ - 1,), generator=g)]
    corrupted = list(words)
    if kind == "random":
        corrupted[3], corrupted[9] = "t1234", "t4321"
    elif kind == "ioi":
        corrupted[10] = "t1234"  # "... when Mary and John ..., John (S2) gave ..." -> "..., Mary gave ..."
    else:
        raise ValueError(kind)
    return {"clean": " ".join(words), "corrupted": " ".join(corrupted), "answer": "t777", "wrong": "t888"}


# --- timing ---------------------------------------------------------------------------------------


def clock(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def matmul_rate(repeat: int = 5) -> float:
    """FLOP/s of a [2048 x 768] @ [768 x 3072] float32 matmul (an MLP-shaped product), best of ``repeat``."""
    a, b = torch.randn(2048, 768), torch.randn(768, 3072)
    torch.mm(a, b)
    best = min(clock(lambda: torch.mm(a, b))[0] for _ in range(repeat))
    return 2 * 2048 * 768 * 3072 / best


# --- the peers ------------------------------------------------------------------------------------

SWEEPS = {
    # name: (component, positions, TL patch setter, TL activation name, TL index axes)
    "head-all": ("head", "all", tlp.layer_head_vector_patch_setter, "z", ("layer", "head")),
    "head-each": ("head", "each", tlp.layer_pos_head_vector_patch_setter, "z", ("layer", "pos", "head")),
    "resid_pre-each": ("resid_pre", "each", tlp.layer_pos_patch_setter, "resid_pre", ("layer", "pos")),
}


def index_frame(model, axes, seq) -> pd.DataFrame:
    sizes = {"layer": model.cfg.n_layers, "head": model.cfg.n_heads, "pos": seq}
    grids = torch.cartesian_prod(*[torch.arange(sizes[a]) for a in axes]).reshape(-1, len(axes))
    return pd.DataFrame(grids.numpy(), columns=list(axes))


def tl_sweep(model, base, source_cache, metric, setter, activation, axes, sample: int | None):
    """(seconds for the whole sweep, flat indices timed, values there). With ``sample`` only that
    many evenly spread patches run and the time is scaled to the whole sweep."""
    frame = index_frame(model, axes, base.shape[1])
    idx = list(range(len(frame)))
    if sample is not None and sample < len(frame):
        step = len(frame) / sample
        idx = [int(i * step) for i in range(sample)]
    with torch.no_grad():
        seconds, values = clock(lambda: tlp.generic_activation_patch(
            model, base, source_cache, metric, patch_setter=setter, activation_name=activation,
            index_df=frame.iloc[idx].reset_index(drop=True)))
    return seconds * len(frame) / len(idx), idx, values.reshape(-1)


def hand_batched(model, base, source_cache, cols, component, positions, sample: bool, chunk: int = 64):
    """The sweep batched by hand with run_with_hooks: each layer's patches as rows of a batch (chunks
    of ``chunk`` rows), one full forward pass per chunk. Returns (seconds for the whole sweep,
    {flat index: value}). With ``sample`` only the first batch of layer 0 runs, and its time is
    scaled to the whole sweep (every batch but a last partial one is the same work)."""
    n_layers, n_heads, seq = model.cfg.n_layers, model.cfg.n_heads, base.shape[1]
    name_of = (lambda l: f"blocks.{l}.attn.hook_z") if component == "head" else (lambda l: f"blocks.{l}.hook_resid_pre")
    if component == "head":
        patches = [(None, h) for h in range(n_heads)] if positions == "all" else [(p, h) for p in range(seq) for h in range(n_heads)]
    else:
        patches = [(p, None) for p in range(seq)]
    answer, wrong = cols
    out, rows, start = {}, 0, time.perf_counter()
    for layer in range(1 if sample else n_layers):
        name, src = name_of(layer), source_cache[name_of(layer)]
        for k in range(0, chunk if sample else len(patches), chunk):
            part = patches[k : k + chunk]

            def patch(act, hook, part=part, src=src):
                for row, (p, h) in enumerate(part):
                    where = (row, slice(None) if p is None else p) + (() if h is None else (h,))
                    act[where] = src[(0,) + where[1:]]
                return act

            with torch.no_grad():
                logits = model.run_with_hooks(base.expand(len(part), -1), fwd_hooks=[(name, patch)])
            for row, value in enumerate((logits[:, -1, answer] - logits[:, -1, wrong]).tolist()):
                out[layer * len(patches) + k + row] = value
            rows += len(part)
    seconds = time.perf_counter() - start
    return seconds * n_layers * len(patches) / rows, out


# --- the FLOP bound -------------------------------------------------------------------------------


def bound_flops(model, sites, seq, same_before) -> float:
    """The FLOPs the exact sweep cannot avoid: each patch that can change the metric, from its patch
    point on, over the positions it can change (``fast.row_flops``), plus the two cached runs that
    ``run`` makes (every block, the logits at the final position only). Passes, row 0, hooks and
    copies are the engine's overhead."""
    cfg = model.cfg
    total = 0
    for site, span in zip(sites, site_spans(sites, seq)):
        if span is None or span[1] < same_before:
            continue
        total += row_flops(cfg, site.layer, block_stage(site.hook), max(span[0], same_before), seq)
    return total + 2 * full_forward_flops(model, seq, logit_positions=1)


def full_forward_flops(model, seq, logit_positions: int | None = None) -> float:
    """A whole forward pass; the unembedding at ``logit_positions`` (default: all, as TL runs it)."""
    cfg = model.cfg
    unembed = 2 * (seq if logit_positions is None else logit_positions) * cfg.d_model * cfg.d_vocab
    return sum(layer_flops(cfg, seq, seq) for _ in range(cfg.n_layers)) + unembed


def tl_flops(model, n_patches, seq) -> float:
    return n_patches * full_forward_flops(model, seq)


# --- profile --------------------------------------------------------------------------------------

CATEGORIES = [
    ("matmul (linear, attention)", ("addmm", "aten::mm", "bmm", "matmul", "linear", "baddbmm")),
    ("softmax, masks", ("softmax", "masked_fill", "triu", "tril")),
    ("layer norm", ("layer_norm",)),
    ("gelu", ("gelu", "tanh")),
    ("copies: cat, where, clone, expand", ("cat", "where", "clone", "copy_", "expand", "contiguous", "narrow", "slice", "index_put", "stack")),
]


def profile(fn, label: str) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        wall, _ = clock(fn)
    buckets = {name: 0.0 for name, _ in CATEGORIES}
    buckets["other ops"] = 0.0
    for evt in prof.key_averages():
        us = evt.self_cpu_time_total
        for name, keys in CATEGORIES:
            if any(k in evt.key for k in keys):
                buckets[name] += us
                break
        else:
            buckets["other ops"] += us
    ops = sum(buckets.values()) / 1e6
    print(f"\nprofile: {label}: {wall:.3f} s under the profiler")
    for name, us in buckets.items():
        print(f"  {name:36} {us / 1e6:7.3f} s  {100 * us / 1e6 / wall:5.1f}%")
    print(f"  {'python, hooks, bridge (wall - ops)':36} {wall - ops:7.3f} s  {100 * (wall - ops) / wall:5.1f}%")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3, help="best of R interleaved runs for each timing")
    parser.add_argument("--quick", action="store_true", help="sample TL (12 patches) and the hand-batched peer (one batch)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler breakdown of the engine's sweeps")
    parser.add_argument("--pairs", default="random,ioi")
    parser.add_argument("--sweeps", default=",".join(SWEEPS))
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="keep glibc's allocator defaults (the app and CLI call keep_freed_memory)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kept = False if args.malloc_defaults else keep_freed_memory()  # as the app does; every peer gets it
    load = os.getloadavg()[0]

    model = build_model()
    cfg = model.cfg
    print(f"model: GPT-2-small shape ({cfg.n_layers} layers, {cfg.n_heads} heads, d_model {cfg.d_model}, "
          f"d_vocab {D_VOCAB}), random weights; {SEQ}-token prompts")
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {load:.2f}; freed memory kept: {kept}; "
          f"{'quick (TL: 12 patches, hand: one batch, scaled)' if args.quick else 'full'}; best of {args.repeat}")
    print("bound: the engine's unavoidable FLOPs at the matmul rate measured between the repeats; "
          "GFLOP: TL's and the bound's; load: 1-minute load average after the row")
    print(f"{'pair':7} {'sweep':15} {'patches':>7} {'TL s':>8} {'hand s':>7} {'engine s':>8} {'xTL':>6} "
          f"{'xhand':>6} {'bound s':>7} {'%bound':>6} {'GFLOP TL/bound':>15} {'GFLOP/s':>7} {'|diff|':>8} {'load':>5}")
    for kind in args.pairs.split(","):
        pair = prompt_pair(kind)
        clean, corrupted = model.to_tokens(pair["clean"]), model.to_tokens(pair["corrupted"])
        assert clean.shape[1] == SEQ, clean.shape
        answer = int(model.to_tokens(" t777", prepend_bos=False)[0, 0])
        wrong = int(model.to_tokens(" t888", prepend_bos=False)[0, 0])
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean)

        def metric(logits):
            return (logits[:, -1, answer] - logits[:, -1, wrong]).mean()

        for label in args.sweeps.split(","):
            component, positions, setter, activation, axes = SWEEPS[label]
            spec = {"prompts": [pair], "component": component, "positions": positions}
            sites, _, _ = H.sites(model, component, positions, SEQ)
            n_patches = len(sites)
            times: dict[str, list[float]] = {"tl": [], "hand": [], "engine": [], "rate": []}
            for _ in range(args.repeat):  # interleaved: the machine's load hits all of them alike
                times["rate"].append(matmul_rate())
                t, idx, tl_values = tl_sweep(model, corrupted, clean_cache, metric, setter, activation, axes,
                                             12 if args.quick else None)
                times["tl"].append(t)
                t, hand = hand_batched(model, corrupted, clean_cache, (answer, wrong), component, positions, args.quick)
                times["hand"].append(t)
                t, result = clock(lambda: run(model, spec))
                times["engine"].append(t)
            engine = torch.tensor(result.values).reshape(-1)
            diff = float((engine[idx] - tl_values).abs().max())
            hand_idx = list(hand)
            diff = max(diff, float((engine[hand_idx] - torch.tensor([hand[i] for i in hand_idx])).abs().max()))
            tl_t, hand_t, eng_t = (min(times[k]) for k in ("tl", "hand", "engine"))
            rate = max(times["rate"])
            flops = bound_flops(model, sites, SEQ, first_difference(clean, corrupted))
            bound = flops / rate
            print(f"{kind:7} {label:15} {n_patches:7d} {tl_t:8.2f} {hand_t:7.2f} {eng_t:8.3f} {tl_t / eng_t:5.1f}x "
                  f"{hand_t / eng_t:5.1f}x {bound:7.3f} {100 * bound / eng_t:5.0f}% "
                  f"{tl_flops(model, n_patches, SEQ) / 1e9:7.0f}/{flops / 1e9:<7.1f} {rate / 1e9:7.1f} {diff:8.1e} "
                  f"{os.getloadavg()[0]:5.2f}", flush=True)
            if args.profile:
                profile(lambda: run(model, spec), f"{kind} pair, {label}")

    # Attribution patching: every head from one forward and one backward pass on the base run,
    # the source activations coming from the run's cache. Target: at most 1.5 forward passes' time.
    pair = prompt_pair("random")
    clean, corrupted = model.to_tokens(pair["clean"]), model.to_tokens(pair["corrupted"])
    answer = int(model.to_tokens(" t777", prepend_bos=False)[0, 0])
    wrong = int(model.to_tokens(" t888", prepend_bos=False)[0, 0])
    # the base run caches its keys and values too (as the app's runs do): the pass covers only the
    # positions from the first difference on
    names = H.source_hooks("head", cfg.n_layers) + model_profile(model).kv_names
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=names)
        _, corrupted_cache = model.run_with_cache(corrupted, names_filter=names)
    kv = {name: corrupted_cache[name] for name in model_profile(model).kv_names}
    same_before = first_difference(clean, corrupted)
    readout = Readout(model, "logit_diff", answer, wrong)
    fwd, attr = [], []
    for _ in range(max(5, args.repeat)):
        with torch.no_grad():
            fwd.append(clock(lambda: model(corrupted))[0])
        attr.append(clock(lambda: attribution_sweep(model, corrupted, corrupted_cache, clean_cache, "head", "all", readout,
                                                    same_before=same_before, kv=kv))[0])
    print(f"attribution, all {cfg.n_layers * cfg.n_heads} heads (random pair, first difference at {same_before}): "
          f"{min(attr):.3f} s = {min(attr) / min(fwd):.2f} forward "
          f"passes (one forward pass {min(fwd):.3f} s; medians {statistics.median(attr):.3f} / {statistics.median(fwd):.3f})")
    print(f"suffix passes supported on this model: {model_profile(model).suffix_supported(corrupted.shape[-1])}; load average at the end "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
