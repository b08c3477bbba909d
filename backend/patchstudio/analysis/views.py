"""A result's cells and the ways to read them: raw, change from "no effect", share of the gap. Pure.

``read(result)`` asks the method registry once and returns a ``Reading``: the method, its "no
effect" baseline, units, evidence and every view of the cells. A page builds one per result and
hands it to its figures and templates; the module-level functions (``view``, ``no_effect``, ...)
read one thing each, for a notebook. Also here: two results side by side (``compare``) and how
well an estimate tracks exact patching (``agreement``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping

from patchstudio.engine.methods import Method, get_method
from patchstudio.engine.methods.base import ShareOf
from patchstudio.results import PatchResult
from patchstudio.specs import METRIC_LABELS, SEQUENCE_METRIC_LABELS

ZERO_GAP = 1e-9  # clean and corrupted "agree": no share of the gap is defined

VIEWS = ("share", "change", "raw")
VIEW_LABELS = {"share": "share of the gap", "change": "change from no effect", "raw": "raw metric"}
METRIC_UNITS = {
    "logit_diff": "logit diff",
    "normalized_logit_diff": "normalized logit diff",
    "prob": "P(answer)",
    "loss": "loss (nats)",
    "kl": "KL (nats)",
}
SEQUENCE_METRIC_UNITS = {  # answers of several tokens, scored as sequences
    "logit_diff": "sequence log-prob diff (nats)",
    "normalized_logit_diff": "normalized sequence log-prob diff",
    "prob": "P(answer sequence)",
    "loss": "sequence loss (nats)",
    "kl": "KL (nats)",
}


# --- cells -------------------------------------------------------------------------------------------


def percent(x: float) -> str:
    """'38%', never '-0%' (a share that rounds to zero is zero)."""
    return f"{round(100 * x) + 0:d}%"


def gap(result: PatchResult) -> float:
    return result.clean - result.corrupted


def position_roles(result: PatchResult) -> list[str]:
    """The role of each cell of the position axis. A per-position sweep is by role (``result.roles``:
    IO, S1, S2, END, the template's words, ...). A result stored before roles existed is by token
    index: there, Wang et al.'s names for an IOI-shaped prompt (IO, the answer name; S1 and S2, the
    repeated subject; END, the final position) where every pair has that shape at the same positions,
    '' for the others (all '' else)."""
    if result.roles is not None:
        return [index_role(r.role) for r in result.roles]
    n = len(result.prompts[0].clean)
    found: list[str] | None = None
    for p in result.prompts:
        words = [t.strip() for t in p.clean]
        io = [i for i, w in enumerate(words) if w == p.answer]
        s = [i for i, w in enumerate(words) if w == p.wrong]
        if len(io) != 1 or len(s) != 2 or len(words) != n:
            return [""] * n
        roles = [""] * n
        roles[io[0]], roles[s[0]], roles[s[1]] = "IO", "S1", "S2"
        roles[-1] = roles[-1] or "END"
        if found is not None and roles != found:
            return [""] * n
        found = roles
    return found or [""] * n


def index_role(role: str) -> str:
    """A cell aligned or picked by token index (a template slot, a chosen index) is stored with the
    bare index as its role: it reads 'pos 12', never a bare '12'."""
    return f"pos {role}" if role.isdigit() else role


def _slot_words(result: PatchResult, k: int, most: int = 2) -> str:
    """The tokens a cell holds across the prompts where they differ (a slot): 'drink, book, …'."""
    seen: list[str] = []
    for p, at in zip(result.prompts, result.roles[k].at):
        text = "".join(p.clean[i] for i in at).strip()
        if text not in seen:
            seen.append(text)
    return ", ".join(seen[:most]) + (", …" if len(seen) > most else "")


def position_tokens(result: PatchResult) -> list[str]:
    """Each cell of the position axis's token text where every prompt has the same one there (a
    role of one token), else '' (the names differ from prompt to prompt). By index (a result stored
    before roles): the first prompt's tokens."""
    if result.roles is None:
        return list(result.labels.get("pos", []))
    out = []
    for role in result.roles:
        texts = {tuple(p.clean[i] for i in at) for p, at in zip(result.prompts, role.at)}
        out.append("".join(texts.pop()) if len(texts) == 1 else "")
    return out


