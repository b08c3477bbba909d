"""Results -> plotly figure dicts. Pure functions: no web, no torch, easy to test.

Every figure states its metric and corruption in its title (the corruption and the metric are part
of the claim), uses a diverging scale centred on "no effect" (the unpatched base run), and hovers
as "L3 H5: 0.82".
"""

from __future__ import annotations

import html
from typing import Any

from patchstudio.results import PatchResult
from patchstudio.specs import COMPONENT_LABELS, METRIC_LABELS

COLORSCALE = "RdBu"


def no_effect(result: PatchResult) -> float:
    """The metric of the run being intervened on: what a patch with no effect leaves."""
    spec = result.spec
    if spec.method in ("self_repair", "input_influence"):  # these show changes and shares, not metric values
        return 0.0
    if spec.method != "ablation" and spec.direction == "denoise":
        return result.corrupted
    return result.clean


def safe(text: str) -> str:
    """Plotly renders a few HTML-like tags in labels; escape tokens so they show as text."""
    return html.escape(text, quote=False)


def pos_labels(result: PatchResult) -> list[str]:
    return [f"{i} {safe(tok)}" for i, tok in enumerate(result.labels.get("pos", []))]


def describe(result: PatchResult) -> str:
    """One line: method, component, metric and corruption."""
    spec = result.spec
    if spec.method in ("activation_patching", "attribution_patching", "path_patching"):
        how = "denoising: clean → corrupted run" if spec.direction == "denoise" else "noising: corrupted → clean run"
        method = f"activation patching ({how})"
        if spec.method == "path_patching":
            to = ", ".join(f"L{r.layer}H{r.head}.{r.input}" for r in spec.receivers) or "the logits"
            method = f"path patching from each head to {to} ({how})"
        if spec.method == "attribution_patching":
            estimate = "linear estimate" if spec.steps == 1 else f"EAP-IG estimate, {spec.steps} steps"
            method = f"attribution patching ({estimate}; {how})"
    elif spec.method == "input_influence":
        how = "gradient × input" if spec.steps == 1 else f"integrated gradients from the corrupted prompt, {spec.steps} steps"
        method = f"input influence of each clean token ({how})"
    elif spec.method == "self_repair":
        targets = " ".join(f"L{t.layer}H{t.head}" for t in spec.targets)
        method = f"self-repair after {spec.ablation}-ablating {targets} (heatmap: each head's change in direct effect)"
    else:
        method = f"{spec.ablation} ablation of the clean run"
    return (
        f"{method} · {COMPONENT_LABELS[spec.component]} · metric: {METRIC_LABELS[spec.metric]} · "
        f"{corruption_summary(result)}"
    )


def corruption_summary(result: PatchResult) -> str:
    n = len(result.prompts)
    first = result.prompts[0]
    differ = ", ".join(f"{i}: {safe(first.clean[i])}→{safe(first.corrupted[i])}" for i in first.differ[:4])
    more = "…" if len(first.differ) > 4 else ""
    return f"corruption: {n} pair{'s' if n != 1 else ''}, prompt 1 differs at {differ or 'no position'}{more}"


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


def _layout(title: str, x_title: str, y_title: str) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "xaxis": {"title": {"text": x_title}, "type": "category"},
        "yaxis": {"title": {"text": y_title}, "type": "category", "autorange": "reversed"},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 90},
        "height": 420,
    }


