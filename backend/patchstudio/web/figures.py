"""Results -> plotly figure dicts. Pure functions that draw and never decide: what a cell means,
its baseline and every reading come from ``patchstudio.analysis``.

Every figure states its metric and corruption in its title (the corruption and the metric are part
of the claim), uses a diverging scale centred on "no effect" (the unpatched base run), and hovers
as "L3 H5: 0.82".
"""

from __future__ import annotations

import html
from typing import Any

from patchstudio.analysis import default_pos, no_effect
from patchstudio.results import PatchResult
from patchstudio.specs import METRIC_LABELS

COLORSCALE = "RdBu"


def safe(text: str) -> str:
    """Plotly renders a few HTML-like tags in labels; escape tokens so they show as text."""
    return html.escape(text, quote=False)


def pos_labels(result: PatchResult) -> list[str]:
    return [f"{i} {safe(tok)}" for i, tok in enumerate(result.labels.get("pos", []))]


def corruption_summary(result: PatchResult) -> str:
    n = len(result.prompts)
    first = result.prompts[0]
    differ = ", ".join(f"{i}: {safe(first.clean[i])}→{safe(first.corrupted[i])}" for i in first.differ[:4])
    more = "…" if len(first.differ) > 4 else ""
    return f"corruption: {n} pair{'s' if n != 1 else ''}, prompt 1 differs at {differ or 'no position'}{more}"


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


def token_bars(result: PatchResult) -> dict[str, Any]:
    """Input influence: each clean token's share of the metric."""
    labels = pos_labels(result)
    trace = {"type": "bar", "x": labels, "y": result.values,
             "text": [f"{labels[i]}: {v:.3f}" for i, v in enumerate(result.values)],
             "hovertemplate": "%{text}<extra></extra>", "marker": {"color": "#4c78a8"}}
    layout = _layout(f"{METRIC_LABELS[result.spec.metric]}: share of each input token", "clean token", "share")
    layout["yaxis"] = {"title": {"text": "share of the metric"}}
    return {"data": [trace], "layout": layout}


def agreement_scatter(stats: dict[str, Any]) -> dict[str, Any]:
    """Estimate against exact patching, one point per cell (``analysis.agreement``'s numbers)."""
    x, y = stats["exact"], stats["estimate"]
    trace = {"type": "scatter", "mode": "markers", "x": x, "y": y, "text": [safe(n) for n in stats["names"]],
             "hovertemplate": "%{text}: exact %{x:.3f}, estimate %{y:.3f}<extra></extra>", "marker": {"size": 7}}
    low, high = min(x + y), max(x + y)
    layout = {"title": {"text": "attribution estimate vs exact activation patching", "font": {"size": 14}},
              "xaxis": {"title": {"text": "exact patch"}}, "yaxis": {"title": {"text": "estimate"}}, "height": 360,
              "shapes": [{"type": "line", "x0": low, "y0": low, "x1": high, "y1": high, "line": {"dash": "dot", "color": "#888"}}],
              "margin": {"l": 60, "r": 20, "t": 50, "b": 50}}
    return {"data": [trace], "layout": layout}
