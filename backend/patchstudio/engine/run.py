"""run(model, spec) -> result: a loop over the spec's prompt pairs that asks the method registry.

``plan`` checks and tokenizes the prompts (and a mean/resample ablation's reference set) and
prices the experiment (patched runs); ``run`` then takes three steps: ``baselines`` caches each
pair's clean and corrupted activations and metric, and the reference set's activations (once);
``run_pairs`` runs the method on each pair; ``assemble`` reports the mean over the pairs with
each pair's values, their spread (``engine.stats``) and plain-sentence warnings about inputs that
cannot show what the numbers claim. Everything method-specific comes from ``engine.methods``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

import torch

from patchstudio.engine.forward import run_with_cache_pair
from patchstudio.engine.inputs import PreparedPair, RoleAxis, prepare_pairs, refuse_multi_token, role_axis
from patchstudio.engine.methods import Method, PairContext, get_method
from patchstudio.engine.methods.base import Finish
from patchstudio.engine.metrics import (
    GAP_UNITS,
    NEEDS_FULL_VOCAB,
    SMALL_GAP,
    architecture,
    check_gap,
    check_readout,
    logits_metric,
    normalize,
    scores_sequences,
    sequence_metric,
)
from patchstudio.engine.precision import (
    auto_chunk_rows,
    dtype_name,
    metric_noise,
    model_device,
    model_dtype,
    precision_warnings,
)
from patchstudio.engine.reference import ReferencePlan, ReferenceSet, cache_reference, plan_reference
from patchstudio.engine.stats import CI_METHOD, spread
from patchstudio.errors import InputError
from patchstudio.results import ModelInfo, PatchResult, PositionRole, PromptTokens, to_nested
from patchstudio.specs import SpecBase, parse_spec

ProgressFn = Callable[[int, int], None]


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("patchstudio", "transformer-lens", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            out[pkg] = "unknown"
    return out


@dataclass(frozen=True)
class Plan:
    """A checked experiment: its method, its tokenized pairs and its cost in patched runs."""

    spec: SpecBase
    method: Method
    pairs: list[PreparedPair]
    total: int
    reference: ReferencePlan | None = None  # mean/resample ablation's reference set
    roles: RoleAxis | None = None  # a per-position sweep's cells (each pair's ``groups`` holds its own)

    def check_budget(self, max_patched_runs: int | None) -> None:
        """Refuse a sweep over ``max_patched_runs`` patched runs (None: no budget)."""
        if max_patched_runs is not None and self.total > max_patched_runs:
            n = len(self.pairs)
            raise InputError(
                f"this sweep needs {self.total:,} patched runs ({n} prompt(s) x {self.total // n:,} patches), "
                f"over the budget of {max_patched_runs:,}; use fewer prompts, positions 'all', or raise the "
                f"budget (PATCHSTUDIO_MAX_PATCHED_RUNS)",
                field="prompts",
            )


def plan(model, spec: Any) -> Plan:
    """Check and tokenize the spec's prompts for ``model`` and price the experiment (raises InputError)."""
    spec = parse_spec(spec)
    method = get_method(spec.method)
    pairs = prepare_pairs(model, spec.prompts, same_length=method.same_length(spec))
    if not method.multi_token:
        refuse_multi_token(pairs, method.title, model)
    method.check(model, spec)
    roles = None
    if spec.positions != "all":  # per position: the cells are roles, aligned across the pairs
        roles = role_axis(model, spec.prompts, pairs, spec.positions)
        pairs = [replace(pair, groups=groups) for pair, groups in zip(pairs, roles.groups)]
    reference = plan_reference(model, spec, pairs, roles) if method.needs_reference(spec) else None
    total = sum(method.cost_of(model, spec, p) for p in pairs)
    return Plan(spec, method, pairs, total, reference, roles)


def count_patched_runs(model, spec: Any) -> int:
    """How many patched forward rows a spec needs (its cost)."""
    return plan(model, spec).total


