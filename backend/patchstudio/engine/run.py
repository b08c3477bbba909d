"""run(model, spec) -> result: dispatch on ``spec.method``."""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

import torch

from patchstudio.engine import hooks as H
from patchstudio.engine.ablation import ablation_values
from patchstudio.engine.attribution import attribution_sweep
from patchstudio.engine.path_patching import path_patch_sweep
from patchstudio.engine.self_repair import self_repair
from patchstudio.engine.influence import input_influence
from patchstudio.engine.inputs import InputError, PreparedPair, prepare_pairs
from patchstudio.engine.metrics import Readout, logits_metric, normalize
from patchstudio.engine.patching import model_lock, patch_sweep
from patchstudio.results import ModelInfo, PatchResult, PromptTokens, to_nested
from patchstudio.specs import (
    AblationSpec,
    ActivationPatchingSpec,
    AttributionPatchingSpec,
    InputInfluenceSpec,
    PathPatchingSpec,
    SelfRepairSpec,
    parse_spec,
)

ProgressFn = Callable[[int, int], None]

DEFAULT_CHUNK_ROWS = 256


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("patchstudio", "transformer-lens", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            out[pkg] = "unknown"
    return out


def count_patched_runs(model, spec: Any, seq_lens: list[int]) -> int:
    """How many patched forward rows a spec needs (its cost), given each prompt's token length."""
    spec = parse_spec(spec)
    if isinstance(spec, (AttributionPatchingSpec, InputInfluenceSpec)):  # one forward+backward pass (x steps)
        return len(seq_lens) * spec.steps
    return sum(len(H.sites(model, spec.component, spec.positions, t)[0]) for t in seq_lens)


def _cache(model, tokens, names: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    with model_lock(model), torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=names)
    return logits[:, -1, :].float(), {name: cache[name] for name in names}


def run(
    model,
    spec: Any,
    *,
    model_name: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    max_patched_runs: int | None = None,
    progress: ProgressFn | None = None,
) -> PatchResult:
    """Run an experiment spec (object, dict or JSON) on ``model`` (any TransformerBridge).

    ``max_patched_runs`` bounds the sweep's cost (prompts x patches); ``progress(done, total)`` is
    called after each batch, and may raise to cancel.
    """
    start = time.perf_counter()
    spec = parse_spec(spec)
    if model.training:
        model.eval()  # patching compares deterministic passes; dropout would break that
    n_layers = int(model.cfg.n_layers)
    is_ablation = isinstance(spec, AblationSpec)
    is_ablation = is_ablation or isinstance(spec, SelfRepairSpec)
    same_length = spec.positions == "each" or (is_ablation and spec.ablation != "zero")
    pairs = prepare_pairs(model, spec.prompts, same_length=same_length)

    lengths = [p.clean.shape[-1] for p in pairs]
    total = count_patched_runs(model, spec, lengths)
    if max_patched_runs is not None and total > max_patched_runs:
        raise InputError(
            f"this sweep needs {total:,} patched runs ({len(pairs)} prompt(s) x "
            f"{total // len(pairs):,} patches), over the budget of {max_patched_runs:,}; use fewer prompts, "
            f"positions 'all', or raise the budget (PATCHSTUDIO_MAX_PATCHED_RUNS)",
            field="prompts",
        )

    if isinstance(spec, SelfRepairSpec):
        for r in [*spec.targets, *([spec.compensator] if spec.compensator else [])]:
            if r.layer >= n_layers or r.head >= int(model.cfg.n_heads):
                raise InputError(
                    f"head L{r.layer} H{r.head} does not exist: the model has {n_layers} layers of "
                    f"{int(model.cfg.n_heads)} heads",
                    field="targets",
                )
    if isinstance(spec, PathPatchingSpec):
        for r in spec.receivers:
            if r.layer >= n_layers or r.head >= int(model.cfg.n_heads):
                raise InputError(
                    f"receiver L{r.layer} H{r.head} does not exist: the model has {n_layers} layers of "
                    f"{int(model.cfg.n_heads)} heads",
                    field="receivers",
                )
    names = H.source_hooks(spec.component, n_layers)
    if isinstance(spec, (AttributionPatchingSpec, InputInfluenceSpec)) and spec.steps > 1:
        names.append(H.resid_pre_name(0))  # integrated gradients interpolate the input embeddings
    clean_final, corrupted_final, clean_caches, corrupted_caches = [], [], [], []
    for p in pairs:
        logits, cache = _cache(model, p.clean, names)
        clean_final.append(logits)
        clean_caches.append(cache)
        logits, cache = _cache(model, p.corrupted, names)
        corrupted_final.append(logits)
        corrupted_caches.append(cache)
    pool = clean_caches + corrupted_caches  # the reference set for mean/resample ablation

    done = 0

    def step(rows: int) -> None:
        nonlocal done
        done += rows
        if progress is not None:
            progress(done, total)

    clean_vals, corrupted_vals, sweeps = [], [], []
    repair: list[dict] = []
    axes: list[str] = []
    sizes: list[int] = []
    for i, p in enumerate(pairs):
        clean_lp = clean_final[i].log_softmax(-1)[0]
        clean_vals.append(float(logits_metric(spec.metric, clean_final[i], p.answer, p.wrong, clean_lp)[0]))
        corrupted_vals.append(float(logits_metric(spec.metric, corrupted_final[i], p.answer, p.wrong, clean_lp)[0]))
        site_list, axes, sizes = H.sites(model, spec.component, spec.positions, p.clean.shape[-1])
        if isinstance(spec, AttributionPatchingSpec):
            denoise = spec.direction == "denoise"
            caches = (corrupted_caches[i], clean_caches[i]) if denoise else (clean_caches[i], corrupted_caches[i])
            readout = Readout(model, spec.metric, p.answer, p.wrong, clean_lp)
            sweeps.append(
                attribution_sweep(
                    model, p.corrupted if denoise else p.clean, *caches, spec.component, spec.positions, readout, steps=spec.steps
                )
            )
            step(spec.steps)
            continue
        if isinstance(spec, InputInfluenceSpec):
            readout = Readout(model, spec.metric, p.answer, p.wrong, clean_lp)
            baseline = corrupted_caches[i][H.resid_pre_name(0)] if spec.steps > 1 else None
            sweeps.append(input_influence(model, p.clean, readout, steps=spec.steps, baseline=baseline))
            axes, sizes = ["pos"], [p.clean.shape[-1]]
            step(spec.steps)
            continue
        if isinstance(spec, SelfRepairSpec):
            values = ablation_values(spec.ablation, pool, i, spec.seed)
            replacements = {layer: values[H.hook_name("head", layer)] for layer in range(n_layers)}
            targets = [(t.layer, t.head) for t in spec.targets]
            comp = (spec.compensator.layer, spec.compensator.head) if spec.compensator else None
            analysis = self_repair(model, p.clean, replacements, targets, p.answer, p.wrong, compensator=comp)
            sweeps.append(analysis.pop("head_delta").reshape(-1).float().cpu())
            repair.append(analysis)
            step(len(site_list))
            continue
        if isinstance(spec, PathPatchingSpec):
            denoise = spec.direction == "denoise"
            caches = (corrupted_caches[i], clean_caches[i]) if denoise else (clean_caches[i], corrupted_caches[i])
            receivers = [(r.layer, r.head, r.input) for r in spec.receivers]
            readout = Readout(model, spec.metric, p.answer, p.wrong, clean_lp)
            sweeps.append(path_patch_sweep(model, p.corrupted if denoise else p.clean, *caches, receivers, readout, progress=step))
            continue
        if isinstance(spec, ActivationPatchingSpec):
            denoise = spec.direction == "denoise"
            base_tokens = p.corrupted if denoise else p.clean
            base_cache = corrupted_caches[i] if denoise else clean_caches[i]
            source = clean_caches[i] if denoise else corrupted_caches[i]
        else:
            base_tokens, base_cache = p.clean, clean_caches[i]
            source = ablation_values(spec.ablation, pool, i, spec.seed)
        values = H.patch_values(spec.component, n_layers, base_cache, source)
        readout = Readout(model, spec.metric, p.answer, p.wrong, clean_lp)
        sweeps.append(patch_sweep(model, base_tokens, values, site_list, readout, chunk_rows=chunk_rows, progress=step))

    mean = torch.stack(sweeps).mean(dim=0)
    clean_mean = sum(clean_vals) / len(clean_vals)
    corrupted_mean = sum(corrupted_vals) / len(corrupted_vals)
    if spec.metric == "normalized_logit_diff":
        if isinstance(spec, InputInfluenceSpec):  # shares of the metric, not metric values: scale only
            mean = normalize(mean, clean_mean, corrupted_mean) - normalize(torch.zeros(()), clean_mean, corrupted_mean)
        else:
            mean = normalize(mean, clean_mean, corrupted_mean)
        clean_vals = normalize(torch.tensor(clean_vals), clean_mean, corrupted_mean).tolist()
        corrupted_vals = normalize(torch.tensor(corrupted_vals), clean_mean, corrupted_mean).tolist()
        clean_mean, corrupted_mean = 1.0, 0.0

    return PatchResult(
        id=spec.id,
        spec=spec,
        axes=axes,
        labels=_labels(axes, sizes, pairs[0]),
        values=to_nested(mean, sizes),
        clean=clean_mean,
        corrupted=corrupted_mean,
        per_prompt_clean=clean_vals,
        per_prompt_corrupted=corrupted_vals,
        prompts=[_prompt_tokens(p) for p in pairs],
        model=ModelInfo(
            name=model_name or spec.model,
            n_layers=n_layers,
            n_heads=int(model.cfg.n_heads),
            d_model=int(model.cfg.d_model),
            n_ctx=int(model.cfg.n_ctx),
            d_vocab=int(model.cfg.d_vocab),
        ),
        versions=versions(),
        seconds=round(time.perf_counter() - start, 4),
        extras=_repair_summary(repair, spec, clean_mean) if repair else None,
    )


def _repair_summary(per_prompt: list[dict], spec, clean_mean: float) -> dict:
    """Self-repair numbers averaged over the prompts, with the strongest compensators named."""
    def mean(key: str) -> float:
        return sum(float(d[key]) for d in per_prompt) / len(per_prompt)

    mlp = torch.stack([d["mlp_delta"] for d in per_prompt]).mean(0)
    out = {k: mean(k) for k in ("total_effect", "direct_effect", "self_repair", "ln_scale_part")}
    out["ablated"] = clean_mean + out["total_effect"]
    out["mlp_delta"] = [float(v) for v in mlp]
    if spec.compensator is not None:
        out["paired_total_effect"] = mean("paired_total_effect")
    return out


def _labels(axes: list[str], sizes: list[int], first: PreparedPair) -> dict[str, list[str]]:
    labels = {}
    for axis, size in zip(axes, sizes):
        labels[axis] = list(first.clean_str) if axis == "pos" else [str(i) for i in range(size)]
    return labels


def _prompt_tokens(p: PreparedPair) -> PromptTokens:
    differ = [j for j, (a, b) in enumerate(zip(p.clean_str, p.corrupted_str)) if a != b]
    return PromptTokens(clean=p.clean_str, corrupted=p.corrupted_str, answer=p.answer_str, wrong=p.wrong_str, differ=differ)
