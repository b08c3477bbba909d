"""Reading a direct logit attribution: every part of the final residual stream, in one list. Pure.

The result's cells are the heads; its ``extras`` hold the other parts (``engine.methods.
logit_attribution``). Here they come together in the stream's order: the embeddings, then each
layer's attention (its heads plus its output bias) and MLP, then the final norm's and the
unembedding's biases; with their sum and the run's logit difference, which it must equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from patchstudio.results import PatchResult


@dataclass(frozen=True)
class Part:
    name: str  # 'token embedding', 'L2 attention', 'L2 MLP', 'final norm bias', ...
    kind: str  # 'embedding', 'attention', 'mlp' or 'bias'
    value: float  # direct contribution to the logit difference (mean over the prompts)


@dataclass(frozen=True)
class LogitParts:
    parts: list[Part]
    total: float  # the parts' sum (bias terms included)
    metric: float  # the run's logit difference: what the parts must add up to
    largest_miss: float  # over the prompts, the largest |sum - logit difference|
    adds_up: bool
    scale: float | None  # the final norm's frozen scale (mean over the prompts); None: no final norm
    run: str  # 'clean' or 'corrupted'


def logit_parts(result: PatchResult) -> LogitParts:
    """A direct logit attribution's parts in the residual stream's order (raises ValueError for another method)."""
    if result.spec.method != "logit_attribution" or not result.extras:
        raise ValueError(f"this run's method is {result.spec.method}: its parts are a direct logit attribution's")
    x = result.extras
    parts = [Part("token embedding", "embedding", x["embed"])]
    if x["pos_embed"] is not None:
        parts.append(Part("position embedding", "embedding", x["pos_embed"]))
    for layer, heads in enumerate(result.values):
        attention = sum(heads) + (x["attn_bias"][layer] if x["attn_bias"] is not None else 0.0)
        parts += [Part(f"L{layer} attention", "attention", attention), Part(f"L{layer} MLP", "mlp", x["mlp"][layer])]
    parts += [Part("final norm bias", "bias", x["norm_bias"]), Part("unembedding bias", "bias", x["unembed_bias"])]
    return LogitParts(parts, x["total"], x["metric"], x["largest_miss"], x["adds_up"], x["scale"], result.spec.run)
