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


def prompt_count(result: PatchResult) -> int:
    """How many prompts each cell averages (every role of a per-position sweep has them all)."""
    return len(result.per_prompt) if result.per_prompt is not None else len(result.prompts)


def n_words(n: int) -> str:
    """'n = 8 prompts': every hover of a mean says how many prompts it averages."""
    return f"n = {n} prompt{'s' if n != 1 else ''}"


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


def num(v: float, signed: bool = True) -> str:
    """3 decimals; a tiny non-zero value keeps two significant digits instead of reading '+0.000'."""
    if v != 0 and abs(v) < 0.0005:
        return f"{v:+.2g}" if signed else f"{v:.2g}"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _spread_at(reading: Reading, shown: str, path: list[int]) -> str:
    """'<br>over n = 8 prompts: sd 0.031, 95% CI +0.452 to +0.507 (share of the gap)': the interval of the
    shown view's number, in its units; for a result stored without a spread, its n alone."""
    result = reading.result
    if not result.std or result.ci_low is None or result.ci_high is None:
        return f"<br>mean over {n_words(prompt_count(result))} (no spread stored)"
    s = analysis.spread(reading, shown, path)
    if s.n < 2 or s.ci_low is None or s.ci_high is None:
        return f"<br>n = {s.n} prompt pair: no spread"
    raw = shown == "raw"
    units = {"raw": "raw units", "share": f"share of {reading.share_name}", "change": f"change, {reading.unit}"}[shown]
    sd = num(s.sd, signed=False) if s.sd is not None else "?"
    return f"<br>over {n_words(s.n)}: sd {sd}, 95% CI {num(s.ci_low, not raw)} to {num(s.ci_high, not raw)} ({units})"


def _hover(reading: Reading, shown: str) -> Any:
    """Per cell: every view's number, the shown one first, then the shown one's spread over the
    prompts in its units (nested like result.values)."""
    views = reading.views
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
            parts.append(f"{n} {num(v)}" if n != "raw" else f"raw {num(v, signed=False)}")
        return " · ".join(parts) + _spread_at(reading, shown, path)

    return build([])


def highlight(column: int, row: int) -> dict[str, Any]:
    """A rectangle around one heatmap cell (category axes: cells sit at integer positions)."""
    return {"type": "rect", "xref": "x", "yref": "y", "x0": column - 0.5, "x1": column + 0.5, "y0": row - 0.5,
            "y1": row + 0.5, "line": {"color": "#111", "width": 3}, "name": "selected"}


FADE = "rgba(255,255,255,0.62)"  # laid over a cell whose interval covers no effect
STROKE = "rgba(40,40,40,0.6)"


def heatmap(result: PatchResult | Reading, pos: int | None = None, view: str | None = None,
            selected: dict[str, int | None] | None = None, scale: str | None = None) -> dict[str, Any]:
    """Layer x head, layer x position, or (for per-position head sweeps) layer x head at ``pos``,
    in ``view`` (analysis.VIEWS; default: the method's) on ``scale`` (analysis.SCALES; default: the
    gap); ``selected`` cell outlined. Cells whose interval covers no effect are faded and struck."""
    reading = analysis.read(result)
    result, axes = reading.result, reading.result.axes
    shown = reading.view(view)
    if axes == ["layer"]:
        return layer_bars(reading, shown, scale)
    if axes == ["pos"]:
        return token_bars(reading, shown, scale)
    hover = _hover(reading, shown.name)
    covered = analysis.covers_no_effect(reading)
    what = reading.evidence.split(":")[0]
    layers = [f"L{i}" for i in range(len(result.values))]
    y_title = "layer"
    if reading.method.reads_run is not None:  # the logit lens: each layer's input, then the final stream
        layers[-1], y_title = "final", "residual stream before layer"
    if axes == ["layer", "pos", "head"]:
        pos = reading.default_pos if pos is None else pos
        z = [row[pos] for row in shown.values]
        hover = [row[pos] for row in hover]
        covered = [row[pos] for row in covered] if covered is not None else None
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
    drawn = analysis.scale(reading, shown.name, scale, [v for row in z for v in row])
    colorscale, zmin, zmax = diverging(drawn.lo, drawn.hi, drawn.mid)
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
        # no SI prefixes: "−200μ" on a share of the gap reads as a unit, not as 0.0002
        "colorbar": {"title": {"text": _wrap(shown.title, 22), "side": "top"}, "thickness": 14, "exponentformat": "none"},
        "xgap": 1,
        "ygap": 1,
    }
    layout = _layout(_titled(title, drawn), x_title, y_title)
    if drawn.title:
        layout["margin"]["t"] = 70
    if selected and selected.get("layer") is not None:
        column = selected.get("head") if x_title == "head" else selected.get("pos")
        if column is not None:
            layout["shapes"] = [highlight(column, selected["layer"])]
    return {"data": [trace, *_marks(covered, columns, layers)], "layout": layout}