def heatmap(result: PatchResult, pos: int | None = None) -> dict[str, Any]:
    """Layer x head, layer x position, or (for per-position head sweeps) layer x head at ``pos``."""
    axes = result.axes
    base = no_effect(result)
    metric = METRIC_LABELS[result.spec.metric]
    layers = [f"L{i}" for i in range(len(result.values))]
    if axes == ["layer"]:
        return layer_bars(result)
    if axes == ["pos"]:
        return token_bars(result)
    if axes == ["layer", "pos", "head"]:
        pos = default_pos(result) if pos is None else pos
        z = [row[pos] for row in result.values]
        title = f"{metric} by layer and head, position {pos} ({safe(result.labels['pos'][pos])})"
        columns = [f"H{h}" for h in range(len(z[0]))]
        custom = [[[layer, pos, h] for h in range(len(z[0]))] for layer in range(len(z))]
        text = [[f"L{l} H{h} @ {pos}: {v:.3f}" for h, v in enumerate(row)] for l, row in enumerate(z)]
        x_title = "head"
    elif axes == ["layer", "head"]:
        z = result.values
        title = f"{metric} by layer and head"
        columns = [f"H{h}" for h in range(len(z[0]))]
        custom = [[[layer, None, h] for h in range(len(z[0]))] for layer in range(len(z))]
        text = [[f"L{l} H{h}: {v:.3f}" for h, v in enumerate(row)] for l, row in enumerate(z)]
        x_title = "head"
    elif axes == ["layer", "pos"]:
        z = result.values
        title = f"{metric} by layer and position"
        columns = pos_labels(result)
        custom = [[[layer, p, None] for p in range(len(z[0]))] for layer in range(len(z))]
        text = [[f"L{l} {columns[p]}: {v:.3f}" for p, v in enumerate(row)] for l, row in enumerate(z)]
        x_title = "position"
    else:  # pragma: no cover - every engine result has one of the shapes above
        raise ValueError(f"no heatmap for axes {axes}")
    span = max([abs(v - base) for row in z for v in row] + [1e-9])
    trace = {
        "type": "heatmap",
        "z": z,
        "x": columns,
        "y": layers,
        "text": text,
        "customdata": custom,
        "hovertemplate": "%{text}<extra></extra>",
        "colorscale": COLORSCALE,
        "reversescale": True,
        "zmid": base,
        "zmin": base - span,
        "zmax": base + span,
        "colorbar": {"title": {"text": "metric"}},
        "xgap": 1,
        "ygap": 1,
    }
    return {"data": [trace], "layout": _layout(title, x_title, "layer")}


def layer_bars(result: PatchResult) -> dict[str, Any]:
    metric = METRIC_LABELS[result.spec.metric]
    values = result.values
    trace = {
        "type": "bar",
        "x": [f"L{i}" for i in range(len(values))],
        "y": values,
        "text": [f"L{i}: {v:.3f}" for i, v in enumerate(values)],
        "customdata": [[i, None, None] for i in range(len(values))],
        "hovertemplate": "%{text}<extra></extra>",
        "marker": {"color": "#4c78a8"},
    }
    layout = _layout(f"{metric} by layer (every position)", "layer", "metric")
    layout["yaxis"] = {"title": {"text": "metric"}}
    layout["shapes"] = [
        {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": no_effect(result), "y1": no_effect(result),
         "line": {"dash": "dot", "color": "#888"}}
    ]
    return {"data": [trace], "layout": layout}


def cell_value(result: PatchResult, layer: int, pos: int | None, head: int | None) -> float:
    value: Any = result.values[layer]
    axes = result.axes[1:]
    for axis in axes:
        index = pos if axis == "pos" else head
        if index is None:
            raise ValueError(f"this result needs a {axis} index")
        value = value[index]
    return float(value)


def cell_name(result: PatchResult, layer: int, pos: int | None, head: int | None) -> str:
    parts = [f"L{layer}"]
    if "head" in result.axes:
        parts.append(f"H{head}")
    if "pos" in result.axes:
        parts.append(f"@ {pos} {safe(result.labels['pos'][pos])}")
    return " ".join(parts)