def position_labels(result: PatchResult) -> list[str]:
    """How the position axis reads (plain text: a drawing escapes it). By role: 'S2', with the token
    where every prompt has the same one ('END (to)'); a role that is a word names itself ('went'). By
    index (a result stored before roles): '10 John (S2)'. A cell by index (a template slot, a chosen
    index): 'pos 12 (drink)', or where the prompts differ there 'pos 12 (drink, book)'."""
    roles, tokens = position_roles(result), position_tokens(result)
    if result.roles is None:
        return [f"{i} {tok}" + (f" ({roles[i]})" if roles[i] else "") for i, tok in enumerate(tokens)]
    labels = [role if not tok.strip() or tok.strip() == role.split("#")[0] else f"{role} ({tok.strip()})"
              for role, tok in zip(roles, tokens)]
    labels = [f"{label} ({_slot_words(result, k)})" if cell.role.isdigit() and not tokens[k].strip() else label
              for k, (label, cell) in enumerate(zip(labels, result.roles))]
    if len({role.n for role in result.roles}) > 1:  # else the axis title says n once
        labels = [f"{label}, n = {role.n}" for label, role in zip(labels, result.roles)]
    return labels


def position_axis_title(result: PatchResult) -> str:
    """The position axis's title: by role, with how many prompts each cell averages ('position (role;
    n = 8 prompts per cell)'; where cells differ in n, each label carries its own). By index: 'position'."""
    if result.roles is None:
        return "position"
    counts = {role.n for role in result.roles}
    return f"position (role; n = {counts.pop()} prompts per cell)" if len(counts) == 1 else "position (role, n prompts)"


def multi_token(result: PatchResult) -> bool:
    """Some prompt's answer or wrong answer has several tokens (scored as a sequence)."""
    return any(p.answer_tokens > 1 or p.wrong_tokens > 1 for p in result.prompts)


def metric_label(result: PatchResult) -> str:
    """The metric in words, as this result measured it: answers of several tokens are scored as
    sequences (summed log-probabilities), not as the logits of one token."""
    return (SEQUENCE_METRIC_LABELS if multi_token(result) else METRIC_LABELS)[result.spec.metric]


def metric_unit(result: PatchResult) -> str:
    return (SEQUENCE_METRIC_UNITS if multi_token(result) else METRIC_UNITS)[result.spec.metric]


def corruption_summary(result: PatchResult) -> str:
    """'corruption: 1 pair, prompt 1 differs at 10: John→Mary' (plain text)."""
    n = len(result.prompts)
    first = result.prompts[0]
    differ = ", ".join(f"{i}: {first.clean[i]}→{first.corrupted[i]}" for i in first.differ[:4])
    more = "…" if len(first.differ) > 4 else ""
    return f"corruption: {n} pair{'s' if n != 1 else ''}, prompt 1 differs at {differ or 'no position'}{more}"


def cell_value(result: PatchResult, layer: int | None, pos: int | None, head: int | None) -> float:
    """The value at one cell; raises ValueError (naming the axis) when an index is missing or out of range."""
    value: Any = result.values
    for axis in result.axes:
        index = {"layer": layer, "pos": pos, "head": head}[axis]
        if index is None:
            raise ValueError(f"this result needs a {axis} index")
        if not 0 <= index < len(result.labels[axis]):
            raise ValueError(f"{axis} {index} is out of range (0 to {len(result.labels[axis]) - 1})")
        value = value[index]
    return float(value)


def cell_name(result: PatchResult, layer: int | None, pos: int | None, head: int | None) -> str:
    """'L1 H3 @ S2' ('L1 H3 @ 10 John (S2)' by index; plain text: a drawing escapes it)."""
    parts = [f"L{layer}"] if "layer" in result.axes else []
    if "head" in result.axes:
        parts.append(f"H{head}")
    if "pos" in result.axes:
        parts.append(f"@ {position_labels(result)[pos]}")
    return " ".join(parts)


