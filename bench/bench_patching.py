"""Benchmark: the engine against transformer_lens.patching, in one process, on one model.

Builds a random GPT-2-small-shaped model offline (12 layers, 12 heads, d_model 768, d_vocab 50257)
and a 16-token prompt pair, then times three sweeps with each implementation and prints the
ratio (TL time / engine time) and the largest absolute difference between their values.

    python bench/bench_patching.py [--threads N] [--repeat R] [--quick]

Not a test: timings depend on the machine. The README records the numbers measured.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch
import transformer_lens.patching as tlp
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerFast

from patchstudio.engine import hooks as H
from patchstudio.engine.methods.attribution_patching import attribution_sweep
from patchstudio.engine.metrics import Readout
from patchstudio.engine.run import run

D_VOCAB = 50257


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


def prompt_pair(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    words = [f"t{int(i)}" for i in torch.randint(2, D_VOCAB, (15,), generator=g)]
    corrupted = list(words)
    corrupted[3], corrupted[9] = "t1234", "t4321"
    return {"clean": " ".join(words), "corrupted": " ".join(corrupted), "answer": "t777", "wrong": "t888"}


def timed(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=1, help="best of R runs for each timing")
    parser.add_argument("--layers", type=int, default=12, help="fewer layers for a quick check")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build_model(n_layers=args.layers)
    pair = prompt_pair()
    clean, corrupted = model.to_tokens(pair["clean"]), model.to_tokens(pair["corrupted"])
    answer = int(model.to_tokens(" t777", prepend_bos=False)[0, 0])
    wrong = int(model.to_tokens(" t888", prepend_bos=False)[0, 0])
    assert clean.shape[1] == 16, clean.shape
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)

    def metric(logits):
        return logits[:, -1, answer] - logits[:, -1, wrong]

    cases = [
        ("head sweep, all positions", tlp.get_act_patch_attn_head_out_all_pos, "head", "all", None),
        ("head sweep, per position", tlp.get_act_patch_attn_head_out_by_pos, "head", "each", None),
        ("resid_pre, per position", tlp.get_act_patch_resid_pre, "resid_pre", "each", None),
    ]
    print(f"model: GPT-2-small shape ({args.layers} layers, 12 heads, d_model 768, d_vocab {D_VOCAB}), random weights")
    print(f"prompt: 16 tokens; torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    print(f"{'sweep':28} {'patches':>8} {'TL s':>9} {'engine s':>9} {'ratio':>7} {'max |diff|':>11}")
    for label, tl_fn, component, positions, _ in cases:
        spec = {"prompts": [pair], "component": component, "positions": positions}
        with torch.no_grad():
            tl_time, tl_values = timed(lambda: tl_fn(model, corrupted, clean_cache, lambda l: metric(l).mean()), args.repeat)
        engine_time, result = timed(lambda: run(model, spec), args.repeat)
        diff = (torch.tensor(result.values) - tl_values).abs().max().item()
        print(f"{label:28} {tl_values.numel():8d} {tl_time:9.2f} {engine_time:9.2f} {tl_time / engine_time:6.1f}x {diff:11.2e}", flush=True)

    # Attribution patching: every head from one forward and one backward pass on the base run,
    # the source activations coming from the run's cache. Target: at most 3 forward passes' time.
    names = H.source_hooks("head", model.cfg.n_layers)
    with torch.no_grad():
        _, corrupted_cache = model.run_with_cache(corrupted, names_filter=names)
    readout = Readout(model, "logit_diff", answer, wrong)
    with torch.no_grad():
        forward_time, _ = timed(lambda: model(corrupted), max(3, args.repeat))
    attr_time, _ = timed(
        lambda: attribution_sweep(model, corrupted, corrupted_cache, clean_cache, "head", "all", readout), max(3, args.repeat)
    )
    print(f"attribution, all {args.layers * 12} heads: {attr_time:.3f} s = {attr_time / forward_time:.2f} forward passes "
          f"(one forward pass {forward_time:.3f} s)", flush=True)


if __name__ == "__main__":
    main()
