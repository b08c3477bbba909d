"""What a method is: its spec class, its run for one prompt pair, its cost and axes, its defaults.

``run()`` (``engine/run.py``) is a loop over prompt pairs that asks a ``Method`` for everything
method-specific; the spec union, the cost, the same-length rule and the budget check are derived
from the registered methods (``engine/methods/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.inputs import PreparedPair
from patchstudio.engine.metrics import Readout, architecture, n_legs, scores_sequences, sequence_legs
from patchstudio.engine.patching import patch_sweep
from patchstudio.engine.profile import profile
from patchstudio.engine.reference import ReferenceSet
from patchstudio.errors import InputError
from patchstudio.specs import SpecBase


@dataclass(frozen=True)
class PairContext:
    """Everything a method's run needs for one prompt pair of a spec."""

    model: Any
    spec: Any
    pair: PreparedPair
    index: int  # of the pair in the spec
    clean_cache: dict[str, Tensor]  # the hooks the method asked for (``Method.cache_names``)
    corrupted_cache: dict[str, Tensor]
    reference: ReferenceSet | None  # mean/resample ablation's reference set (``Method.needs_reference``)
    clean_log_probs: Tensor  # final position, for the KL metric
    chunk_rows: int
    progress: Callable[[int], None]

    def readout(self) -> Readout:
        return Readout(self.model, self.spec.metric, self.pair.answer, self.pair.wrong, self.clean_log_probs)

    def sweep(self, base_tokens: Tensor, values: dict[str, Tensor], sites: list[H.Site], *,
              same_before: int = 0, kv: dict[str, Tensor] | None = None) -> Tensor:
        """``patching.patch_sweep`` of the base prompt with this pair's metric (``same_before`` and
        ``kv`` as there: ``kv`` for the base prompt's own tokens). An answer of several tokens is
        scored by teacher forcing: one sweep per continuation (``metrics.sequence_legs``), the
        prompt followed by the continuation, patched at the prompt's positions only (the
        continuation is the same after both prompts, so ``same_before`` still holds; its keys and
        values are computed for the longer sequence)."""
        model, spec, pair = self.model, self.spec, self.pair
        if not scores_sequences(spec.metric, pair):
            return patch_sweep(model, base_tokens, values, sites, self.readout(), chunk_rows=self.chunk_rows,
                               progress=self.progress, same_before=same_before, kv=kv)
        legs, combine = sequence_legs(model, spec.metric, pair.answer_ids, pair.wrong_ids)
        outs = []
        for leg in legs:
            suffix = torch.tensor([list(leg.suffix)], dtype=base_tokens.dtype, device=base_tokens.device)
            leg_values, leg_sites = H.extend_positions(spec.component, values, sites, len(leg.suffix))
            outs.append(patch_sweep(model, torch.cat([base_tokens, suffix], dim=1), leg_values, leg_sites, leg.readout,
                                    chunk_rows=self.chunk_rows, progress=self.progress, tail=leg.tail,
                                    same_before=same_before, kv=kv if not leg.suffix else None))
        return combine(outs)

    def runs(self, direction: str) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """(base tokens, base cache, source cache): denoise runs the corrupted prompt with clean
        activations; noise runs the clean prompt with corrupted ones."""
        p = self.pair
        if direction == "denoise":
            return p.corrupted, self.corrupted_cache, self.clean_cache
        return p.clean, self.clean_cache, self.corrupted_cache


@dataclass(frozen=True)
class PairResult:
    values: Tensor  # flat, row-major in the method's axes
    extras: dict[str, Any] | None = None  # per-pair data for ``Method.summarize``
    warnings: tuple[str, ...] = ()  # plain sentences for the result's ``warnings``


@dataclass(frozen=True)
class Finish:
    """What a method's second step (``Method.finish``) sees, once every pair has run: each pair's
    context, the first step's values [pairs, cells] in raw metric units, and each pair's clean and
    corrupted metric. A step that needs the whole prompt set (which edges to verify, which
    circuits to test, chosen from the mean over the pairs) runs here."""

    pairs: list[PairContext]
    per_prompt: Tensor
    clean: list[float]
    corrupted: list[float]


def sites_cost(model, spec, seq_len: int) -> int:
    """One patched run per site of the sweep."""
    return len(profile(model).sites(spec.component, spec.positions, seq_len)[0])


def sites_axes(model, spec, n_pos: int) -> tuple[list[str], list[int]]:
    """The sweep's axes; ``n_pos``: the length of its position axis (for a per-position sweep,
    its roles, ``inputs.role_axis``; else the first prompt's length)."""
    _, axes, sizes = profile(model).sites(spec.component, spec.positions, n_pos)
    return axes, sizes


def pair_sites(model, spec, pair: PreparedPair) -> list[H.Site]:
    """The sweep's sites on one pair (per position: at its roles' tokens, ``PreparedPair.groups``)."""
    return profile(model).sites(spec.component, spec.positions, pair.clean.shape[-1], pair.groups)[0]


def sweep_cost(model, spec, pair: PreparedPair) -> int:
    """Patched runs of a sweep over sites for one pair: one per site and continuation."""
    return len(pair_sites(model, spec, pair)) * n_legs(spec.metric, pair)


def by_cells(per_pos: Tensor, groups: Sequence[Sequence[int]] | None) -> Tensor:
    """[pos, ...] -> [cells, ...]: each cell's positions summed (for a per-token estimate, that of the
    cell's tokens together); without ``groups``, every position its own cell."""
    if groups is None:
        return per_pos
    return torch.stack([per_pos[list(where)].sum(0) for where in groups])


