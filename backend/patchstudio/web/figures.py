"""Results -> plotly figure dicts. Pure functions that draw and never decide: what a cell means,
its baseline and every reading come from ``patchstudio.analysis``. A figure of a result's cells takes
its ``analysis.Reading`` (a result is read on entry), so a page that draws several reads it once.

Every figure states its metric and corruption in its title (the corruption and the metric are part
of the claim), uses a diverging scale centred on "no effect" (the unpatched base run), and hovers
as "L3 H5: 0.82".
"""

from __future__ import annotations

import html
from typing import Any

from patchstudio import analysis
from patchstudio.analysis import Reading
from patchstudio.results import PatchResult

def safe(text: str) -> str:
    """Plotly renders a few HTML-like tags in labels; escape tokens so they show as text."""
    return html.escape(text, quote=False)


def pos_labels(result: PatchResult) -> list[str]:
    """The position axis by role ('S2', 'END (to)'; '10 John (S2)' for a result stored by index)."""
    return [safe(label) for label in analysis.position_labels(result)] if "pos" in result.labels else []


def _layout(title: str, x_title: str, y_title: str) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        # automargin: the axis title moves below rotated tick labels instead of over them
        "xaxis": {"title": {"text": x_title, "standoff": 12}, "type": "category", "automargin": True},
        "yaxis": {"title": {"text": y_title}, "type": "category", "autorange": "reversed", "automargin": True},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 40},
        "height": 420,
    }


_WHITE, _REDS, _BLUES = (247, 247, 247), [(239, 138, 98), (178, 24, 43)], [(103, 169, 207), (33, 102, 172)]


def _ramp(colors: list[tuple[int, int, int]], t: float) -> str:
    """The colour at intensity t in [0, 1] along white -> colors[0] -> colors[1]."""
    stops = [_WHITE, *colors]
    x = max(0.0, min(1.0, t)) * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    a, b, f = stops[i], stops[i + 1], x - i
    return "rgb({},{},{})".format(*(round(a[k] + (b[k] - a[k]) * f) for k in range(3)))


def diverging(lo: float, hi: float, mid: float, steps: int = 8) -> tuple[list[list[Any]], float, float]:
    """A red-white-blue scale, white at ``mid`` ("no effect"), over the data's own range (widened only
    to include ``mid``): (colorscale, zmin, zmax). Colour intensity is |value - mid| over the larger
    side's reach, the same on both sides, so a small negative cell stays pale next to a large
    positive one; no mirrored, invented extremes."""
    lo, hi = min(lo, mid), max(hi, mid)
    if hi - lo < 1e-12:
        return [[0.0, "#f7f7f7"], [1.0, "#f7f7f7"]], mid - 1e-9, mid + 1e-9
    reach = max(mid - lo, hi - mid)
    scale: list[list[Any]] = []
    for i in range(steps + 1):  # sample the scale: below mid on the reds, above on the blues
        v = lo + (hi - lo) * i / steps
        scale.append([(v - lo) / (hi - lo), _ramp(_REDS if v < mid else _BLUES, abs(v - mid) / reach)])
    f = (mid - lo) / (hi - lo)
    scale.append([f, "#f7f7f7"])
    scale.sort(key=lambda stop: stop[0])
    return scale, lo, hi


def _spread_at(result: PatchResult, path: list[int]) -> str:
    """'<br>over 8 prompts: sd 0.31, 95% CI 4.52 to 5.07 (raw units)', or '' without a spread."""
    if not result.std or result.ci_low is None or result.ci_high is None:
        return ""
    sd, lo, hi = result.std, result.ci_low, result.ci_high
    for i in path:
        sd, lo, hi = sd[i], lo[i], hi[i]
    n = len(result.prompts)
    if n < 2:
        return "<br>one prompt pair: no spread"
    return f"<br>over {n} prompts: sd {sd:.3f}, 95% CI {lo:.3f} to {hi:.3f} (raw units)"