def _titled(title: str, drawn: analysis.Scale) -> str:
    """The figure's title, with what its scale says (a data range's zoom) on a line of its own."""
    return title + (f"<br><span style='font-size:12px'>{safe(drawn.title)}</span>" if drawn.title else "")


def _marks(covered: Any, columns: list[str], rows: list[str]) -> list[dict[str, Any]]:
    """Traces over a heatmap that fade and strike each cell whose interval covers no effect (they
    take no hover or click: those go to the cell below)."""
    if not covered or not any(any(row) for row in covered):
        return []
    fade = {"type": "heatmap", "z": [[1 if c else None for c in row] for row in covered], "x": columns, "y": rows,
            "zmin": 0, "zmax": 1, "colorscale": [[0, FADE], [1, FADE]], "showscale": False, "hoverinfo": "skip",
            "xgap": 1, "ygap": 1, "name": "interval covers no effect"}
    cells = [(columns[c], rows[r]) for r, row in enumerate(covered) for c, mark in enumerate(row) if mark]
    strokes = {"type": "scatter", "mode": "markers", "x": [x for x, _ in cells], "y": [y for _, y in cells],
               "marker": {"symbol": "line-ne", "size": 11, "line": {"width": 1.5, "color": STROKE}},
               "hoverinfo": "skip", "showlegend": False, "name": "interval covers no effect"}
    return [fade, strokes]


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


