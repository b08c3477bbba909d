"""The reference distribution of mean and resample ablation.

"Remove a component" means "replace its activation by what it is on other inputs": the mean over a
reference distribution (mean ablation) or its value on one prompt drawn from it (resample ablation,
Chan et al. 2022). Which distribution is part of the claim, so a spec names it (``reference``) and
the result says which was used (``PatchResult.reference``):

- ``"auto"`` (the default): when the built-in generator recognises the spec's clean prompts (all
  from one IOI template, or all induction prompts of one length: ``models.prompts.recognise``), a
  set of ``REFERENCE_SIZE`` prompts generated from that template with the spec's ``seed``, keeping
  those that tokenize to the spec's length without unknown words on this model ("generated";
  at least ``REFERENCE_MIN`` are needed). Otherwise the spec's own clean and corrupted prompts
  ("own"), with a warning: with one pair, mean ablation is then the midpoint of clean and
  corrupted, and resample ablation has nothing to draw from.
- ``{"prompts": [...]}``: the prompts given ("given"), each of the spec's token length.

Resample ablation of pair i draws, with ``random.Random(seed * 1_000_003 + i)``, ``draws`` reference
prompts whose tokens are neither pair i's clean nor its corrupted prompt: it never resamples a
prompt from itself or from its own counterfactual (that would be activation patching). The first
draw is ``rng.choice`` of those prompts, the rest follow it in the order of ``rng.sample`` of the
others, cycling when there are fewer prompts than draws; the pair's value is the mean over its
draws, so one draw's luck (the result moved with the seed) is averaged out (``resample_indices``). Mean
ablation averages over the whole reference set, position by position (so the reference prompts
must have the spec's token length).

The reference prompts' activations are computed once per run (``cache_reference``), in batches,
not once per prompt pair.

Per position (``positions`` other than "all") the cells are roles (``inputs.role_axis``), and so
are the replacements: a role's tokens in pair i take the reference prompts' activations at the
same role's tokens (their mean, or the drawn prompt's), wherever each prompt has it: an IOI set
mixes both name orders, so the same index is IO in one prompt and S1 in the next. A reference
prompt without a role of the sweep, or with it on another number of tokens, is refused on
``reference``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import Tensor

from patchstudio.engine import hooks as H
from patchstudio.engine.profile import model_lock
from patchstudio.engine.inputs import PreparedPair, RoleAxis, text_roles, tokenize
from patchstudio.errors import InputError
from patchstudio.models import prompts as P

REFERENCE_SIZE = 64  # prompts generated for "auto"
REFERENCE_MIN = 32  # fewer usable generated prompts than this: fall back to the spec's own
REFERENCE_BATCH = 32  # reference prompts per forward pass when caching
MAX_REFERENCE_PROMPTS = 1024  # given reference sets larger than this are refused
_ABLATION = "mean or resample ablation"


@dataclass(frozen=True)
class ReferencePlan:
    """Which prompts make up the reference set (tokenized; nothing run yet)."""

    kind: str  # "generated" | "given" | "own"
    description: str
    tokens: Tensor  # [n, pos]; for "own": every clean prompt, then every corrupted one
    warnings: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()  # the prompts, for "generated" and "given"
    # per position: [reference prompt][cell] -> its token positions (the sweep's roles, ``align_reference``)
    groups: tuple[tuple[tuple[int, ...], ...], ...] | None = None

    @property
    def n(self) -> int:
        return int(self.tokens.shape[0])

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "description": self.description}

    def choices(self, pair: PreparedPair) -> list[int]:
        """The reference prompts resample ablation may draw for ``pair``: not its clean or corrupted prompt."""
        own = (self.tokens == pair.clean.to(self.tokens.device)).all(-1) | (self.tokens == pair.corrupted.to(self.tokens.device)).all(-1)
        return [j for j in range(self.n) if not bool(own[j])]


@dataclass(frozen=True)
class ReferenceSet:
    """A reference plan with its activations at the hooks a method needs."""

    plan: ReferencePlan
    acts: dict[str, Tensor]  # [n, ...] per hook
    mean: dict[str, Tensor] = field(default_factory=dict)  # [1, ...] per hook
    _role_means: dict[tuple[str, int], Tensor] = field(default_factory=dict)  # filled as asked

    def drawn(self, pair: PreparedPair, index: int, seed: int, draws: int = 1) -> list[int]:
        """The reference prompts resample ablation draws for pair ``index`` (``resample_indices``)."""
        exclude = set(range(self.plan.n)) - set(self.plan.choices(pair))
        return resample_indices(self.plan.n, index, seed, draws, exclude=exclude)

    def draw(self, pair: PreparedPair, index: int, seed: int, draws: int = 1) -> list[dict[str, Tensor]]:
        """Resample ablation's values for pair ``index``, one dict per draw (batch axis of size 1)."""
        return [{name: act[j : j + 1] for name, act in self.acts.items()} for j in self.drawn(pair, index, seed, draws)]

    def at_role(self, hook: str, j: int, cell: int) -> Tensor:
        """Reference prompt j's activation at the tokens of the sweep's ``cell`` (batch axis of size 1)."""
        where = torch.tensor(self.plan.groups[j][cell], device=self.acts[hook].device)
        return self.acts[hook][j : j + 1].index_select(1 + H.position_axis(hook), where)

    def role_mean(self, hook: str, cell: int) -> Tensor:
        """The mean over the reference prompts of ``at_role`` (computed once per hook and cell)."""
        key = (hook, cell)
        if key not in self._role_means:
            self._role_means[key] = torch.cat([self.at_role(hook, j, cell) for j in range(self.plan.n)]).mean(0, keepdim=True)
        return self._role_means[key]


