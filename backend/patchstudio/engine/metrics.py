"""Metrics read at the final position: what a patching result measures.

A result stated without its metric is incomplete (the metric sets the scope of the causal claim),
so every metric here is named in the spec and reported with the result.

- ``logit_diff``: logit(answer) - logit(wrong)  (Wang et al. 2022's IOI metric)
- ``normalized_logit_diff``: (x - corrupted) / (clean - corrupted), with the clean and corrupted
  logit differences averaged over the prompt set: 0 = corrupted behaviour, 1 = clean behaviour
- ``prob``: softmax probability of the answer
- ``loss``: -log P(answer)
- ``kl``: KL(clean distribution || run distribution)

A ``Readout`` turns final-position residual vectors into the metric, computing only the logits it
needs: two unembedding columns for the logit difference, the full vocabulary only for the metrics
that normalise over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from patchstudio.engine.forward import model_lock
from patchstudio.errors import InputError

NEEDS_FULL_VOCAB = frozenset({"prob", "loss", "kl"})

# A clean-corrupted gap under this (in the metric's raw units) gets a warning: effects are read as
# shares of the gap, and a small gap makes them large and unstable. One logit for the logit
# difference (also for normalized_logit_diff, whose gap is a logit difference before normalising);
# for the others, about what a one-logit change moves when the answer is neither certain nor
# negligible: 0.05 of probability, 0.1 nats of loss or of KL divergence.
SMALL_GAP = {"logit_diff": 1.0, "normalized_logit_diff": 1.0, "prob": 0.05, "loss": 0.1, "kl": 0.1}
GAP_UNITS = {"logit_diff": "logits", "normalized_logit_diff": "logits", "prob": "of probability", "loss": "nats", "kl": "nats"}
ZERO_GAP = 1e-6  # normalized_logit_diff is undefined under this gap
ZERO_GRADIENT = 1e-9  # a metric gradient (max abs) under this is zero


def zero_gradient(metric: str, at_clean_run: bool, largest_gradient: float) -> bool:
    """Whether the metric's gradient at a run is zero, so first-order estimates there say nothing:
    KL(clean || run) at the clean run itself is at its minimum, where the gradient vanishes
    (numerically it is float noise, ~1e-8, not 0); any other gradient counts as zero when its
    largest absolute value is under ``ZERO_GRADIENT``."""
    return (metric == "kl" and at_clean_run) or largest_gradient < ZERO_GRADIENT


def logits_metric(
    metric: str,
    logits: Float[Tensor, "rows vocab"],
    answer: int,
    wrong: int,
    clean_log_probs: Float[Tensor, "vocab"] | None = None,
) -> Float[Tensor, "rows"]:
    """The raw (unnormalised) metric of final-position logits, one value per row."""
    if metric in ("logit_diff", "normalized_logit_diff"):
        return logits[:, answer] - logits[:, wrong]
    log_probs = logits.log_softmax(dim=-1)
    if metric == "prob":
        return log_probs[:, answer].exp()
    if metric == "loss":
        return -log_probs[:, answer]
    if metric == "kl":
        assert clean_log_probs is not None
        return (clean_log_probs.exp() * (clean_log_probs - log_probs)).sum(dim=-1)
    raise ValueError(f"unknown metric {metric!r}")


@dataclass
class Readout:
    """Final-position residual -> metric value, for one prompt."""

    model: object
    metric: str
    answer: int
    wrong: int
    clean_log_probs: Tensor | None = None

    def __post_init__(self) -> None:
        self._cols: tuple[Tensor, Tensor] | None = None
        cfg = self.model.cfg
        soft_cap = float(getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0)
        if self.metric not in NEEDS_FULL_VOCAB and soft_cap <= 0:
            w_u, b_u = self.model.W_U, getattr(self.model, "b_U", None)
            ids = torch.tensor([self.answer, self.wrong], device=w_u.device)
            bias = b_u[ids] if b_u is not None else torch.zeros(2, device=w_u.device, dtype=w_u.dtype)
            self._cols = (w_u[:, ids].detach().clone(), bias.detach().clone())

    def logits(self, resid: Float[Tensor, "rows d_model"]) -> Tensor:
        """Final-position logits; only the answer and wrong columns when that is all the metric reads.

        Holds the model's lock: ``ln_final`` fires its hook points, where another thread's hooked
        pass (self-repair caches ``ln_final.hook_scale``) may have hooks attached."""
        with model_lock(self.model):
            normed = self.model.ln_final(resid)
            if self._cols is not None:
                w, b = self._cols
                return normed @ w + b  # columns: 0 = answer, 1 = wrong
            return self.model.unembed(normed)

    def __call__(self, resid: Float[Tensor, "rows d_model"]) -> Float[Tensor, "rows"]:
        logits = self.logits(resid)
        if self._cols is not None:
            return logits[:, 0] - logits[:, 1]
        return logits_metric(self.metric, logits, self.answer, self.wrong, self.clean_log_probs)


def check_gap(clean: float, corrupted: float) -> None:
    """normalized_logit_diff divides by the clean-corrupted gap: refuse (field ``metric``) a zero one."""
    if abs(clean - corrupted) < ZERO_GAP:
        raise InputError(
            f"normalized_logit_diff is undefined here: the clean and corrupted logit differences are "
            f"equal ({clean:.4f}); choose a corruption that changes the answer, or the logit_diff metric",
            field="metric",
        )


def normalize(values: Tensor, clean: float, corrupted: float) -> Tensor:
    """(x - corrupted) / (clean - corrupted): 0 = corrupted behaviour, 1 = clean behaviour."""
    check_gap(clean, corrupted)
    return (values - corrupted) / (clean - corrupted)