def _bars(reading: Reading, shown: analysis.View, scale: str | None, labels: list[str], hover: list[str],
          title: str, x_title: str, color: Any) -> dict[str, Any]:
    """One bar per cell, drawn from "no effect" (not from 0), each with its 95% interval as an error
    bar; a bar whose interval covers no effect is faded. The numbers are in the hover, not on the bars."""
    values, base = shown.values, shown.no_effect
    spreads = [analysis.spread(reading, shown.name, [i]) for i in range(len(values))]
    drawn = analysis.scale(reading, shown.name, scale)
    trace: dict[str, Any] = {
        "type": "bar", "x": labels, "y": [v - base for v in values], "base": [base] * len(values),
        "hovertext": hover, "hovertemplate": "%{hovertext}<extra></extra>", "textposition": "none",
        "customdata": [[i, None, None] for i in range(len(values))] if x_title == "layer" else None,
        "marker": {"color": color, "opacity": [0.35 if s.covers_no_effect else 1.0 for s in spreads]},
    }
    if trace["customdata"] is None:
        del trace["customdata"]
    ends = [(s.ci_low, s.ci_high) for s in spreads if s.ci_low is not None and s.ci_high is not None]
    if len(ends) == len(values):
        trace["error_y"] = {"type": "data", "symmetric": False, "array": [hi - v for v, (_, hi) in zip(values, ends)],
                            "arrayminus": [v - lo for v, (lo, _) in zip(values, ends)], "color": "#333",
                            "thickness": 1.5, "width": 4}
    layout = _layout(_titled(title, drawn), x_title, "")
    layout["yaxis"] = {"title": {"text": _wrap(shown.title, 60)}, "automargin": True, "exponentformat": "none"}
    if drawn.title:
        layout["margin"]["t"] = 70
    if drawn.name == "gap":  # the whole gap either way, and every interval
        layout["yaxis"]["range"] = [min([drawn.lo] + [lo for lo, _ in ends]), max([drawn.hi] + [hi for _, hi in ends])]
    layout["shapes"] = [
        {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": base, "y1": base, "line": {"dash": "dot", "color": "#888"}}
    ]
    return {"data": [trace], "layout": layout}


def layer_bars(result: PatchResult | Reading, shown: analysis.View | None = None, scale: str | None = None) -> dict[str, Any]:
    """A whole block per bar, drawn from "no effect" (not from 0), so a restoring layer points up."""
    reading = analysis.read(result)
    shown = shown or reading.view()
    hover = _hover(reading, shown.name)
    base = shown.no_effect
    labels = [f"L{i}" for i in range(len(shown.values))]
    colors = ["#2166ac" if v >= base else "#b2182b" for v in shown.values]
    return _bars(reading, shown, scale, labels, [f"L{i}: {h}" for i, h in enumerate(hover)],
                 f"{reading.evidence.split(':')[0]}, by layer (every position)", "layer", colors)


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
        "hovertemplate": f"%{{x}}: %{{y:.3f}}, mean over {n_words(prompt_count(result))}<extra></extra>",
        "marker": {"color": ["#4c78a8", "#e45756", "#54a24b", "#b279a2"]},
    }
    layout = {
        "title": {"text": f"{analysis.metric_label(result)}: restoration vs ablation of {name}", "font": {"size": 14}},
        "yaxis": {"title": {"text": safe(analysis.metric_label(result))}, "zeroline": True, "automargin": True},
        # each label on short lines, level: tilted, the last one ran off a narrow column's edge
        "xaxis": {"tickangle": 0, "automargin": True, "tickmode": "array", "tickvals": labels,
                  "ticktext": [_wrap(label, 12) for label in labels]},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 60},
        "height": 360,
    }
    return {"data": [trace], "layout": layout}


def repair_figure(result: PatchResult) -> dict[str, Any]:
    """Self-repair as bars, in logit-difference units, each with its 95% interval over the prompts
    as an error bar (none on results stored before intervals): the total effect of the ablation,
    the targets' direct effect, the other heads' change in direct effect, each MLP's as its own bar,
    and the change due to the final LayerNorm's scale; no text on the bars (the hover has it)."""
    r = analysis.repair_reading(result)
    # short lines: the bars must stay apart in a 400-pixel-wide column
    bars = [("total<br>effect<br>(TE)", r["total_effect"], r["total_effect_ci"], "#4c78a8"),
            ("targets'<br>direct<br>effect (DE)", r["direct_effect"], r["direct_effect_ci"], "#e45756"),
            ("other<br>heads", r["other_heads"], r["other_heads_ci"], "#54a24b" if (r["other_heads"] > 0) != (r["direct_effect"] > 0) else "#b279a2")]
    bars += [(name, v, ci, "#54a24b" if (v > 0) != (r["direct_effect"] > 0) else "#b279a2") for name, v, ci in r["mlps"]]
    bars.append(("final<br>LayerNorm<br>scale", r["ln_scale_part"], r["ln_scale_part_ci"], "#9d755d"))
    if r.get("paired_total_effect") is not None:
        c = result.spec.compensator
        bars += [(f"L{c.layer}H{c.head}<br>alone<br>(TE)", r["compensator_total_effect"], r["compensator_total_effect_ci"], "#bab0ac"),
                 ("paired<br>ablation<br>(TE)", r["paired_total_effect"], r["paired_total_effect_ci"], "#72b7b2")]
    labels, values, cis, colors = (list(col) for col in zip(*bars))
    trace = {"type": "bar", "x": labels, "y": values, "marker": {"color": colors}, "cliponaxis": False,
             "hovertemplate": f"%{{x}}: %{{y:+.3f}} logit diff, mean over {n_words(r['n'])}<extra></extra>"}
    if all(ci is not None for ci in cis):
        trace["error_y"] = {"type": "data", "symmetric": False, "array": [ci[1] - v for v, ci in zip(values, cis)],
                            "arrayminus": [v - ci[0] for v, ci in zip(values, cis)], "color": "#333"}
    title = _wrap(f"change in logit(answer) − logit(wrong) when the targets are ablated (0 = no change; "
                  f"bars: 95% CI over n = {r['n']})", 56)
    layout = {"title": {"text": title, "font": {"size": 14}},
              "yaxis": {"title": {"text": "change in logit diff (0 = no change)"}, "zeroline": True, "automargin": True},
              "xaxis": {"tickangle": 0, "automargin": True, "tickfont": {"size": 11}},
              "height": 380, "margin": {"l": 60, "r": 20, "t": 70, "b": 100}}
    return {"data": [trace], "layout": layout}


