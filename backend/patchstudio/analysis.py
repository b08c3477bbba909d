"""Reading results: cells, baselines, triangulation, agreement, verdicts, compensators. Pure.

Importable from a notebook with no web code::

    from patchstudio import analysis
    specs = analysis.triangulation_specs(spec, layer=2, head=2)        # the runs to compare
    runs = {role: patchstudio.run(s, model=model) for role, s in specs.items()}
    table = analysis.triangulate(result, runs, layer=2, head=2)       # rows + plain-language flags

Every threshold a reading uses is a named constant here, so a page and a notebook read a result
the same way. "Triangulate necessity and sufficiency": a claim is stronger when restoration-style
(patching) and necessity-style (ablation) evidence tell the same story.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

from patchstudio.engine.methods import get_method
from patchstudio.engine.methods.attribution_patching import ATTRIBUTION_COMPONENTS
from patchstudio.results import PatchResult
from patchstudio.specs import METRIC_LABELS, SEQUENCE_METRIC_LABELS, HeadRef, SpecBase, spec_classes

# --- thresholds (shares of the clean-corrupted gap) ---------------------------------------------------

LARGE_SHARE = 0.3  # "large": patching restores / ablation removes at least this share of the gap
SMALL_SHARE = 0.1  # "small": under this share
ATTRIBUTION_OFF = 0.2  # the linear estimate is "unreliable" when it misses exact patching by more
PATH_MOSTLY_INDIRECT = 0.5  # "mostly through later components": the direct effect under this fraction of patching
PATH_MIN_PATCHING = 0.2  # ...judged only when patching itself is at least this share
DIRECT_MIN = 0.1  # self-repair judged only when the direct effect is at least this share
COMPENSATED = 0.5  # "compensates": the total effect under this fraction of the direct effect
ZERO_GAP = 1e-9  # clean and corrupted "agree": no share of the gap is defined


# --- cells -------------------------------------------------------------------------------------------


def percent(x: float) -> str:
    """'38%', never '-0%' (a share that rounds to zero is zero)."""
    return f"{round(100 * x) + 0:d}%"


def position_roles(result: PatchResult) -> list[str]:
    """Wang et al.'s names for the positions of an IOI-shaped prompt: IO (the answer name), S1 and
    S2 (the repeated subject name), END (the final position, where the metric is read); '' for the
    others. Only when every pair has that shape at the same positions (else all '')."""
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


def metric_label(result: PatchResult) -> str:
    """The metric in words, as this result measured it: answers of several tokens are scored as
    sequences (summed log-probabilities), not as the logits of one token."""
    if multi_token(result):
        return SEQUENCE_METRIC_LABELS[result.spec.metric]
    return METRIC_LABELS[result.spec.metric]


def corruption_summary(result: PatchResult) -> str:
    """'corruption: 1 pair, prompt 1 differs at 10: John→Mary' (plain text)."""
    n = len(result.prompts)
    first = result.prompts[0]
    differ = ", ".join(f"{i}: {first.clean[i]}→{first.corrupted[i]}" for i in first.differ[:4])
    more = "…" if len(first.differ) > 4 else ""
    return f"corruption: {n} pair{'s' if n != 1 else ''}, prompt 1 differs at {differ or 'no position'}{more}"


def no_effect(result: PatchResult) -> float:
    """The value a cell takes when the intervention changes nothing (per the method's definition)."""
    return get_method(result.spec.method).no_effect(result.spec, result.clean, result.corrupted)


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
    """'L1 H3 @ 10 John' (plain text: a drawing escapes it)."""
    parts = [f"L{layer}"] if "layer" in result.axes else []
    if "head" in result.axes:
        parts.append(f"H{head}")
    if "pos" in result.axes:
        parts.append(f"@ {pos} {result.labels['pos'][pos]}")
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


def default_pos(result: PatchResult) -> int:
    """For a (layer, pos, head) result: the position with the largest effect."""
    base = no_effect(result)
    best, best_pos = -1.0, len(result.labels["pos"]) - 1
    for layer in result.values:
        for pos, heads in enumerate(layer):
            effect = max(abs(v - base) for v in heads)
            if effect > best:
                best, best_pos = effect, pos
    return best_pos


def strongest_cell(result: PatchResult, pos: int | None = None) -> dict[str, int | None]:
    """The cell with the largest effect (at position ``pos`` for a per-position head sweep)."""
    base = no_effect(result)
    best: tuple[float, dict[str, int | None]] = (-1.0, {"layer": None, "pos": pos, "head": None})
    for cell, value in flat_cells(result):
        if result.axes == ["layer", "pos", "head"] and cell["pos"] != pos:
            continue
        if abs(value - base) > best[0]:
            best = (abs(value - base), {"layer": cell.get("layer"), "pos": cell.get("pos"), "head": cell.get("head")})
    return best[1]


# --- views: raw metric, change from "no effect", share of the clean-corrupted gap ------------------------

VIEWS = ("share", "change", "raw")
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


def multi_token(result: PatchResult) -> bool:
    """Some prompt's answer or wrong answer has several tokens (scored as a sequence)."""
    return any(p.answer_tokens > 1 or p.wrong_tokens > 1 for p in result.prompts)


def metric_unit(result: PatchResult) -> str:
    return (SEQUENCE_METRIC_UNITS if multi_token(result) else METRIC_UNITS)[result.spec.metric]


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


def _base_run(result: PatchResult) -> str | None:
    """'clean' or 'corrupted': the run whose metric a cell with no effect keeps (None for methods
    whose cells are changes)."""
    method = get_method(result.spec.method)
    if method.values == "change":
        return None
    base = method.baseline(result.spec, 1.0, 0.0)  # which of the two it returns
    return "clean" if base == 1.0 else "corrupted"


def share_defined(result: PatchResult) -> bool:
    return abs(gap(result)) >= ZERO_GAP


def default_view(result: PatchResult) -> str:
    view = get_method(result.spec.method).default_view
    return "change" if view == "share" and not share_defined(result) else view


def _map(values: Any, fn) -> Any:
    return [_map(v, fn) for v in values] if isinstance(values, list) else fn(values)


def view(result: PatchResult, name: str | None = None) -> View:
    """The result's cells in view ``name`` (default: the method's default view).

    - ``raw``: the metric after the intervention (for change-valued methods, the change itself);
    - ``change``: raw minus "no effect" (the intervened run's metric);
    - ``share``: the change as a share of the clean-corrupted gap, signed so that 1 is the whole
      gap in the intervention's direction: restored (denoising), destroyed (noising, ablation).
    Share needs a non-zero gap; without one, ``change`` is shown and ``note`` says why.
    """
    name = name or default_view(result)
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}: use one of {', '.join(VIEWS)}")
    unit = metric_unit(result)
    base = no_effect(result)
    base_run = _base_run(result)
    method = get_method(result.spec.method)
    note = ""
    if name == "share" and not share_defined(result):
        name, note = "change", "share of the gap is undefined: the clean and corrupted runs have the same metric"

    def made(fn, no_effect_value: float, title: str) -> View:
        return View(name, _map(result.values, fn), no_effect_value, title, note, fn)

    if method.values == "change":
        what = "change in direct effect" if result.spec.method == "self_repair" else "contribution"
        if name == "share":
            g = gap(result)
            return made(lambda v: v / g, 0.0, f"{what} as a share of the clean−corrupted gap ({unit} {g:.3g}); 0 = none")
        return made(lambda v: v, 0.0, f"{what} ({unit}); 0 = none")
    if name == "raw":
        return made(lambda v: v, base, f"{unit}; no effect = {base:.3g} (the {base_run} run)")
    if name == "change":
        return made(lambda v: v - base, 0.0, f"change in {unit} from the {base_run} run; 0 = no effect")
    other = result.clean if base_run == "corrupted" else result.corrupted
    span = other - base
    if base_run == "corrupted":
        title = "share of the clean−corrupted gap restored; 0 = corrupted run, 1 = clean run"
    elif result.spec.method == "ablation":
        title = f"share of the clean−corrupted gap removed by {result.spec.ablation} ablation; 0 = no effect"
    else:
        title = "share of the clean−corrupted gap destroyed; 0 = clean run, 1 = corrupted run"
    return made(lambda v: (v - base) / span, 0.0, title)


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