def run(
    model,
    spec: Any,
    *,
    model_name: str | None = None,
    chunk_rows: int | None = None,
    max_patched_runs: int | None = None,
    progress: ProgressFn | None = None,
    checked: Plan | None = None,
) -> PatchResult:
    """Run an experiment spec (object, dict or JSON) on ``model`` (any TransformerBridge).

    ``checked``: the spec's ``plan`` on this model when the caller already made it (a server prices
    a spec before deciding to run it): it is not tokenized and priced a second time.

    ``max_patched_runs`` bounds the sweep's cost (prompts x patches); ``progress(done, total)`` is
    called after each batch, and may raise to cancel. ``chunk_rows`` bounds the rows of one forward
    pass; None: ``precision.CPU_CHUNK_ROWS`` on CPU, what fits in free memory on CUDA
    (``precision.auto_chunk_rows``). The steps: ``baselines``, ``run_pairs``, ``assemble``.
    """
    start = time.perf_counter()
    if model.training:
        model.eval()  # patching compares deterministic passes; dropout would break that
    p = checked if checked is not None else plan(model, spec)
    p.check_budget(max_patched_runs)
    check_readout(model)
    if chunk_rows is None:
        chunk_rows = _auto_chunk_rows(model, p)
    base = baselines(model, p)
    sweeps = run_pairs(model, p, base, chunk_rows, progress)
    return assemble(model, p, base, sweeps, model_name=model_name, started=start)


def _auto_chunk_rows(model, p: Plan) -> int:
    longest = max(pair.clean.shape[-1] + max(len(pair.answer_ids), len(pair.wrong_ids)) - 1 for pair in p.pairs)
    tail = max(max(len(pair.answer_ids), len(pair.wrong_ids)) for pair in p.pairs)
    return auto_chunk_rows(model, longest, p.spec.metric in NEEDS_FULL_VOCAB or tail > 1, tail)


@dataclass(frozen=True)
class Baselines:
    """What every pair's run starts from: its cached clean and corrupted runs ((final-position
    logits, {hook: activation}) at the method's ``cache_names``), their metric (raw, per pair), the
    clean run's final log-probabilities (for KL), and the reference set's activations (once per spec)."""

    clean_runs: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]
    corrupted_runs: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]
    clean: list[float]
    corrupted: list[float]
    clean_log_probs: list[torch.Tensor]
    reference: ReferenceSet | None


def baselines(model, p: Plan) -> Baselines:
    """Each pair's clean and corrupted cached runs (one batch of two where they have one length)
    and metric; an answer of several tokens is scored by teacher forcing, from the model's own passes."""
    spec, names = p.spec, p.method.cache_names(model, p.spec)
    clean_runs, corrupted_runs = map(list, zip(*(run_with_cache_pair(model, pair.clean, pair.corrupted, names)
                                                  for pair in p.pairs)))
    reference = None
    if p.reference is not None:  # once per spec: every pair ablates against the same set
        own = ([cache for _, cache in clean_runs], [cache for _, cache in corrupted_runs])
        reference = cache_reference(model, p.reference, names, own)
    clean, corrupted, log_probs = [], [], []
    for pair, (clean_logits, _), (corrupted_logits, _) in zip(p.pairs, clean_runs, corrupted_runs):
        clean_lp = clean_logits.log_softmax(-1)[0]
        log_probs.append(clean_lp)
        if scores_sequences(spec.metric, pair):
            clean.append(sequence_metric(model, spec.metric, pair.clean, pair.answer_ids, pair.wrong_ids))
            corrupted.append(sequence_metric(model, spec.metric, pair.corrupted, pair.answer_ids, pair.wrong_ids))
        else:
            clean.append(float(logits_metric(spec.metric, clean_logits, pair.answer, pair.wrong, clean_lp)[0]))
            corrupted.append(float(logits_metric(spec.metric, corrupted_logits, pair.answer, pair.wrong, clean_lp)[0]))
    return Baselines(clean_runs, corrupted_runs, clean, corrupted, log_probs, reference)


@dataclass(frozen=True)
class Sweeps:
    """The method's output over the pairs: values [prompt, cells], per-pair extras, warnings, and
    its second step's extras (``Method.finish``)."""

    per_prompt: torch.Tensor
    extras: list[dict]
    warnings: list[str]
    finished: dict[str, Any] | None = None