def flat_cells(result: PatchResult, values: Any = None) -> list[tuple[dict[str, int], float]]:
    """({axis: index}, value) for every cell, in row-major order (of ``values``, nested like the
    result's: a view's, say; default the result's own)."""
    sizes = [len(result.labels[a]) for a in result.axes]
    out = []
    for index in itertools.product(*(range(n) for n in sizes)):
        value: Any = result.values if values is None else values
        for i in index:
            value = value[i]
        out.append((dict(zip(result.axes, index)), float(value)))
    return out


def axes_shape(result: PatchResult) -> list[tuple[str, int]]:
    return [(a, len(result.labels[a])) for a in result.axes]


def _map(values: Any, fn) -> Any:
    return [_map(v, fn) for v in values] if isinstance(values, list) else fn(values)


# --- views: raw metric, change from "no effect", share of the clean-corrupted gap ------------------------


@dataclass(frozen=True)
class View:
    """One way to read a result's cells: their values in this view, what 0 / "no effect" is, and a
    title that names the unit and the baseline (for a colour bar or an axis). ``of`` maps one raw
    value into the view (every view is affine in the raw value), so per-prompt values and interval
    ends read in the same units as the cells."""

    name: str
    values: Any  # nested like result.values
    no_effect: float
    title: str
    note: str = ""  # why a requested view was replaced, if it was
    of: Callable[[float], float] = field(default=lambda v: v, repr=False, compare=False)


@dataclass(frozen=True)
class CellPrompts:
    """One cell's value on each prompt, in a view's units, with the mean and its 95% interval."""

    cell: str  # 'L2 H2'
    view: View
    values: list[float]  # per prompt, in the view's units
    prompts: list[str]  # each prompt's clean text, for hovers
    mean: float
    ci_low: float | None  # None when the result predates the spread fields
    ci_high: float | None