def cell_prompts(result: PatchResult, view_name: str | None, layer: int | None, pos: int | None,
                 head: int | None) -> CellPrompts | None:
    """The per-prompt values of one cell (None when the result has no per-prompt values stored).
    Raises ValueError, like ``cell_value``, for a cell the result does not have."""
    mean_raw = cell_value(result, layer, pos, head)
    if result.per_prompt is None:
        return None
    shown = view(result, view_name)
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


def all_views(result: PatchResult) -> dict[str, Any]:
    """Every defined view's values, for the .json twin."""
    out: dict[str, Any] = {"default": default_view(result), "no_effect": no_effect(result), "gap": gap(result)}
    for name in VIEWS:
        v = view(result, name)
        out[name] = {"values": v.values, "title": v.title} if v.name == name else None
    return out


def evidence(result: PatchResult) -> str:
    """What kind of evidence the result's cells are (from the method and its direction)."""
    return get_method(result.spec.method).evidence(result.spec)


# --- two runs side by side ---------------------------------------------------------------------------


def axes_shape(result: PatchResult) -> list[tuple[str, int]]:
    return [(a, len(result.labels[a])) for a in result.axes]


def compare(a: PatchResult, b: PatchResult, view_name: str | None = None) -> dict[str, Any]:
    """Two results cell by cell in one view: both views' values, their difference (a - b), one
    shared range, and a title naming the unit. Raises ValueError (in words) when the axes differ
    or when the view's unit differs between the two (then the share of the gap still compares)."""
    if axes_shape(a) != axes_shape(b):
        def shape(r: PatchResult) -> str:
            plural = {"layer": "layers", "head": "heads", "pos": "positions"}
            return " × ".join(f"{n} {plural[ax]}" for ax, n in axes_shape(r))

        raise ValueError(f"run A has {shape(a)} and run B has {shape(b)}: they cannot be compared cell by cell")
    name = view_name or default_view(a)
    va, vb = view(a, name), view(b, name)
    if va.name != vb.name:
        raise ValueError(f"the {name} view is not defined for both runs; compare them in another view")
    if va.title != vb.title and name != "share":
        raise ValueError(
            f"the runs' {name} values are in different units ({va.title} vs {vb.title}); compare them as a share of the gap"
        )
    flat_a = [v for _, v in flat_cells(a, va.values)]
    flat_b = [v for _, v in flat_cells(b, vb.values)]
    diff = _map_pair(va.values, vb.values)
    return {
        "view": va.name,
        "title": va.title if va.title == vb.title else f"{va.title} (A) / {vb.title} (B)",
        "a": va.values,
        "b": vb.values,
        "diff": diff,
        "no_effect": va.no_effect,
        "range": [min(flat_a + flat_b + [va.no_effect]), max(flat_a + flat_b + [va.no_effect])],
        "max_abs_diff": max(abs(x - y) for x, y in zip(flat_a, flat_b)),
        "same_prompts": [p.model_dump() for p in a.prompts] == [p.model_dump() for p in b.prompts],
        "same_metric": a.spec.metric == b.spec.metric,
    }