def _hover(reading: Reading, shown: str) -> Any:
    """Per cell: every view's number, the shown one first (nested like result.values)."""
    result, views = reading.result, reading.views
    names = [shown] + [n for n in reading.offered if n != shown]
    if reading.changes:
        names = [n for n in names if n != "raw"]  # raw is the change itself

    def build(path: list[int]) -> Any:
        node = views["raw"].values
        for i in path:
            node = node[i]
        if isinstance(node, list):
            return [build(path + [i]) for i in range(len(node))]
        parts = []
        for n in names:
            v: Any = views[n].values
            for i in path:
                v = v[i]
            parts.append(f"{n} {v:+.3f}" if n != "raw" else f"raw {v:.3f}")
        spread = _spread_at(result, path)
        return " · ".join(parts) + spread

    return build([])


def highlight(column: int, row: int) -> dict[str, Any]:
    """A rectangle around one heatmap cell (category axes: cells sit at integer positions)."""
    return {"type": "rect", "xref": "x", "yref": "y", "x0": column - 0.5, "x1": column + 0.5, "y0": row - 0.5,
            "y1": row + 0.5, "line": {"color": "#111", "width": 3}, "name": "selected"}


def heatmap(result: PatchResult | Reading, pos: int | None = None, view: str | None = None,
            selected: dict[str, int | None] | None = None) -> dict[str, Any]:
    """Layer x head, layer x position, or (for per-position head sweeps) layer x head at ``pos``,
    in ``view`` (analysis.VIEWS; default: the method's); ``selected`` cell outlined."""
    reading = analysis.read(result)
    result, axes = reading.result, reading.result.axes
    shown = reading.view(view)
    if axes == ["layer"]:
        return layer_bars(reading, shown)
    if axes == ["pos"]:
        return token_bars(reading, shown)
    hover = _hover(reading, shown.name)
    what = reading.evidence.split(":")[0]
    layers = [f"L{i}" for i in range(len(result.values))]
    if axes == ["layer", "pos", "head"]:
        pos = reading.default_pos if pos is None else pos
        z = [row[pos] for row in shown.values]
        hover = [row[pos] for row in hover]
        at = pos_labels(result)[pos]
        title = f"{what}, by layer and head at position {at}"
        columns = [f"H{h}" for h in range(len(z[0]))]
        custom = [[[layer, pos, h] for h in range(len(z[0]))] for layer in range(len(z))]
        text = [[f"L{l} H{h} @ {at}: {hover[l][h]}" for h in range(len(row))] for l, row in enumerate(z)]
        x_title = "head"
    elif axes == ["layer", "head"]:
        z = shown.values
        title = f"{what}, by layer and head"
        columns = [f"H{h}" for h in range(len(z[0]))]
        custom = [[[layer, None, h] for h in range(len(z[0]))] for layer in range(len(z))]
        text = [[f"L{l} H{h}: {hover[l][h]}" for h in range(len(row))] for l, row in enumerate(z)]
        x_title = "head"
    elif axes == ["layer", "pos"]:
        z = shown.values
        title = f"{what}, by layer and position"
        columns = pos_labels(result)
        custom = [[[layer, p, None] for p in range(len(z[0]))] for layer in range(len(z))]
        text = [[f"L{l} {columns[p]}: {hover[l][p]}" for p in range(len(row))] for l, row in enumerate(z)]
        x_title = analysis.position_axis_title(result)
    else:  # pragma: no cover - every engine result has one of the shapes above
        raise ValueError(f"no heatmap for axes {axes}")
    flat = [v for row in z for v in row]
    colorscale, zmin, zmax = diverging(min(flat), max(flat), shown.no_effect)
    trace = {
        "type": "heatmap",
        "z": z,
        "x": columns,
        "y": layers,
        "text": text,
        "customdata": custom,
        "hovertemplate": "%{text}<extra></extra>",
        "colorscale": colorscale,
        "zmin": zmin,
        "zmax": zmax,
        "colorbar": {"title": {"text": _wrap(shown.title, 22), "side": "top"}, "thickness": 14},
        "xgap": 1,
        "ygap": 1,
    }
    layout = _layout(title, x_title, "layer")
    if selected and selected.get("layer") is not None:
        column = selected.get("head") if x_title == "head" else selected.get("pos")
        if column is not None:
            layout["shapes"] = [highlight(column, selected["layer"])]
    return {"data": [trace], "layout": layout}


def _wrap(text: str, width: int = 28) -> str:
    """Break a long colour-bar title into lines (plotly takes <br>)."""
    words, lines, line = safe(text).split(" "), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "<br>".join(lines + [line])


