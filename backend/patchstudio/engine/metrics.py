"""Metrics read at the final position: what a patching result measures.

A result stated without its metric is incomplete (the metric sets the scope of the causal claim),
so every metric here is named in the spec and reported with the result.

- ``logit_diff``: logit(answer) - logit(wrong)  (Wang et al. 2022's IOI metric)
- ``normalized_logit_diff``: (x - corrupted) / (clean - corrupted), with the clean and corrupted
  logit differences averaged over the prompt set: 0 = corrupted behaviour, 1 = clean behaviour
- ``prob``: softmax probability of the answer
- ``loss``: -log P(answer)
- ``kl``: KL(clean distribution || run distribution)

Logits are the model's own: after the final norm and the unembedding, and, for models with final
logit soft-capping (Gemma 2), after ``cap * tanh(logits / cap)``.

**Answers of several tokens** are scored by teacher-forced sequence log-probability: the answer's
tokens are fed after the prompt and S(answer) = sum_j log P(answer_j | prompt, answer_<j).
Then ``logit_diff`` = S(answer) - S(wrong) (for one-token answers this *is* the logit difference:
the softmax normaliser cancels), ``prob`` = exp S(answer) (the product of the token probabilities),
``loss`` = -S(answer), and ``kl`` stays the next-token KL at the prompt's final position.

A ``Readout`` turns final-position residual vectors into the metric, computing only the logits it
needs: two unembedding columns for the logit difference (soft-capping is elementwise, so it
applies to the two columns alike), the full vocabulary only for the metrics that normalise over
it. A ``Leg`` is one teacher-forced continuation and its readout; a sweep over one-token answers
has one leg, the prompt itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from patchstudio.engine.profile import apply_soft_cap, final_logits, model_lock, profile
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
        self._cap = profile(self.model).soft_cap
        if self.metric not in NEEDS_FULL_VOCAB:
            w_u, b_u = self.model.W_U, getattr(self.model, "b_U", None)
            ids = torch.tensor([self.answer, self.wrong], device=w_u.device)
            bias = b_u[ids] if b_u is not None else torch.zeros(2, device=w_u.device, dtype=w_u.dtype)
            self._cols = (w_u[:, ids].detach().clone(), bias.detach().clone())

    def logits(self, resid: Float[Tensor, "rows d_model"]) -> Tensor:
        """Final-position logits; only the answer and wrong columns when that is all the metric reads.

        Holds the model's lock: ``ln_final`` fires its hook points, where another thread's hooked
        pass (self-repair caches ``ln_final.hook_scale``) may have hooks attached."""
        with model_lock(self.model):
            if self._cols is None:
                return final_logits(self.model, resid, self._cap)
            w, b = self._cols
            return apply_soft_cap(self.model.ln_final(resid) @ w + b, self._cap)  # columns: 0 = answer, 1 = wrong

    def __call__(self, resid: Float[Tensor, "rows d_model"]) -> Float[Tensor, "rows"]:
        logits = self.logits(resid).float()  # half-precision logits: the metric itself in float32
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

@dataclass
class SequenceLogProb:
    """Residual vectors at the last ``len(ids)`` positions of a teacher-forced run -> the summed
    log-probability of ``ids`` (position j predicts ids[j])."""

    model: object
    ids: tuple[int, ...]

    def __call__(self, resid: Tensor) -> Tensor:
        if resid.ndim == 2:  # one position: [rows, d_model]
            resid = resid[:, None, :]
        with model_lock(self.model):
            logits = final_logits(self.model, resid, profile(self.model).soft_cap)
        log_probs = logits.float().log_softmax(-1)  # [rows, tail, vocab]
        ids = torch.tensor(self.ids, device=log_probs.device)
        return log_probs[:, torch.arange(len(self.ids), device=log_probs.device), ids].sum(-1)


@dataclass(frozen=True)
class Leg:
    """One forward pass per patch: the prompt followed by ``suffix`` (teacher forcing), read at
    its last ``len(suffix) + 1`` positions by ``readout``."""

    suffix: tuple[int, ...]
    readout: Callable[[Tensor], Tensor]

    @property
    def tail(self) -> int:
        return len(self.suffix) + 1


def sequence_legs(model, metric: str, answer_ids: Sequence[int], wrong_ids: Sequence[int]) -> tuple[list[Leg], Callable[[list[Tensor]], Tensor]]:
    """The legs that score a multi-token answer under ``metric``, and how to combine their values."""
    answer = Leg(tuple(answer_ids[:-1]), SequenceLogProb(model, tuple(answer_ids)))
    if metric in ("logit_diff", "normalized_logit_diff"):
        wrong = Leg(tuple(wrong_ids[:-1]), SequenceLogProb(model, tuple(wrong_ids)))
        return [answer, wrong], lambda v: v[0] - v[1]
    if metric == "prob":
        return [answer], lambda v: v[0].exp()
    if metric == "loss":
        return [answer], lambda v: -v[0]
    raise ValueError(f"{metric!r} does not score answers as sequences")


def scores_sequences(metric: str, pair) -> bool:
    """Whether a pair is scored by sequence log-probability (some answer has several tokens; the
    KL metric never reads the answers)."""
    return pair.multi_token and metric != "kl"


def n_legs(metric: str, pair) -> int:
    """Forward passes per patch for this pair."""
    if not scores_sequences(metric, pair):
        return 1
    return 2 if metric in ("logit_diff", "normalized_logit_diff") else 1


def sequence_metric(model, metric: str, prompt: Tensor, answer_ids: Sequence[int], wrong_ids: Sequence[int]) -> float:
    """The multi-token metric of an unpatched prompt, from the model's own full forward passes."""

    def score(ids: Sequence[int]) -> Tensor:
        tokens = torch.cat([prompt, torch.tensor([list(ids[:-1])], dtype=prompt.dtype, device=prompt.device)], dim=1)
        with model_lock(model), torch.no_grad():
            logits = model(tokens)
        log_probs = logits[0, -len(ids):].float().log_softmax(-1)
        return log_probs[torch.arange(len(ids)), torch.tensor(list(ids), device=log_probs.device)].sum()

    if metric in ("logit_diff", "normalized_logit_diff"):
        return float(score(answer_ids) - score(wrong_ids))
    if metric == "prob":
        return float(score(answer_ids).exp())
    if metric == "loss":
        return float(-score(answer_ids))
    raise ValueError(f"{metric!r} does not score answers as sequences")


def check_readout(model) -> None:
    """The engine's readout (final norm, unembedding, soft cap) reproduces the model's own
    final-position logits (found once per model: ``ModelProfile.readout_ok``). An architecture
    with another step there (a logit scale, another cap) is refused instead of read silently wrong."""
    found = profile(model)
    if not found.readout_ok:
        raise InputError(
            f"{architecture(model)} is not supported: the engine reads logits as final norm -> unembedding -> "
            f"soft-cap, which differs from this model's own logits by {found.readout_diff:.3g}; results would be "
            f"wrong, so none are computed",
            field="model",
        )


def architecture(model) -> str:
    """The model's architecture as Hugging Face names it (GPT2LMHeadModel, ...), or its config's name."""
    arch = getattr(model.cfg, "architecture", None)
    return str(arch) if arch else "this model"


def normalize(values: Tensor, clean: float, corrupted: float) -> Tensor:
    """(x - corrupted) / (clean - corrupted): 0 = corrupted behaviour, 1 = clean behaviour."""
    check_gap(clean, corrupted)
    return (values - corrupted) / (clean - corrupted)