def _map_pair(x: Any, y: Any) -> Any:
    return [_map_pair(p, q) for p, q in zip(x, y)] if isinstance(x, list) else x - y


# --- one component under several methods -------------------------------------------------------------


def gap(result: PatchResult) -> float:
    return result.clean - result.corrupted


def verdict(result: PatchResult, patched: float, ablated: float, direction: str) -> str:
    """Plain words for what the patching and ablation bars say together."""
    g = gap(result)
    if abs(g) < ZERO_GAP:
        return "Clean and corrupted runs agree, so this corruption cannot show an effect."
    restored = ((patched - result.corrupted) if direction == "denoise" else (result.clean - patched)) / g
    dropped = (result.clean - ablated) / g
    part = "restores" if direction == "denoise" else "breaks"
    text = f"Patching {part} {percent(restored)} of the clean–corrupted gap; ablating it removes {percent(dropped)}."
    if abs(restored) > LARGE_SHARE and abs(dropped) < SMALL_SHARE:
        text += " Large patching effect but small ablation drop: redundancy or self-repair suspected."
    elif abs(dropped) > LARGE_SHARE and abs(restored) < SMALL_SHARE:
        text += " Ablation hurts but patching does not restore: necessary here, not sufficient alone."
    return text


def _common(spec: SpecBase) -> dict[str, Any]:
    return {"model": spec.model, "prompts": spec.prompts, "component": spec.component, "positions": spec.positions, "metric": spec.metric}


def _spec(method: str, **fields: Any) -> SpecBase:
    return spec_classes()[method](**fields)


def exact_patching_spec(spec: SpecBase) -> SpecBase:
    """Exact activation patching of the same sweep (an attribution spec keeps its direction)."""
    return _spec("activation_patching", direction=getattr(spec, "direction", "denoise"), **_common(spec))


def mean_ablation_spec(spec: SpecBase) -> SpecBase:
    """Mean ablation of the same component on the clean run."""
    return _spec("ablation", ablation="mean", **_common(spec))