def resample_indices(pool_size: int, base_index: int, seed: int, draws: int, exclude: set[int] | None = None) -> list[int]:
    """``draws`` seeded choices from ``range(pool_size)`` minus ``exclude`` (default: the base prompt
    itself), distinct while there are enough (module docstring).

    The draws depend on the seed and the base prompt's index: ``random.Random(seed * 1_000_003 +
    base_index)``; the first is the one a single draw makes."""
    excluded = {base_index} if exclude is None else set(exclude)
    choices = [j for j in range(pool_size) if j not in excluded]
    if not choices:
        raise ValueError("resample ablation needs at least two prompts to draw from (one that is not the prompt itself)")
    rng = random.Random(seed * 1_000_003 + base_index)
    first = rng.choice(choices)
    if draws == 1:
        return [first]
    order = [first, *rng.sample([j for j in choices if j != first], len(choices) - 1)]
    return [order[k % len(order)] for k in range(draws)]


def resample_index(pool_size: int, base_index: int, seed: int, exclude: set[int] | None = None) -> int:
    """The single draw of ``resample_indices``."""
    return resample_indices(pool_size, base_index, seed, 1, exclude)[0]


def _tokens_ok(model, tokens: Tensor, length: int) -> bool:
    unk = getattr(model.tokenizer, "unk_token_id", None)
    return tokens.shape[-1] == length and not (unk is not None and bool((tokens == unk).any()))


def plan_reference(model, spec, pairs: Sequence[PreparedPair], roles: RoleAxis | None = None) -> ReferencePlan:
    """The reference set of a mean or resample ablation spec (see the module docstring); per
    position (``roles``), with each reference prompt's tokens at the sweep's roles.

    Raises InputError (field ``reference``) for given prompts of the wrong length or with unknown
    words, for a resample ablation that leaves a pair nothing to draw, and for reference prompts
    whose roles do not match the sweep's."""
    length = int(pairs[0].clean.shape[-1])
    ref = spec.reference
    own = torch.cat([p.clean for p in pairs] + [p.corrupted for p in pairs])
    if ref == "auto":
        plan = _generated(model, spec, length)
        if plan is None:
            why = (
                "the built-in generator does not recognise these prompts"
                if P.recognise([p.clean for p in spec.prompts]) is None
                else "too few of the built-in generator's prompts for this template tokenize like these on this model"
            )
            plan = ReferencePlan(
                "own",
                f"this spec's own {len(pairs)} clean and {len(pairs)} corrupted prompts",
                own,
                (
                    f"The {spec.ablation} ablation's reference set is only this spec's own clean and corrupted prompts "
                    f"({why}): with one prompt pair, mean ablation is the midpoint of clean and corrupted. Give "
                    f"reference prompts (the spec's 'reference') for a distribution to ablate against.",
                ),
            )
    else:
        if len(ref.prompts) > MAX_REFERENCE_PROMPTS:
            raise InputError(f"{len(ref.prompts)} reference prompts is over the limit of {MAX_REFERENCE_PROMPTS:,}", field="reference")
        rows = []
        for i, text in enumerate(ref.prompts):
            tokens = tokenize(model, text)
            if tokens.shape[-1] != length:
                raise InputError(
                    f"reference prompt {i + 1} is {tokens.shape[-1]} tokens but the spec's prompts are {length}: "
                    f"{spec.ablation} ablation replaces activations position by position, so every reference prompt "
                    f"needs the same token length (use prompts from the same template)",
                    field="reference",
                )
            if not _tokens_ok(model, tokens, length):
                raise InputError(f"reference prompt {i + 1} has words the model does not know", field="reference")
            rows.append(tokens)
        plan = ReferencePlan("given", f"{len(rows)} reference prompt(s) given in the spec", torch.cat(rows),
                             texts=tuple(ref.prompts))
    if spec.ablation == "resample":
        for i, pair in enumerate(pairs):
            if not plan.choices(pair):
                raise InputError(
                    f"resample ablation of prompt {i + 1} has nothing to draw from: the reference set "
                    f"({plan.description}) holds only that pair's own clean and corrupted prompts, and resampling a "
                    f"prompt's own counterfactual would be activation patching; give reference prompts "
                    f"(reference: {{\"prompts\": [...]}}) or more prompt pairs",
                    field="reference",
                )
    return align_reference(model, plan, pairs, roles) if roles is not None else plan


