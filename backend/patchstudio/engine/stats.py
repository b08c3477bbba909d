"""Spread over the prompt set: standard deviation and a bootstrap interval for every cell.

A result's ``values`` are means over the prompt set; these say how much they rest on:

- ``std``: the sample standard deviation of the per-prompt values (n - 1 in the denominator);
  0 for a single prompt, where no spread can be measured.
- ``ci_low``, ``ci_high``: a 95% percentile bootstrap interval of the mean. ``BOOTSTRAP_RESAMPLES``
  resamples of the prompts (n prompts drawn with replacement, the same draws for every cell), with
  a fixed seed (``BOOTSTRAP_SEED``), so a spec always gets the same interval; the interval is the
  2.5th and 97.5th percentiles (linear interpolation) of the resampled means. For a single prompt
  every resample is that prompt and the interval collapses to its value. With few prompts the
  interval is narrower than the truth (the bootstrap cannot see what the prompts do not show).
"""

from __future__ import annotations

import torch
from torch import Tensor

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
_QUANTILE_MAX = 1 << 24  # torch.quantile's input limit, in elements


def spread(per_prompt: Tensor, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[Tensor, Tensor, Tensor]:
    """(std, ci_low, ci_high) per cell of ``per_prompt`` [n prompts, cells], each [cells]."""
    x = per_prompt.detach().double().reshape(per_prompt.shape[0], -1)
    n, cells = x.shape
    std = x.std(dim=0, correction=1) if n > 1 else torch.zeros(cells, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (resamples, n), generator=generator)
    weights = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(1, draws, torch.ones(resamples, n, dtype=torch.float64))
    means = (weights / n) @ x  # [resamples, cells]: each resample's mean
    q = torch.tensor([(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2], dtype=torch.float64)
    step = max(1, _QUANTILE_MAX // resamples)
    bounds = torch.cat([torch.quantile(means[:, i : i + step], q, dim=0) for i in range(0, cells, step)], dim=1)
    return std, bounds[0], bounds[1]