def triangulation_specs(spec: SpecBase, layer: int | None = None, head: int | None = None) -> dict[str, SpecBase]:
    """The companion runs that put one component of ``spec`` under every method, on the same prompts
    and metric: exact patching and (mean) ablation always; the attribution estimate where the
    component supports it; for a whole head, path patching to the logits (MLPs recomputed), the
    direct effect (through the unembedding alone, key "direct") and self-repair's TE/DE."""
    out = {
        "patching": exact_patching_spec(spec),
        # an ablation run is its own necessity bar, under its own ablation
        "ablation": spec if spec.method == "ablation" else mean_ablation_spec(spec),
    }
    common = _common(spec)
    direction = out["patching"].direction
    if spec.method == "attribution_patching":  # the page's own estimate (linear or EAP-IG)
        out["attribution"] = spec
    elif spec.component in ATTRIBUTION_COMPONENTS:
        out["attribution"] = _spec("attribution_patching", direction=direction, **common)
    if spec.component == "head" and spec.positions == "all" and head is not None and layer is not None:
        out["path"] = _spec("path_patching", direction=direction, **common)
        out["direct"] = _spec("direct_effect", direction=direction, **common)
        if spec.metric == "logit_diff":
            out["repair"] = _spec("self_repair", targets=[HeadRef(layer=layer, head=head)], **common)
    return out


@dataclass(frozen=True)
class Triangulation:
    rows: list[dict[str, Any]] = field(default_factory=list)  # key, method, value, share, run_id
    flags: list[str] = field(default_factory=list)


def triangulate(result: PatchResult, runs: dict[str, PatchResult], layer: int | None, pos: int | None, head: int | None) -> Triangulation:
    """The selected cell under every method in ``runs`` (from ``triangulation_specs``), each as a
    share of the clean-corrupted gap (movement away from the intervened run, towards the other),
    with plain-language flags where they disagree."""
    g = gap(result)
    if abs(g) < ZERO_GAP:
        return Triangulation()
    patching = runs["patching"]
    direction = patching.spec.direction
    base = result.corrupted if direction == "denoise" else result.clean

    def share(value: float) -> float:
        return (value - base) / g if direction == "denoise" else (base - value) / g

    rows = []

    def add(key: str, label: str, value: float, share_of_gap: float, run: PatchResult) -> None:
        rows.append({"key": key, "method": label, "value": value, "share": share_of_gap, "run_id": run.id})

    kind = "restoration, sufficiency-style" if direction == "denoise" else "noising, necessity-style"
    value = cell_value(patching, layer, pos, head)
    add("patching", f"activation patching ({kind})", value, share(value), patching)
    ablation = runs["ablation"]
    value = cell_value(ablation, layer, pos, head)
    add("ablation", f"{ablation.spec.ablation} ablation (necessity-style)", value, (result.clean - value) / g, ablation)
    if "attribution" in runs:
        attribution = runs["attribution"]
        steps = attribution.spec.steps
        how = "linear" if steps == 1 else f"EAP-IG, {steps} steps"
        value = cell_value(attribution, layer, pos, head)
        add("attribution", f"attribution estimate ({how}) of the patching row", value, share(value), attribution)
    if "path" in runs:
        value = cell_value(runs["path"], layer, None, head)
        add("path", f"path patching to the logits, MLPs recomputed ({kind})", value, share(value), runs["path"])
    if "direct" in runs:
        value = cell_value(runs["direct"], layer, None, head)
        add("direct", f"direct effect on the logits, final LayerNorm scale frozen ({kind})", value, share(value), runs["direct"])
    if "repair" in runs:
        repair = runs["repair"]
        x = repair.extras or {}
        how = f"{repair.spec.ablation} ablation"
        # changes of the metric on the clean run: as a share of the gap, a drop counts positive
        add("total_effect", f"{how}: total effect (TE, change)", x["total_effect"], -x["total_effect"] / g, repair)
        add("direct_effect", f"{how}: direct effect (DE, change)", x["direct_effect"], -x["direct_effect"] / g, repair)
    return Triangulation(rows, triangulation_flags({r["key"]: r["share"] for r in rows}))