@dataclass(frozen=True, eq=False)
class Reading:
    """A result read once: its method (the registry is asked once), what "no effect" is and which
    run keeps it, the metric's label and unit, the kind of evidence, and every view of the cells.
    Made by ``read``; figures and templates take it instead of reading the result again."""

    result: PatchResult
    method: Method
    no_effect: float
    base_run: str | None  # 'clean' or 'corrupted': the run a cell with no effect keeps; None for change-valued methods
    metric_label: str
    unit: str
    evidence: str  # what kind of evidence the cells are (from the method and its direction)
    default_view: str
    views: Mapping[str, View]  # every name in VIEWS; an undefined one holds its replacement (``note`` says why)
    span: float = 0.0  # the change (metric units) that is the whole gap in the intervention's direction: share 1
    share_base: ShareOf | None = None  # what the share view divides by where not the gap (then ``span`` is its value)

    @property
    def gap(self) -> float:
        return gap(self.result)

    @property
    def share_defined(self) -> bool:
        return abs(self.span if self.share_base is not None else self.gap) >= ZERO_GAP

    @property
    def share_name(self) -> str:
        """What a share is of, briefly: 'the gap', or "the clean run's logit difference"."""
        return "the gap" if self.share_base is None else self.share_base.name

    @property
    def share_words(self) -> str:
        """What a share is of, in full: 'the clean−corrupted gap', or "the clean run's logit difference,
        which the parts sum to"."""
        return "the clean−corrupted gap" if self.share_base is None else self.share_base.words

    def view_label(self, name: str) -> str:
        """A view's button label: 'share of the gap', "share of the clean run's logit difference"."""
        return f"share of {self.share_name}" if name == "share" else VIEW_LABELS[name]

    @property
    def intervenes(self) -> bool:
        """The cells come from interventions (every method but a reading of one run, the logit lens)."""
        return self.method.reads_run is None

    @property
    def changes(self) -> bool:
        """The cells are changes of the metric (their raw view is the change itself)."""
        return self.method.values == "change"

    @property
    def offered(self) -> list[str]:
        """The views a page offers: those defined for this result, without raw where it is the change."""
        return [n for n in VIEWS if self.views[n].name == n and not (n == "raw" and self.changes)]

    def view(self, name: str | None = None) -> View:
        """The cells in view ``name`` (default: the method's default view); see ``views.view``."""
        name = name or self.default_view
        if name not in VIEWS:
            raise ValueError(f"unknown view {name!r}: use one of {', '.join(VIEWS)}")
        return self.views[name]

    def all_views(self) -> dict[str, Any]:
        """Every defined view's values, for the .json twin."""
        out: dict[str, Any] = {"default": self.default_view, "no_effect": self.no_effect, "gap": self.gap,
                               "share_of": self.share_words, "share_base": self.span if self.share_base else self.gap}
        for name, v in self.views.items():
            out[name] = {"values": v.values, "title": v.title} if v.name == name else None
        return out

    @cached_property
    def default_pos(self) -> int:
        """For a (layer, pos, head) result: the position with the largest effect."""
        best, best_pos = -1.0, len(self.result.labels["pos"]) - 1
        for layer in self.result.values:
            for pos, heads in enumerate(layer):
                effect = max(abs(v - self.no_effect) for v in heads)
                if effect > best:
                    best, best_pos = effect, pos
        return best_pos

    def strongest_cell(self, pos: int | None = None) -> dict[str, int | None]:
        """The cell with the largest effect (at position ``pos`` for a per-position head sweep)."""
        result = self.result
        best: tuple[float, dict[str, int | None]] = (-1.0, {"layer": None, "pos": pos, "head": None})
        for cell, value in flat_cells(result):
            if result.axes == ["layer", "pos", "head"] and cell["pos"] != pos:
                continue
            if abs(value - self.no_effect) > best[0]:
                best = (abs(value - self.no_effect), {"layer": cell.get("layer"), "pos": cell.get("pos"), "head": cell.get("head")})
        return best[1]

    def cell_prompts(self, view_name: str | None, layer: int | None, pos: int | None, head: int | None) -> CellPrompts | None:
        """The per-prompt values of one cell (None when the result has no per-prompt values stored).
        Raises ValueError, like ``cell_value``, for a cell the result does not have."""
        result = self.result
        mean_raw = cell_value(result, layer, pos, head)
        if result.per_prompt is None:
            return None
        shown = self.view(view_name)
        path = [{"layer": layer, "pos": pos, "head": head}[axis] for axis in result.axes]

        def at(nested: Any) -> float:
            for i in path:
                nested = nested[i]
            return float(nested)

        interval: tuple[float | None, float | None] = (None, None)
        if result.ci_low is not None and result.ci_high is not None:
            ends = sorted((shown.of(at(result.ci_low)), shown.of(at(result.ci_high))))  # a negative span flips them
            interval = (ends[0], ends[1])
        return CellPrompts(
            cell=cell_name(result, layer, pos, head),
            view=shown,
            values=[shown.of(at(one)) for one in result.per_prompt],
            prompts=[p.clean for p in result.spec.prompts],
            mean=shown.of(mean_raw),
            ci_low=interval[0],
            ci_high=interval[1],
        )