def run_pairs(model, p: Plan, base: Baselines, chunk_rows: int, progress: ProgressFn | None = None) -> Sweeps:
    """The method's ``run_pair`` on each prompt pair, reporting ``progress(done, total)`` as rows finish."""
    done = 0

    def step(rows: int) -> None:
        nonlocal done
        done += rows
        if progress is not None:
            progress(done, p.total)

    values, extras, warnings, contexts = [], [], [], []
    for i, pair in enumerate(p.pairs):
        ctx = PairContext(model, p.spec, pair, i, base.clean_runs[i][1], base.corrupted_runs[i][1], base.reference,
                          base.clean_log_probs[i], chunk_rows, step)
        contexts.append(ctx)
        out = p.method.run_pair(ctx)
        values.append(out.values)
        warnings.extend(out.warnings)
        if out.extras is not None:
            extras.append(out.extras)
    per_prompt = torch.stack(values)
    finished = None
    if p.method.finish is not None:
        finished = p.method.finish(Finish(contexts, per_prompt, list(base.clean), list(base.corrupted)))
    return Sweeps(per_prompt, extras, warnings, finished)


def assemble(model, p: Plan, base: Baselines, sweeps: Sweeps, *, model_name: str | None, started: float) -> PatchResult:
    """The result: the mean over the pairs with each pair's values and their spread, the clean and
    corrupted means, the warnings, all normalised under ``normalized_logit_diff``."""
    spec, method, pairs = p.spec, p.method, p.pairs
    axes, sizes = method.axes(model, spec, len(p.roles.names) if p.roles is not None else pairs[0].clean.shape[-1])
    per_prompt, clean_vals, corrupted_vals = sweeps.per_prompt, list(base.clean), list(base.corrupted)
    clean_mean = sum(clean_vals) / len(clean_vals)
    corrupted_mean = sum(corrupted_vals) / len(corrupted_vals)
    method_warnings = list(sweeps.warnings)
    if method.warn is not None and sweeps.extras:
        method_warnings.extend(method.warn(sweeps.extras, spec))
    method_warnings.extend(
        _precision_warnings(model, spec, method, per_prompt.mean(dim=0), clean_mean, corrupted_mean, base.clean_runs)
    )
    warnings = _warnings(p, clean_mean - corrupted_mean, method_warnings)
    if spec.metric == "normalized_logit_diff":
        check_gap(clean_mean, corrupted_mean)  # an InputError on 'metric', not a division by zero
        # every prompt with the set-level clean and corrupted means, so the mean stays their mean
        if method.values == "change":  # changes of the metric, not metric values: scale only
            per_prompt = per_prompt / (clean_mean - corrupted_mean)
        else:
            per_prompt = normalize(per_prompt, clean_mean, corrupted_mean)
        clean_vals = normalize(torch.tensor(clean_vals), clean_mean, corrupted_mean).tolist()
        corrupted_vals = normalize(torch.tensor(corrupted_vals), clean_mean, corrupted_mean).tolist()
        clean_mean, corrupted_mean = 1.0, 0.0
    mean = per_prompt.mean(dim=0)
    std, ci_low, ci_high = spread(per_prompt)
    return PatchResult(
        id=spec.id,
        spec=spec,
        axes=axes,
        labels={**_labels(axes, sizes, pairs[0], p.roles), **(method.labels(model, spec) if method.labels else {})},
        values=to_nested(mean, sizes),
        clean=clean_mean,
        corrupted=corrupted_mean,
        per_prompt_clean=clean_vals,
        per_prompt_corrupted=corrupted_vals,
        prompts=[_prompt_tokens(pair) for pair in pairs],
        model=_model_info(model, model_name or spec.model),
        versions=versions(),
        seconds=round(time.perf_counter() - started, 4),  # started: time.perf_counter() when the run began
        extras=_extras(method, spec, sweeps, clean_mean),
        per_prompt=[to_nested(row, sizes) for row in per_prompt],
        std=to_nested(std, sizes),
        ci_low=to_nested(ci_low, sizes),
        ci_high=to_nested(ci_high, sizes),
        ci_method=CI_METHOD,
        reference=p.reference.info() if p.reference is not None else None,
        warnings=warnings,
        roles=_roles(p.roles),
    )