def triangulation_flags(share: dict[str, float]) -> list[str]:
    """Plain-language readings where the methods disagree, from shares of the gap by row key
    (patching, ablation, attribution, path, direct, total_effect, direct_effect). "Through later
    components" is judged on the direct effect ("direct"), not on path patching to the logits,
    whose path also runs through every later MLP."""
    patch, ablate = share["patching"], share["ablation"]
    flags = []
    if abs(patch) > LARGE_SHARE and abs(ablate) < SMALL_SHARE:
        flags.append("Large patching effect but small ablation drop: redundancy or self-repair suspected.")
    if abs(ablate) > LARGE_SHARE and abs(patch) < SMALL_SHARE:
        flags.append("Ablation hurts but patching alone does not restore: necessary, not sufficient.")
    attr = share.get("attribution")
    if attr is not None and abs(attr - patch) > ATTRIBUTION_OFF:
        flags.append(f"The linear estimate is off by {percent(abs(attr - patch))} of the gap: attribution is unreliable here.")
    direct = share.get("direct")
    if direct is not None and abs(patch) > PATH_MIN_PATCHING and abs(direct) < PATH_MOSTLY_INDIRECT * abs(patch):
        flags.append("Most of its effect goes through later components, not directly to the logits.")
    te, de = share.get("total_effect"), share.get("direct_effect")
    if te is not None and de is not None and abs(de) > DIRECT_MIN and abs(te) < COMPENSATED * abs(de):
        flags.append("Its direct effect is larger than its total effect: the network compensates (self-repair).")
    return flags


# --- attribution vs exact patching ---------------------------------------------------------------------


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


# --- self-repair -------------------------------------------------------------------------------------


def repair_reading(result: PatchResult) -> dict[str, Any]:
    """Self-repair's numbers named by what they are. TE - DE splits exactly into the other
    components' change in direct effect and the final LayerNorm scale's part; a response of the
    opposite sign to DE offsets it (compensation), of the same sign deepens it (amplification).
    With a compensator: its total effect alone, the sum of the two single ablations and what the
    paired ablation costs beyond that sum (``paired_excess``, in the direction of the drop)."""
    x = result.extras or {}
    te, de, ln = x["total_effect"], x["direct_effect"], x["ln_scale_part"]
    components = x["self_repair"] - ln

    def word(v: float) -> str:
        if abs(v) < 1e-9 or abs(de) < 1e-9:
            return "none"
        return "compensation" if (v > 0) != (de > 0) else "amplification"

    out = {
        "total_effect": te,
        "direct_effect": de,
        "response": x["self_repair"],  # TE - DE
        "response_word": word(x["self_repair"]),
        "components": components,
        "components_word": word(components),
        "components_compensate": word(components) == "compensation",
        "ln_scale_part": ln,
        "ln_word": word(ln),
        "paired_total_effect": x.get("paired_total_effect"),
        "compensator_total_effect": x.get("compensator_total_effect"),
        "singles_sum": None,
        "paired_excess": None,
        "paired_word": None,
    }
    if x.get("compensator_total_effect") is not None:
        out["singles_sum"] = te + x["compensator_total_effect"]
        excess = x["paired_total_effect"] - out["singles_sum"]
        out["paired_excess"] = excess
        # the drop's direction is TE's: an excess in that direction means the pair costs more than both alone
        same = (excess < 0) == (te < 0)
        out["paired_word"] = "none" if abs(excess) < 1e-9 else ("more than the two alone" if same else "less than the two alone")
    return out


@dataclass(frozen=True)
class Compensator:
    """A component whose direct effect moved against the targets' when they were ablated."""

    name: str  # "L3H1" or "MLP2"
    change: float  # its change in direct effect (logit diff)
    share: float | None  # that change as a share of |the targets' direct effect| (None when DE is 0)
    head: HeadRef | None  # the head, for a paired ablation (None for an MLP)


def top_compensators(result: PatchResult, n: int = 5) -> list[Compensator]:
    """Heads and MLPs whose direct effect moved most against the targets' direct effect (rose when
    the ablation lowered the metric, fell when it raised it), largest first; only compensating ones."""
    targets = {(t.layer, t.head) for t in result.spec.targets}
    x = result.extras or {}
    de = float(x.get("direct_effect", 0.0))
    sign = 1.0 if de < 0 else -1.0  # compensation has the opposite sign to DE
    cells = [(f"L{l}H{h}", v, HeadRef(layer=l, head=h)) for l, row in enumerate(result.values)
             for h, v in enumerate(row) if (l, h) not in targets]
    cells += [(f"MLP{l}", v, None) for l, v in enumerate(x.get("mlp_delta", []))]
    ranked = sorted(cells, key=lambda c: -sign * c[1])
    return [Compensator(name, v, (abs(v) / abs(de)) if abs(de) > 1e-9 else None, head)
            for name, v, head in ranked[:n] if sign * v > 0]