def check_component(model, spec) -> None:
    """The component exists in this architecture (an InputError on ``component`` otherwise)."""
    if spec.component == "resid_mid" and not profile(model).resid_mid_is_stream:
        raise InputError(
            f"component 'resid_mid' does not exist in {architecture(model)}: its blocks run attention and the "
            f"MLP in parallel on the same input, so there is no residual stream between them to patch; use "
            f"resid_pre, attn_out, mlp_out or resid_post",
            field="component",
        )


def component_hooks(model, spec) -> list[str]:
    return H.source_hooks(spec.component, int(model.cfg.n_layers))


def any_length(spec) -> bool:
    """Prompts of any lengths: a per-position sweep's cells are roles (``inputs.role_axis``)."""
    return False


def no_check(model, spec) -> None:
    return None


def patching_baseline(spec, clean: float, corrupted: float) -> float:
    """No effect leaves the metric of the run patched into: corrupted when denoising, clean when noising."""
    return corrupted if spec.direction == "denoise" else clean


def patching_evidence(spec) -> str:
    """What kind of evidence a patching sweep gives: it depends on the direction."""
    if spec.direction == "denoise":
        return "restoration (sufficiency-style): clean activations patched into the corrupted run"
    return "necessity-style (noising): corrupted activations patched into the clean run"


def check_heads(model, heads, field_name: str, what: str = "head") -> None:
    """Every (layer, head) exists in ``model``; else an InputError on ``field_name``."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    for r in heads:
        if r.layer >= n_layers or r.head >= n_heads:
            raise InputError(
                f"{what} L{r.layer} H{r.head} does not exist: the model has {n_layers} layers of {n_heads} heads",
                field=field_name,
            )


@dataclass(frozen=True)
class ShareOf:
    """The denominator of a share view that is not the clean-corrupted gap, and its words."""

    base: float  # in the metric's units
    name: str  # "the clean run's logit difference"
    why: str  # "which the parts sum to"

    @property
    def words(self) -> str:
        return f"{self.name}, {self.why}"


@dataclass(frozen=True)
class Method:
    """A registered method. Only ``spec`` and ``run_pair`` are required; the rest has the
    defaults of a sweep over ``hooks.sites`` (one patched run per site)."""

    spec: type[SpecBase]
    run_pair: Callable[[PairContext], PairResult]
    # what a cell holds: the metric after the intervention, or a change of the metric (shares,
    # changes in direct effect), whose "no effect" is 0 and which normalisation only rescales
    values: Literal["metric", "change"] = "metric"
    baseline: Callable[[Any, float, float], float] = patching_baseline
    cost: Callable[[Any, Any, int], int] = sites_cost
    # (model, spec, length of the position axis: a per-position sweep's roles, else the first prompt's tokens)
    axes: Callable[[Any, Any, int], tuple[list[str], list[int]]] = sites_axes
    cache_names: Callable[[Any, Any], list[str]] = component_hooks
    same_length: Callable[[Any], bool] = any_length
    check: Callable[[Any, Any], None] = no_check
    summarize: Callable[[list[dict], Any, float], dict] | None = None
    evidence: Callable[[Any], str] = patching_evidence  # what kind of claim a cell supports, in words
    # the view a result opens in: a share of the clean-corrupted gap (patching), or the change from
    # "no effect" (ablation, self-repair)
    default_view: Literal["share", "change", "raw"] = "share"
    # per-pair extras -> plain-sentence warnings about the whole prompt set
    warn: Callable[[list[dict], Any], list[str]] | None = None
    # whether a spec ablates against a reference set (its ``reference`` field; engine/reference.py)
    needs_reference: Callable[[Any], bool] = lambda spec: False

    # answers of several tokens: False refuses them (InputError on answer/wrong); True means
    # ``run_pair`` scores them (``PairContext.sweep``) and ``pair_cost`` prices each pair
    multi_token: bool = False
    pair_cost: Callable[[Any, Any, PreparedPair], int] | None = None
    references: tuple[str, ...] = field(default=())  # papers, for the docs
    # a method that reads one run instead of intervening on it (the logit lens): (spec, the metric's
    # unit) -> its cells' title; they have the raw view only (no change from "no effect", no share of
    # the gap), and no Figure 1
    reads_run: Callable[[Any, str], str] | None = None
    # a second step over the whole prompt set, after every pair's ``run_pair``: its dict goes into the
    # result's ``extras`` (its cost is part of ``cost``, its rows report through each pair's progress)
    finish: Callable[[Finish], dict[str, Any]] | None = None
    # axis -> labels where they are not indices (positions are labelled by the tokens regardless)
    labels: Callable[[Any, Any], dict[str, list[str]]] | None = None
    # what the share view divides a change-valued cell by, where not the clean-corrupted gap:
    # (spec, clean, corrupted) -> ShareOf (direct logit attribution: the parts sum to one run's metric)
    share_of: Callable[[Any, float, float], ShareOf] | None = None

    @property
    def name(self) -> str:
        return self.spec.model_fields["method"].default

    @property
    def title(self) -> str:
        """How messages name the method: 'path patching'."""
        return self.name.replace("_", " ")

    def cost_of(self, model, spec, pair: PreparedPair) -> int:
        """Patched runs for one prompt pair."""
        if self.pair_cost is not None:
            return self.pair_cost(model, spec, pair)
        return self.cost(model, spec, pair.clean.shape[-1])

    def no_effect(self, spec, clean: float, corrupted: float) -> float:
        """The value a cell takes when the intervention changes nothing."""
        return 0.0 if self.values == "change" else self.baseline(spec, clean, corrupted)