def _extras(method: Method, spec: SpecBase, sweeps: Sweeps, clean_mean: float) -> dict[str, Any] | None:
    """The method's per-pair summary and its second step's extras, together (None: neither)."""
    summary = method.summarize(sweeps.extras, spec, clean_mean) if method.summarize and sweeps.extras else None
    if sweeps.finished is None:
        return summary
    return {**(summary or {}), **sweeps.finished}


def _model_info(model, name: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        n_layers=int(model.cfg.n_layers),
        n_heads=int(model.cfg.n_heads),
        d_model=int(model.cfg.d_model),
        n_ctx=int(model.cfg.n_ctx),
        d_vocab=int(model.cfg.d_vocab),
        architecture=architecture(model) if getattr(model.cfg, "architecture", None) else None,
        device=str(model_device(model)),
        dtype=dtype_name(model_dtype(model)),
    )


def _warnings(p: Plan, gap: float, from_method: list[str]) -> list[str]:
    """Plain sentences about inputs that cannot show what the numbers claim (none: an empty list)."""
    out = list(p.reference.warnings) if p.reference is not None else []
    out.extend(p.roles.warnings if p.roles is not None else ())
    for i, pair in enumerate(p.pairs):
        if torch.equal(pair.clean, pair.corrupted):
            out.append(
                f"Prompt {i + 1}: the clean and corrupted prompts are the same tokens, so nothing moved from one "
                f"run to the other can show an effect."
            )
    metric = p.spec.metric
    if abs(gap) < SMALL_GAP[metric]:
        out.append(
            f"The clean–corrupted gap is {gap:.3g} {GAP_UNITS[metric]}, under {SMALL_GAP[metric]:g}: the "
            f"corruption barely changes the metric, so effects read as shares of the gap are large and unstable."
        )
    for text in from_method:
        if text not in out:
            out.append(text)
    return out


def _precision_warnings(model, spec, method, mean, clean_mean, corrupted_mean, clean_runs) -> list[str]:
    """Half precision: warn where the gap or a cell's effect is within the dtype's rounding noise."""
    logit_scale = max(float(logits.abs().max()) for logits, _ in clean_runs)
    prob_scale = max(clean_mean, corrupted_mean, 0.0) if spec.metric == "prob" else 1.0
    noise = metric_noise(model, spec.metric, logit_scale, prob_scale)
    effects = mean - method.no_effect(spec, clean_mean, corrupted_mean)
    return precision_warnings(model, noise, clean_mean - corrupted_mean, effects)


def _labels(axes: list[str], sizes: list[int], first: PreparedPair, roles: RoleAxis | None) -> dict[str, list[str]]:
    """Each axis's labels: the roles (or picked indices) of a per-position sweep, the first prompt's
    tokens for a position axis by index (input influence without roles), else the indices."""
    labels = {}
    for axis, size in zip(axes, sizes):
        if axis == "pos":
            labels[axis] = list(roles.names) if roles is not None else list(first.clean_str)
        else:
            labels[axis] = [str(i) for i in range(size)]
    return labels


def _roles(roles: RoleAxis | None) -> list[PositionRole] | None:
    if roles is None:
        return None
    return [PositionRole(role=name, n=len(roles.groups), at=[list(groups[k]) for groups in roles.groups])
            for k, name in enumerate(roles.names)]


def _prompt_tokens(p: PreparedPair) -> PromptTokens:
    differ = [j for j, (a, b) in enumerate(zip(p.clean_str, p.corrupted_str)) if a != b]
    return PromptTokens(clean=p.clean_str, corrupted=p.corrupted_str, answer=p.answer_str, wrong=p.wrong_str, differ=differ,
                        answer_tokens=len(p.answer_ids), wrong_tokens=len(p.wrong_ids))