def layer_bars(result: PatchResult | Reading, shown: analysis.View | None = None) -> dict[str, Any]:
    """A whole block per bar, drawn from "no effect" (not from 0), so a restoring layer points up."""
    reading = analysis.read(result)
    shown = shown or reading.view()
    values = shown.values
    hover = _hover(reading, shown.name)
    base = shown.no_effect
    trace = {
        "type": "bar",
        "x": [f"L{i}" for i in range(len(values))],
        "y": [v - base for v in values],
        "base": [base] * len(values),
        "text": [f"L{i}: {hover[i]}" for i in range(len(values))],
        "customdata": [[i, None, None] for i in range(len(values))],
        "hovertemplate": "%{text}<extra></extra>",
        "marker": {"color": ["#2166ac" if v >= base else "#b2182b" for v in values]},
    }
    layout = _layout(f"{reading.evidence.split(':')[0]}, by layer (every position)", "layer", "")
    layout["yaxis"] = {"title": {"text": _wrap(shown.title, 60)}}
    layout["shapes"] = [
        {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": base, "y1": base, "line": {"dash": "dot", "color": "#888"}}
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
        "title": {"text": f"{analysis.metric_label(result)}: restoration vs ablation of {name}", "font": {"size": 14}},
        "yaxis": {"title": {"text": safe(analysis.metric_label(result))}, "zeroline": True, "automargin": True},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 60},
        "height": 360,
    }
    return {"data": [trace], "layout": layout}


def repair_figure(result: PatchResult) -> dict[str, Any]:
    """Self-repair as bars, in logit-difference units: the total effect of the ablation, the
    targets' direct effect, how the rest of the network responded (other heads' and MLPs' changes
    in direct effect) and, as its own bar, the change due to the final LayerNorm's scale."""
    r = analysis.repair_reading(result)
    # short lines: six bars must stay apart in a 400-pixel-wide column
    labels = ["total<br>effect<br>(TE)", "targets'<br>direct<br>effect (DE)", f"other<br>heads +<br>MLPs<br>({r['components_word']})",
              "final<br>LayerNorm<br>scale<br>change"]
    values = [r["total_effect"], r["direct_effect"], r["components"], r["ln_scale_part"]]
    colors = ["#4c78a8", "#e45756", "#54a24b" if r["components_compensate"] else "#b279a2", "#9d755d"]
    if r.get("paired_total_effect") is not None:
        c = result.spec.compensator
        labels += [f"L{c.layer}H{c.head}<br>alone<br>(TE)", "paired<br>ablation<br>(TE)"]
        values += [r["compensator_total_effect"], r["paired_total_effect"]]
        colors += ["#bab0ac", "#72b7b2"]
    trace = {"type": "bar", "x": labels, "y": values, "text": [f"{v:+.3f}" for v in values], "textposition": "auto",
             "hovertemplate": "%{x}: %{y:+.3f} logit diff<extra></extra>", "marker": {"color": colors}, "cliponaxis": False}
    title = _wrap("change in logit(answer) − logit(wrong) when the targets are ablated (0 = no change)", 56)
    layout = {"title": {"text": title, "font": {"size": 14}},
              "yaxis": {"title": {"text": "change in logit diff (0 = no change)"}, "zeroline": True, "automargin": True},
              "xaxis": {"tickangle": 0, "automargin": True, "tickfont": {"size": 11}},
              "height": 380, "margin": {"l": 60, "r": 20, "t": 70, "b": 100}}
    return {"data": [trace], "layout": layout}


def token_bars(result: PatchResult | Reading, shown: analysis.View | None = None) -> dict[str, Any]:
    """Input influence: each clean token's contribution to the metric, in metric units (or as a share of the gap)."""
    reading = analysis.read(result)
    shown = shown or reading.view()
    labels = pos_labels(reading.result)
    trace = {"type": "bar", "x": labels, "y": shown.values,
             "text": [f"{labels[i]}: {v:+.3f}" for i, v in enumerate(shown.values)],
             "hovertemplate": "%{text}<extra></extra>", "marker": {"color": "#4c78a8"}}
    layout = _layout(f"{reading.metric_label}: contribution of each clean token", "clean token", "")
    layout["yaxis"] = {"title": {"text": _wrap(shown.title, 60)}}
    return {"data": [trace], "layout": layout}