def align_reference(model, plan: ReferencePlan, pairs: Sequence[PreparedPair], roles: RoleAxis) -> ReferencePlan:
    """``plan`` with each reference prompt's token positions at the sweep's cells (a picked index
    is that index). The spec's own prompts have their pairs' (a corrupted prompt its clean one's)."""
    if plan.kind == "own":
        groups = tuple(pair.groups for pair in pairs) * 2
    else:
        rows = []
        for j, text in enumerate(plan.texts):
            found = text_roles(model, text, plan.tokens[j : j + 1])
            row = []
            for name in roles.names:
                if name.isdigit():  # an index picked
                    row.append((int(name),))
                    continue
                if name not in found.at:
                    raise InputError(
                        f"reference prompt {j + 1} ({plan.description}) has no position {name!r}: a {_ABLATION} by "
                        f"position takes each role's activation from the same role of the reference prompts (its roles: "
                        f"{found.listing()}); give reference prompts of the same shape as the spec's",
                        field="reference",
                    )
                row.append(found.at[name])
            rows.append(tuple(row))
        groups = tuple(rows)
    for cell, name in enumerate(roles.names):
        sizes = {len(g[cell]) for g in groups} | {len(pair.groups[cell]) for pair in pairs}
        if len(sizes) > 1:
            raise InputError(
                f"position {name!r} covers {' or '.join(str(s) for s in sorted(sizes))} tokens in different prompts "
                f"and reference prompts: a {_ABLATION} by position replaces a role's tokens one for one",
                field="reference",
            )
    return replace(plan, groups=groups)


def _generated(model, spec, length: int) -> ReferencePlan | None:
    clean = [p.clean for p in spec.prompts]
    found = P.recognise(clean)
    if found is None:
        return None
    candidates = P.reference_prompts(clean, 2 * REFERENCE_SIZE, seed=spec.seed) or []
    rows, texts = [], []
    for text in candidates:
        tokens = tokenize(model, text)
        if _tokens_ok(model, tokens, length):
            rows.append(tokens)
            texts.append(text)
            if len(rows) == REFERENCE_SIZE:
                break
    if len(rows) < REFERENCE_MIN:
        return None
    description = f"{len(rows)} prompts generated from {P.describe_template(*found)} (seed {spec.seed})"
    return ReferencePlan("generated", description, torch.cat(rows), texts=tuple(texts))


def cache_reference(
    model, plan: ReferencePlan, names: Sequence[str], own: tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]] | None = None
) -> ReferenceSet:
    """The reference prompts' activations at ``names``, and their mean.

    For "own", ``own`` = (clean caches, corrupted caches) of the run are reused; other sets run
    in batches of ``REFERENCE_BATCH`` prompts."""
    if plan.kind == "own" and own is not None:
        caches = [*own[0], *own[1]]
        acts = {name: torch.cat([c[name] for c in caches]) for name in names}
    else:
        parts: dict[str, list[Tensor]] = {name: [] for name in names}
        device = next(iter(model.parameters())).device
        for start in range(0, plan.n, REFERENCE_BATCH):
            batch = plan.tokens[start : start + REFERENCE_BATCH].to(device)
            with model_lock(model), torch.no_grad():
                _, cache = model.run_with_cache(batch, names_filter=list(names))
            for name in names:
                parts[name].append(cache[name])
        acts = {name: torch.cat(parts[name]) for name in names}
    mean = {name: act.mean(dim=0, keepdim=True) for name, act in acts.items()}
    return ReferenceSet(plan, acts, mean)