def figure1(
    result: PatchResult, name: str, patched: float, ablated: float, ablation: str, patch_label: str = "patch clean"
) -> dict[str, Any]:
    """The seed's Figure 1: the metric on clean, corrupted, with the component patched, and ablated."""
    labels = ["clean", "corrupted", f"{patch_label} {name}", f"{ablation}-ablate {name}"]
    values = [result.clean, result.corrupted, patched, ablated]
    trace = {
        "type": "bar",
        "x": labels,
        "y": values,
        "text": [f"{v:.3f}" for v in values],
        "textposition": "auto",
        "hovertemplate": "%{x}: %{y:.3f}<extra></extra>",
        "marker": {"color": ["#4c78a8", "#e45756", "#54a24b", "#b279a2"]},
    }
    layout = {
        "title": {"text": f"{METRIC_LABELS[result.spec.metric]}: restoration vs ablation of {name}", "font": {"size": 14}},
        "yaxis": {"title": {"text": "metric"}, "zeroline": True},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 60},
        "height": 360,
    }
    return {"data": [trace], "layout": layout}


def verdict(result: PatchResult, patched: float, ablated: float, direction: str) -> str:
    """Plain words for what the two bars say together (sufficiency vs necessity)."""
    gap = result.clean - result.corrupted
    if abs(gap) < 1e-9:
        return "Clean and corrupted runs agree, so this corruption cannot show an effect."
    restored = ((patched - result.corrupted) if direction == "denoise" else (result.clean - patched)) / gap + 0.0
    dropped = (result.clean - ablated) / gap + 0.0  # + 0.0 turns -0.0 into 0.0 for display
    part = "restores" if direction == "denoise" else "breaks"
    text = f"Patching {part} {restored:.0%} of the clean–corrupted gap; ablating it removes {dropped:.0%}."
    if abs(restored) > 0.3 and abs(dropped) < 0.1:
        text += " Large patching effect but small ablation drop: redundancy or self-repair suspected."
    elif abs(dropped) > 0.3 and abs(restored) < 0.1:
        text += " Ablation hurts but patching does not restore: necessary here, not sufficient alone."
    return text


def repair_figure(result: PatchResult) -> dict[str, Any]:
    """Self-repair as bars: total effect vs direct effect, what was given back, the LN part."""
    x = result.extras or {}
    labels = ["total effect (TE)", "direct effect (DE)", "given back (TE − DE)", "LayerNorm scale part"]
    values = [x["total_effect"], x["direct_effect"], x["self_repair"], x["ln_scale_part"]]
    if "paired_total_effect" in x:
        labels.append("paired ablation TE")
        values.append(x["paired_total_effect"])
    trace = {"type": "bar", "x": labels, "y": values, "text": [f"{v:.3f}" for v in values], "textposition": "auto",
             "hovertemplate": "%{x}: %{y:.3f}<extra></extra>"}
    layout = {"title": {"text": f"{METRIC_LABELS[result.spec.metric]}: change on ablation", "font": {"size": 14}},
              "yaxis": {"title": {"text": "change in metric"}}, "height": 320, "margin": {"l": 60, "r": 20, "t": 50, "b": 60}}
    return {"data": [trace], "layout": layout}


def top_compensators(result: PatchResult, n: int = 5) -> list[tuple[str, float]]:
    """Heads and MLPs whose direct effect rose most when the targets were ablated."""
    targets = {(t.layer, t.head) for t in result.spec.targets}
    cells = [(f"L{l}H{h}", v) for l, row in enumerate(result.values) for h, v in enumerate(row) if (l, h) not in targets]
    cells += [(f"MLP{l}", v) for l, v in enumerate((result.extras or {}).get("mlp_delta", []))]
    return sorted(cells, key=lambda c: -c[1])[:n]