def prompt_strip(cell: analysis.CellPrompts) -> dict[str, Any]:
    """The selected cell on each prompt: one point per prompt (spread vertically so equal values stay
    visible), the mean with its 95% bootstrap interval below them, and a dotted line at "no effect".
    The value axis carries the view's title: its unit and baseline."""
    n = len(cell.values)
    golden = 0.6180339887
    jitter = [1 + 0.3 * (((i * golden) % 1.0) - 0.5) for i in range(n)]  # deterministic, not random
    points = {
        "type": "scatter", "mode": "markers", "name": "each prompt",
        "x": cell.values, "y": jitter,
        "text": [f"prompt {i + 1}: {safe(p[:60])}{'…' if len(p) > 60 else ''}: {v:+.3f}"
                 for i, (p, v) in enumerate(zip(cell.prompts, cell.values))],
        "hovertemplate": "%{text}<extra></extra>",
        "marker": {"color": "#4c78a8", "size": 8, "opacity": 0.8},
    }
    if cell.ci_low is not None and cell.ci_high is not None and n > 1:
        interval = f"95% bootstrap interval {cell.ci_low:+.3f} to {cell.ci_high:+.3f}"
        error = {"type": "data", "symmetric": False, "array": [cell.ci_high - cell.mean],
                 "arrayminus": [cell.mean - cell.ci_low], "thickness": 2, "width": 8, "color": "#111"}
    else:
        interval, error = ("one prompt pair: no interval" if n == 1 else "no interval stored"), None
    mean = {
        "type": "scatter", "mode": "markers", "name": "mean, 95% interval",
        "x": [cell.mean], "y": [0], "text": [f"mean over {n} prompt{'s' if n != 1 else ''}: {cell.mean:+.3f}; {interval}"],
        "hovertemplate": "%{text}<extra></extra>",
        "marker": {"color": "#111", "size": 12, "symbol": "diamond"},
    }
    if error:
        mean["error_x"] = error
    layout = {
        "title": {"text": f"{safe(cell.cell)} on each of {n} prompt{'s' if n != 1 else ''}", "font": {"size": 14}},
        "xaxis": {"title": {"text": _wrap(cell.view.title, 90)}, "zeroline": False, "automargin": True},
        "yaxis": {"tickvals": [0, 1], "ticktext": ["mean, 95% CI", "each prompt"], "range": [-0.6, 1.4],
                  "fixedrange": True, "automargin": True},
        "shapes": [{"type": "line", "xref": "x", "yref": "paper", "x0": cell.view.no_effect, "x1": cell.view.no_effect,
                    "y0": 0, "y1": 1, "line": {"dash": "dot", "color": "#888"}, "name": "no effect"}],
        "showlegend": False,
        "margin": {"l": 90, "r": 20, "t": 40, "b": 50},
        "height": 240,
    }
    return {"data": [points, mean], "layout": layout}


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


def grid(result: PatchResult | Reading, values: Any, title: str, colorbar: str, lo: float, hi: float, mid: float,
         pos: int | None = None) -> dict[str, Any]:
    """``values`` (nested like ``result.values``) as a heatmap on a given range: for comparing runs on
    one scale. One-axis results are drawn as one row; per-position head sweeps at ``pos``."""
    reading = analysis.read(result)
    result, axes = reading.result, reading.result.axes
    if axes == ["layer", "pos", "head"]:
        pos = reading.default_pos if pos is None else pos
        z, x, y, x_title = [row[pos] for row in values], [f"H{h}" for h in range(len(values[0][0]))], None, "head"
        title = f"{title} — position {pos_labels(result)[pos]}"
    elif axes == ["layer", "head"]:
        z, x, x_title = values, [f"H{h}" for h in range(len(values[0]))], "head"
    elif axes == ["layer", "pos"]:
        z, x, x_title = values, pos_labels(result), analysis.position_axis_title(result)
    elif axes == ["layer"]:
        z, x, x_title = [[v] for v in values], ["block"], ""
    else:  # ["pos"]
        z, x, x_title = [values], pos_labels(result), "clean token"
    y = [f"L{i}" for i in range(len(z))] if axes != ["pos"] else ["input"]
    colorscale, zmin, zmax = diverging(lo, hi, mid)
    trace = {"type": "heatmap", "z": z, "x": x, "y": y, "colorscale": colorscale, "zmin": zmin, "zmax": zmax,
             "hovertemplate": "%{y} %{x}: %{z:+.3f}<extra></extra>", "xgap": 1, "ygap": 1,
             "colorbar": {"title": {"text": _wrap(colorbar, 22), "side": "top"}, "thickness": 14}}
    layout = _layout(safe(title), x_title, "layer" if axes != ["pos"] else "")
    layout["height"] = 360
    return {"data": [trace], "layout": layout}


