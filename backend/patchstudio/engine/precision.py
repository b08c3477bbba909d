"""Device, dtype and what they imply: the noise floor of a metric, warnings, chunk sizes.

In float32 the engine's values equal TransformerLens's to about 1e-6. In bfloat16 or float16 every
activation is rounded to 8 or 11 significant bits, so a logit of size L carries an error of a few
``eps * L`` (eps = 2^-7 for bfloat16, 2^-10 for float16). ``noise_floor`` is that estimate,
``NOISE_ULPS * eps * L`` with L the largest final-position logit of the clean runs; a result in
half precision whose clean-corrupted gap, or some cells' effects, are below it carries a warning.
It is a bound, not a typical error: in bfloat16 the five test families' patching values differed
from float32 by at most 2.6 eps L (tests/engine/test_precision.py checks one of them).
"""

from __future__ import annotations

import torch

NOISE_ULPS = 4.0
HALF = (torch.bfloat16, torch.float16)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Automatic chunk size on CUDA: the share of free device memory one chunk's forward pass may take.
CUDA_MEMORY_SHARE = 0.5
MAX_AUTO_ROWS = 4096
CPU_CHUNK_ROWS = 256


def model_dtype(model) -> torch.dtype:
    return model.W_U.dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def model_device(model) -> torch.device:
    return model.W_U.device


def noise_floor(model, scale: float) -> float:
    """The rounding noise of a logit of size ``scale`` in the model's dtype."""
    return NOISE_ULPS * torch.finfo(model_dtype(model)).eps * max(abs(scale), 1.0)


def metric_noise(model, metric: str, logit_scale: float, prob_scale: float = 1.0) -> float:
    """The noise floor in the metric's units: logits' for logit differences, log-probabilities and
    KL; times the probability for ``prob``."""
    noise = noise_floor(model, logit_scale)
    return noise * prob_scale if metric == "prob" else noise


def precision_warnings(model, noise: float, gap: float, effects: torch.Tensor) -> list[str]:
    """Warnings for a result in half precision (none in float32): a clean-corrupted gap or cell
    effects within the dtype's noise."""
    dtype = model_dtype(model)
    if dtype not in HALF:
        return []
    name = dtype_name(dtype)
    out = []
    if abs(gap) < noise:
        out.append(
            f"the clean-corrupted gap ({abs(gap):.3g}) is within {name}'s rounding noise (about ±{noise:.2g} here): "
            f"the baselines cannot be told apart; run in float32 (PATCHSTUDIO_DTYPE=float32)"
        )
    flat = effects.reshape(-1).float()
    small = int((flat.abs() < noise).sum())
    if small:
        out.append(
            f"{small} of {flat.numel()} cells have effects within {name}'s rounding noise (about ±{noise:.2g} here): "
            f"their signs and ranking are not meaningful; run in float32 (PATCHSTUDIO_DTYPE=float32) to read them"
        )
    return out


def auto_chunk_rows(model, seq_len: int, full_vocab: bool, tail: int = 1) -> int:
    """Rows per forward pass. On CUDA: as many as fit in a share of the free device memory (an
    estimate of one row's peak activations: a block's streams, its attention scores and the MLP, plus
    the logits a full-vocabulary metric needs); elsewhere ``CPU_CHUNK_ROWS``."""
    device = model_device(model)
    if device.type != "cuda" or not torch.cuda.is_available():
        return CPU_CHUNK_ROWS
    free, _ = torch.cuda.mem_get_info(device)
    cfg = model.cfg
    elt = torch.finfo(model_dtype(model)).bits // 8
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * cfg.d_model)
    per_row = seq_len * elt * (8 * int(cfg.d_model) + 3 * d_mlp + 3 * int(cfg.n_heads) * seq_len)
    if full_vocab:
        per_row += 2 * 4 * tail * int(cfg.d_vocab)
    return int(max(1, min(MAX_AUTO_ROWS, CUDA_MEMORY_SHARE * free // max(per_row, 1))))