def read(result: PatchResult | Reading) -> Reading:
    """Read a result once (a Reading is returned as it is).

    The views: ``raw``, the metric after the intervention (for change-valued methods, the change
    itself); ``change``, raw minus "no effect" (the intervened run's metric); ``share``, the change
    as a share of the clean-corrupted gap, signed so that 1 is the whole gap in the intervention's
    direction: restored (denoising), destroyed (noising, ablation); a method with its own
    ``share_of`` divides by that instead (direct logit attribution: the read run's logit difference,
    which its parts sum to). Share needs a non-zero denominator; without one, ``change`` stands in
    for it and its ``note`` says why.
    """
    if isinstance(result, Reading):
        return result
    spec = result.spec
    method = get_method(spec.method)
    base = method.no_effect(spec, result.clean, result.corrupted)
    unit = metric_unit(result)
    g = gap(result)
    share_base = method.share_of(spec, result.clean, result.corrupted) if method.share_of is not None else None
    share_defined = abs(g if share_base is None else share_base.base) >= ZERO_GAP
    default_view = "change" if method.default_view == "share" and not share_defined else method.default_view
    base_run = None
    if method.values != "change":
        base_run = "clean" if method.baseline(spec, 1.0, 0.0) == 1.0 else "corrupted"  # which of the two it returns

    def made(name: str, fn: Callable[[float], float], no_effect_value: float, title: str, note: str = "") -> View:
        return View(name, _map(result.values, fn), no_effect_value, title, note, fn)

    if method.reads_run is not None:  # a reading of one run: its values, and nothing to change from
        raw = made("raw", lambda v: v, base, method.reads_run(spec, unit))
        instead = made("raw", lambda v: v, base, raw.title,
                       f"the {method.title} reads one run and intervenes on nothing: it has no change or share of an effect")
        return Reading(result, method, base, None, metric_label(result), unit, method.evidence(spec), "raw",
                       {"share": instead, "change": instead, "raw": raw})

    views: dict[str, View] = {}
    span = (g if share_base is None else share_base.base) if method.values == "change" else (result.clean if base_run == "corrupted" else result.corrupted) - base
    if method.values == "change":
        what = "change in direct effect" if spec.method == "self_repair" else "contribution"
        views["raw"] = made("raw", lambda v: v, 0.0, f"{what} ({unit}); 0 = none")
        views["change"] = made("change", lambda v: v, 0.0, f"{what} ({unit}); 0 = none")
        if share_defined:
            words = "the clean−corrupted gap" if share_base is None else share_base.words
            views["share"] = made("share", lambda v: v / span, 0.0, f"{what} as a share of {words} ({unit} {span:.3g}); 0 = none")
    else:
        views["raw"] = made("raw", lambda v: v, base, f"{unit}; no effect = {base:.3g} (the {base_run} run)")
        views["change"] = made("change", lambda v: v - base, 0.0, f"change in {unit} from the {base_run} run; 0 = no effect")
        if share_defined:
            if base_run == "corrupted":
                title = "share of the clean−corrupted gap restored; 0 = corrupted run, 1 = clean run"
            elif spec.method == "ablation":
                title = f"share of the clean−corrupted gap removed by {spec.ablation} ablation; 0 = no effect"
            else:
                title = "share of the clean−corrupted gap destroyed; 0 = clean run, 1 = corrupted run"
            views["share"] = made("share", lambda v: (v - base) / span, 0.0, title)
    if not share_defined:
        change = views["change"]
        why = ("the clean and corrupted runs have the same metric" if share_base is None
               else f"{share_base.name} is 0")
        views["share"] = View(change.name, change.values, change.no_effect, change.title,
                              f"share of {'the gap' if share_base is None else share_base.name} is undefined: {why}", change.of)
    return Reading(result, method, base, base_run, metric_label(result), unit, method.evidence(spec), default_view,
                   {name: views[name] for name in VIEWS}, span, share_base)


# --- one thing at a time, for a notebook (a page uses one Reading) ----------------------------------------


def view(result: PatchResult | Reading, name: str | None = None) -> View:
    """The result's cells in view ``name`` (default: the method's default view); see ``read``."""
    return read(result).view(name)


def no_effect(result: PatchResult | Reading) -> float:
    """The value a cell takes when the intervention changes nothing (per the method's definition)."""
    return read(result).no_effect


def share_defined(result: PatchResult | Reading) -> bool:
    """The share view's denominator is not 0: the clean and corrupted runs differ (or, for a method
    whose shares are of another number, that number is not 0)."""
    return read(result).share_defined


def default_view(result: PatchResult | Reading) -> str:
    return read(result).default_view


def evidence(result: PatchResult | Reading) -> str:
    """What kind of evidence the result's cells are (from the method and its direction)."""
    return read(result).evidence


def all_views(result: PatchResult | Reading) -> dict[str, Any]:
    """Every defined view's values, for the .json twin."""
    return read(result).all_views()