def triangulation_flags(rows: list[dict]) -> list[str]:
    """Plain-language readings where the methods disagree (shares of the clean-corrupted gap)."""
    share = {r["method"]: r["share"] for r in rows}
    patch = next(v for k, v in share.items() if k.startswith("activation patching"))
    ablate = next(v for k, v in share.items() if "ablation (necessity)" in k)
    flags = []
    if abs(patch) > 0.3 and abs(ablate) < 0.1:
        flags.append("Large patching effect but small ablation drop: redundancy or self-repair suspected.")
    if abs(ablate) > 0.3 and abs(patch) < 0.1:
        flags.append("Ablation hurts but patching alone does not restore: necessary, not sufficient.")
    attr = share.get("attribution estimate (linear)")
    if attr is not None and abs(attr - patch) > 0.2:
        flags.append(f"The linear estimate is off by {abs(attr - patch):.0%} of the gap: attribution is unreliable here.")
    path = share.get("path patching to the logits")
    if path is not None and abs(patch) > 0.2 and abs(path) < 0.5 * abs(patch):
        flags.append("Most of its effect goes through later components, not directly to the logits.")
    te = share.get("mean ablation: total effect (TE)")
    de = share.get("mean ablation: direct effect (DE)")
    if te is not None and de is not None and abs(de) > 0.1 and abs(te) < 0.5 * abs(de):
        flags.append("Its direct effect is larger than its total effect: the network compensates (self-repair).")
    return flags


def token_bars(result: PatchResult) -> dict[str, Any]:
    """Input influence: each clean token's share of the metric."""
    labels = pos_labels(result)
    trace = {"type": "bar", "x": labels, "y": result.values,
             "text": [f"{labels[i]}: {v:.3f}" for i, v in enumerate(result.values)],
             "hovertemplate": "%{text}<extra></extra>", "marker": {"color": "#4c78a8"}}
    layout = _layout(f"{METRIC_LABELS[result.spec.metric]}: share of each input token", "clean token", "share")
    layout["yaxis"] = {"title": {"text": "share of the metric"}}
    return {"data": [trace], "layout": layout}


def _flat_cells(result: PatchResult) -> list[tuple[str, float]]:
    """(cell name, value) for every cell, in row-major order."""
    import itertools

    sizes = [len(result.labels[a]) for a in result.axes]
    out = []
    for index in itertools.product(*(range(n) for n in sizes)):
        value: Any = result.values
        for i in index:
            value = value[i]
        cell = dict(zip(result.axes, index))
        out.append((cell_name(result, cell["layer"], cell.get("pos"), cell.get("head")), float(value)))
    return out


def _pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x) ** 0.5
    syy = sum((b - my) ** 2 for b in y) ** 0.5
    return sxy / (sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def _ranks(x: list[float]) -> list[float]:
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def agreement(estimate: PatchResult, exact: PatchResult, top: int = 5) -> dict[str, Any]:
    """How well attribution patching tracks exact activation patching, cell by cell."""
    est, ex = _flat_cells(estimate), _flat_cells(exact)
    x, y = [v for _, v in ex], [v for _, v in est]
    worst = sorted(range(len(x)), key=lambda i: -abs(y[i] - x[i]))[:top]
    trace = {"type": "scatter", "mode": "markers", "x": x, "y": y, "text": [name for name, _ in ex],
             "hovertemplate": "%{text}: exact %{x:.3f}, estimate %{y:.3f}<extra></extra>", "marker": {"size": 7}}
    low, high = min(x + y), max(x + y)
    layout = {"title": {"text": "attribution estimate vs exact activation patching", "font": {"size": 14}},
              "xaxis": {"title": {"text": "exact patch"}}, "yaxis": {"title": {"text": "estimate"}}, "height": 360,
              "shapes": [{"type": "line", "x0": low, "y0": low, "x1": high, "y1": high, "line": {"dash": "dot", "color": "#888"}}],
              "margin": {"l": 60, "r": 20, "t": 50, "b": 50}}
    return {
        "figure": {"data": [trace], "layout": layout},
        "pearson": _pearson(x, y),
        "spearman": _pearson(_ranks(x), _ranks(y)),
        "disagreements": [(ex[i][0], x[i], y[i]) for i in worst],
    }