def logit_parts(parts: analysis.LogitParts, n: int) -> dict[str, Any]:
    """Direct logit attribution per component: one bar per part of the final residual stream, in
    the stream's order, drawn from 0 (no contribution), in logits, each the mean over ``n`` prompts."""
    names = [safe(p.name) for p in parts.parts]
    values = [p.value for p in parts.parts]
    trace = {"type": "bar", "x": names, "y": values,
             "hovertemplate": f"%{{x}}: %{{y:+.4f}} logits, mean over {n_words(n)}<extra></extra>",
             "marker": {"color": ["#2166ac" if v >= 0 else "#b2182b" for v in values]}, "cliponaxis": False}
    frozen = "final norm's scale frozen" if parts.scale is not None else "no final norm"
    title = f"direct logit attribution of the {parts.run} run, per component ({frozen})"
    layout = {"title": {"text": _wrap(title, 70), "font": {"size": 14}},
              "yaxis": {"title": {"text": "logit(answer) − logit(wrong), logits (0 = none)"}, "zeroline": True,
                        "automargin": True},
              "xaxis": {"type": "category", "automargin": True, "tickangle": -45},
              "shapes": [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 0, "y1": 0,
                          "line": {"dash": "dot", "color": "#888"}}],
              "height": 400, "margin": {"l": 60, "r": 20, "t": 60, "b": 100}}
    return {"data": [trace], "layout": layout}


def token_bars(result: PatchResult | Reading, shown: analysis.View | None = None, scale: str | None = None) -> dict[str, Any]:
    """Input influence: each clean token's contribution to the metric, in metric units (or as a share of the gap)."""
    reading = analysis.read(result)
    shown = shown or reading.view()
    labels = pos_labels(reading.result)
    hover = [f"{labels[i]}: {h}" for i, h in enumerate(_hover(reading, shown.name))]
    return _bars(reading, shown, scale, labels, hover, f"{reading.metric_label}: contribution of each clean token",
                 "clean token", "#4c78a8")