def default_pos(result: PatchResult | Reading) -> int:
    """For a (layer, pos, head) result: the position with the largest effect."""
    return read(result).default_pos


def strongest_cell(result: PatchResult | Reading, pos: int | None = None) -> dict[str, int | None]:
    """The cell with the largest effect (at position ``pos`` for a per-position head sweep)."""
    return read(result).strongest_cell(pos)


def cell_prompts(result: PatchResult | Reading, view_name: str | None, layer: int | None, pos: int | None,
                 head: int | None) -> CellPrompts | None:
    """The per-prompt values of one cell in a view (None without stored per-prompt values)."""
    return read(result).cell_prompts(view_name, layer, pos, head)


# --- two runs side by side ---------------------------------------------------------------------------


def compare(a: PatchResult | Reading, b: PatchResult | Reading, view_name: str | None = None) -> dict[str, Any]:
    """Two results cell by cell in one view: both views' values, their difference (a - b), one
    shared range, and a title naming the unit. Raises ValueError (in words) when the axes differ
    or when the view's unit differs between the two (then the share of the gap still compares)."""
    ra, rb = read(a), read(b)
    a, b = ra.result, rb.result
    if axes_shape(a) != axes_shape(b):
        def shape(r: PatchResult) -> str:
            plural = {"layer": "layers", "head": "heads", "pos": "positions"}
            return " × ".join(f"{n} {plural[ax]}" for ax, n in axes_shape(r))

        raise ValueError(f"run A has {shape(a)} and run B has {shape(b)}: they cannot be compared cell by cell")
    name = view_name or ra.default_view
    va, vb = ra.view(name), rb.view(name)
    if va.name != vb.name:
        raise ValueError(f"the {name} view is not defined for both runs; compare them in another view")
    if va.title != vb.title and name != "share":
        raise ValueError(
            f"the runs' {name} values are in different units ({va.title} vs {vb.title}); compare them as a share of the gap"
        )
    flat_a = [v for _, v in flat_cells(a, va.values)]
    flat_b = [v for _, v in flat_cells(b, vb.values)]
    return {
        "view": va.name,
        "title": va.title if va.title == vb.title else f"{va.title} (A) / {vb.title} (B)",
        "a": va.values,
        "b": vb.values,
        "diff": _map_pair(va.values, vb.values),
        "no_effect": va.no_effect,
        "range": [min(flat_a + flat_b + [va.no_effect]), max(flat_a + flat_b + [va.no_effect])],
        "max_abs_diff": max(abs(x - y) for x, y in zip(flat_a, flat_b)),
        "same_prompts": [p.model_dump() for p in a.prompts] == [p.model_dump() for p in b.prompts],
        "same_metric": a.spec.metric == b.spec.metric,
    }


def _map_pair(x: Any, y: Any) -> Any:
    return [_map_pair(p, q) for p, q in zip(x, y)] if isinstance(x, list) else x - y


# --- an estimate against exact patching ----------------------------------------------------------------


def pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x) ** 0.5
    syy = sum((b - my) ** 2 for b in y) ** 0.5
    return sxy / (sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def ranks(x: list[float]) -> list[float]:
    """Ranks from 0, ties sharing their average rank."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    out = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def agreement(estimate: PatchResult, exact: PatchResult, top: int = 5) -> dict[str, Any]:
    """How well an estimate (attribution patching) tracks exact activation patching, cell by cell:
    Pearson and Spearman correlations and the ``top`` cells where they differ most."""
    names = [cell_name(exact, c.get("layer"), c.get("pos"), c.get("head")) for c, _ in flat_cells(exact)]
    x = [v for _, v in flat_cells(exact)]
    y = [v for _, v in flat_cells(estimate)]
    worst = sorted(range(len(x)), key=lambda i: -abs(y[i] - x[i]))[:top]
    return {
        "names": names,
        "exact": x,
        "estimate": y,
        "pearson": pearson(x, y),
        "spearman": pearson(ranks(x), ranks(y)),
        "disagreements": [(names[i], x[i], y[i]) for i in worst],
    }