ATTENTION_SCALE = [[0.0, "#ffffff"], [0.25, "#c6dbef"], [0.6, "#4292c6"], [1.0, "#08306b"]]
ATTENTION_TITLE = "attention weight (0 to 1; each row sums to 1)"


def attention_heatmap(tokens: list[str], pattern: list[list[float]], title: str) -> dict[str, Any]:
    """One head's pattern: destination (query) rows, source (key) columns; the END row outlined."""
    labels = [f"{i} {safe(t)}" for i, t in enumerate(tokens)]
    n = len(tokens)
    text = [[f"{labels[d]} → {labels[s]}: {pattern[d][s]:.3f}" if s <= d else "" for s in range(n)] for d in range(n)]
    trace = {"type": "heatmap", "z": pattern, "x": labels, "y": labels, "zmin": 0.0, "zmax": 1.0,
             "colorscale": ATTENTION_SCALE, "text": text, "hovertemplate": "%{text}<extra></extra>", "xgap": 1, "ygap": 1,
             "colorbar": {"title": {"text": _wrap(ATTENTION_TITLE, 22), "side": "top"}, "thickness": 14}}
    layout = _layout(safe(title), "source position (attended to)", "destination position (attending)")
    layout["height"] = max(360, 22 * n + 160)
    layout["shapes"] = [highlight_row(n - 1, n)]
    return {"data": [trace], "layout": layout}


def highlight_row(row: int, n: int) -> dict[str, Any]:
    return {"type": "rect", "xref": "x", "yref": "y", "x0": -0.5, "x1": n - 0.5, "y0": row - 0.5, "y1": row + 0.5,
            "line": {"color": "#d62728", "width": 2}, "name": "END"}


def attention_layer(tokens: list[str], heads: list[list[list[float]]], layer: int, columns: int = 4) -> dict[str, Any]:
    """Every head of a layer as small multiples (CircuitsVis-style), one shared 0-1 scale."""
    labels = [f"{i} {safe(t)}" for i, t in enumerate(tokens)]
    rows = (len(heads) + columns - 1) // columns
    data, layout = [], {"height": 210 * rows + 60, "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
                        "title": {"text": f"layer {layer}: every head on this prompt (click one to open it)", "font": {"size": 14}}}
    gap = 0.03
    for h, pattern in enumerate(heads):
        r, c = divmod(h, columns)
        axis = "" if h == 0 else str(h + 1)
        x0, x1 = c / columns + gap / 2, (c + 1) / columns - gap / 2
        y1, y0 = 1 - r / rows - gap, 1 - (r + 1) / rows + gap / 2
        data.append({"type": "heatmap", "z": pattern, "x": labels, "y": labels, "zmin": 0.0, "zmax": 1.0,
                     "colorscale": ATTENTION_SCALE, "showscale": h == 0, "xaxis": f"x{axis}", "yaxis": f"y{axis}",
                     "customdata": [[h] * len(labels) for _ in labels],
                     "hovertemplate": f"H{h}: %{{y}} → %{{x}}: %{{z:.3f}}<extra></extra>",
                     "colorbar": {"title": {"text": _wrap(ATTENTION_TITLE, 22), "side": "top"}, "thickness": 12}})
        layout[f"xaxis{axis}"] = {"domain": [x0, x1], "showticklabels": False, "type": "category", "anchor": f"y{axis}"}
        layout[f"yaxis{axis}"] = {"domain": [y0, y1], "showticklabels": False, "type": "category", "autorange": "reversed",
                                  "anchor": f"x{axis}", "title": {"text": f"H{h}", "standoff": 2}}
    return {"data": data, "layout": layout}
