"""The logit lens: the metric read off every layer's residual stream, at every position.

nostalgebraist (2020) read a model's intermediate residual stream as if it were the last one: the
final norm (with the scale it would compute for that vector) and the unembedding applied to it give
"what the model would predict if it stopped here". Here the metric is read that way for every layer
and position of one run (clean or corrupted, the spec's ``run``):

    cell (layer, pos) = metric(unembed(ln_final(resid_pre[layer][pos])))    for layer < n_layers
    cell (n_layers, pos) = the run's own metric at that position             (the final residual stream)

with the metric's answer and wrong tokens at every position (the logit difference and P(answer)
that position would give them) and, for ``kl``, KL(the clean run's own distribution at that
position || the lens's). The last row is the model's own output; its final cell is the run's metric.
Soft-capped models (Gemma 2) are read with their cap, as their logits are.

What it cannot show: the model never applies its final norm and unembedding to an intermediate
layer, so an early row can read as "no preference" while the information is there in a form the
unembedding does not read (Belrose et al. 2023's tuned lens learns that map instead). It is a
reading of one run, not an intervention: its cells say nothing about cause.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.methods.base import Method, PairContext, PairResult
from patchstudio.engine.metrics import NEEDS_FULL_VOCAB
from patchstudio.specs import Component, OneComponentSpec

# Which run a reading reads.
ReadRun = Literal["clean", "corrupted"]
LOGITS_PER_CHUNK = 1 << 24  # full-vocabulary logits (floats) read at once: 64 MB in float32


class LogitLensSpec(OneComponentSpec):
    """The metric read through the final norm and the unembedding at every layer's residual stream
    (before each layer, and after the last) and every position of the ``run`` (clean or corrupted)."""

    what: ClassVar[str] = "the logit lens reads the residual stream before each layer (and after the last)"
    only: ClassVar[str] = "resid_pre"
    method: Literal["logit_lens"] = "logit_lens"
    component: Component = "resid_pre"
    run: ReadRun = "clean"


def stream_names(n_layers: int) -> list[str]:
    """The rows' hooks: each layer's resid_pre, then the final residual stream (last resid_post)."""
    return [H.resid_pre_name(layer) for layer in range(n_layers)] + [H.resid_post_name(n_layers - 1)]


def read_cache(ctx: PairContext) -> dict[str, Tensor]:
    """The cache of the run a reading reads (the spec's ``run``)."""
    return ctx.clean_cache if ctx.spec.run == "clean" else ctx.corrupted_cache


def lens(ctx: PairContext) -> Tensor:
    """[(n_layers + 1) * pos]: the metric read at each row and position, row-major."""
    model, spec = ctx.model, ctx.spec
    cache = read_cache(ctx)
    names = stream_names(int(model.cfg.n_layers))
    stream = torch.stack([cache[name][0] for name in names])  # [rows, pos, d_model]
    n_pos = stream.shape[1]
    rows = stream.reshape(-1, stream.shape[-1])
    readout = ctx.readout()
    with torch.no_grad():
        if spec.metric not in NEEDS_FULL_VOCAB:
            return readout(rows).float().cpu()
        # every position's own distribution: each row's logits over the whole vocabulary, in chunks
        own = readout.logits(ctx.clean_cache[names[-1]][0]).float().log_softmax(-1)  # [pos, vocab]: KL's reference
        step = max(n_pos, LOGITS_PER_CHUNK // int(model.cfg.d_vocab) // n_pos * n_pos)  # whole layers per chunk
        out = []
        for start in range(0, rows.shape[0], step):
            log_probs = readout.logits(rows[start:start + step]).float().log_softmax(-1)  # [k * pos, vocab]
            if spec.metric == "kl":
                clean = own.repeat(log_probs.shape[0] // n_pos, 1)
                out.append((clean.exp() * (clean - log_probs)).sum(-1))
            else:
                answer = log_probs[:, ctx.pair.answer]
                out.append(answer.exp() if spec.metric == "prob" else -answer)
        return torch.cat(out).cpu()


def run_pair(ctx: PairContext) -> PairResult:
    values = lens(ctx)
    ctx.progress(values.numel())
    return PairResult(values)


def n_rows(model) -> int:
    return int(model.cfg.n_layers) + 1


def title(spec, unit: str) -> str:
    """The cells' title: what they are and where the colour scale is white."""
    return f"{unit} read through the final norm and unembedding ({spec.run} run); white = 0"


METHOD = Method(
    spec=LogitLensSpec,
    run_pair=run_pair,
    baseline=lambda spec, clean, corrupted: 0.0,  # white: no preference (logit diff), nothing (prob, KL)
    cost=lambda model, spec, seq_len: n_rows(model) * seq_len,  # rows of one readout
    axes=lambda model, spec, seq_len: (["layer", "pos"], [n_rows(model), seq_len]),
    cache_names=lambda model, spec: stream_names(int(model.cfg.n_layers)),
    same_length=lambda spec: True,  # one position axis across the prompt set
    evidence=lambda spec: (
        f"logit lens of the {spec.run} run: each layer's residual stream read through the final norm (its scale "
        f"recomputed for that vector) and the unembedding, a reading the model itself never makes before its last "
        f"layer; not an intervention"
    ),
    default_view="raw",
    reads_run=title,
    references=("nostalgebraist 2020", "Belrose et al. 2023"),
)