def prompt_strip(cell: analysis.CellPrompts) -> dict[str, Any]:
    """The selected cell on each prompt: one point per prompt (spread vertically so equal values stay
    visible), the mean with its 95% interval below them, and a dotted line at "no effect".
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
        interval = f"95% interval {cell.ci_low:+.3f} to {cell.ci_high:+.3f}"
        error = {"type": "data", "symmetric": False, "array": [cell.ci_high - cell.mean],
                 "arrayminus": [cell.mean - cell.ci_low], "thickness": 2, "width": 8, "color": "#111"}
    else:
        interval, error = ("one prompt pair: no interval" if n == 1 else "no interval stored"), None
    mean = {
        "type": "scatter", "mode": "markers", "name": "mean, 95% interval",
        "x": [cell.mean], "y": [0], "text": [f"mean over {n_words(n)}: {cell.mean:+.3f}; {interval}"],
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


def agreement_scatter(stats: dict[str, Any], n: int) -> dict[str, Any]:
    """Estimate against exact patching, one point per cell (``analysis.agreement``'s numbers), each
    the mean over ``n`` prompts."""
    x, y = stats["exact"], stats["estimate"]
    trace = {"type": "scatter", "mode": "markers", "x": x, "y": y, "text": [safe(name) for name in stats["names"]],
             "hovertemplate": f"%{{text}}: exact %{{x:.3f}}, estimate %{{y:.3f}}, means over {n_words(n)}<extra></extra>",
             "marker": {"size": 7}}
    low, high = min(x + y), max(x + y)
    layout = {"title": {"text": "attribution estimate vs exact activation patching", "font": {"size": 14}},
              "xaxis": {"title": {"text": "exact patch"}}, "yaxis": {"title": {"text": "estimate"}}, "height": 360,
              "shapes": [{"type": "line", "x0": low, "y0": low, "x1": high, "y1": high, "line": {"dash": "dot", "color": "#888"}}],
              "margin": {"l": 60, "r": 20, "t": 50, "b": 50}}
    return {"data": [trace], "layout": layout}


def grid(result: PatchResult | Reading, values: Any, title: str, colorbar: str, lo: float, hi: float, mid: float,
         pos: int | None = None, counts: str | None = None) -> dict[str, Any]:
    """``values`` (nested like ``result.values``) as a heatmap on a given range: for comparing runs on
    one scale. One-axis results are drawn as one row; per-position head sweeps at ``pos``. The hover
    says how many prompts a value averages (``counts``; default the result's 'mean over n = 8 prompts')."""
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
             "hovertemplate": f"%{{y}} %{{x}}: %{{z:+.3f}}, {counts or 'mean over ' + n_words(prompt_count(result))}<extra></extra>",
             "xgap": 1, "ygap": 1,
             "colorbar": {"title": {"text": _wrap(colorbar, 14), "side": "top"}, "thickness": 12}}
    layout = _layout(safe(title), x_title, "layer" if axes != ["pos"] else "")
    layout["height"] = 360
    return {"data": [trace], "layout": layout}


ATTENTION_SCALE = [[0.0, "#ffffff"], [0.25, "#c6dbef"], [0.6, "#4292c6"], [1.0, "#08306b"]]
ATTENTION_TITLE = "weight"  # the caption says the rest: 0 to 1, each row sums to 1


def attention_heatmap(tokens: list[str], pattern: list[list[float]], title: str) -> dict[str, Any]:
    """One head's pattern: destination (query) rows, source (key) columns; the END row outlined."""
    labels = [f"{i} {safe(t)}" for i, t in enumerate(tokens)]
    n = len(tokens)
    text = [[f"{labels[d]} → {labels[s]}: {pattern[d][s]:.3f}" if s <= d else "" for s in range(n)] for d in range(n)]
    trace = {"type": "heatmap", "z": pattern, "x": labels, "y": labels, "zmin": 0.0, "zmax": 1.0,
             "colorscale": ATTENTION_SCALE, "text": text, "hovertemplate": "%{text}<extra></extra>", "xgap": 1, "ygap": 1,
             "colorbar": {"title": {"text": ATTENTION_TITLE, "side": "top"}, "thickness": 12}}
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
                     "colorbar": {"title": {"text": ATTENTION_TITLE, "side": "top"}, "thickness": 12}})
        layout[f"xaxis{axis}"] = {"domain": [x0, x1], "showticklabels": False, "type": "category", "anchor": f"y{axis}"}
        layout[f"yaxis{axis}"] = {"domain": [y0, y1], "showticklabels": False, "type": "category", "autorange": "reversed",
                                  "anchor": f"x{axis}", "title": {"text": f"H{h}", "standoff": 2}}
    return {"data": data, "layout": layout}
