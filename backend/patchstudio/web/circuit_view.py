"""What the circuit page draws: the graph's data block (drawn client-side, frontend/static/circuit.js,
so the top-k slider redraws without asking the server), the faithfulness curve as a plotly figure,
and the estimate-vs-exact scatter. Pure: it reads an ``analysis`` reading and draws, never decides.
"""

from __future__ import annotations

from typing import Any

from patchstudio import analysis
from patchstudio.analysis import Reading
from patchstudio.analysis import circuit as C
from patchstudio.web import figures
from patchstudio.web import url_builder as urls

MAX_DRAWN = 2000  # edges in the page's data block (largest |estimate| first); the .json twin has every edge
DEFAULT_K = 20


def graph_data(reading: Reading, run_id: str) -> dict[str, Any]:
    """The data block circuit.js draws: nodes, receivers, the edges in ranking order with their
    estimated and (where verified) exact change, units and links."""
    result = reading.result
    extras = result.extras or {}
    graph = extras["graph"]
    changes = C.edge_changes(reading)
    exact = extras.get("exact") or {"edges": [], "values": []}
    exact_change = {e: v - reading.no_effect for e, v in zip(exact["edges"], exact["values"])}
    drawn = extras["ranking"][:MAX_DRAWN]
    names = result.labels["edge"]
    k = min(result.spec.top_k or DEFAULT_K, len(drawn)) if drawn else 0
    return {
        "run": run_id,
        "senders": graph["senders"],
        "receivers": graph["receivers"],
        "n_layers": graph["n_layers"],
        "n_heads": graph["n_heads"],
        "n_edges": len(names),
        "edges": [[graph["edges"][e][0], graph["edges"][e][1], round(changes[e], 6),
                   round(exact_change[e], 6) if e in exact_change else None, names[e]] for e in drawn],
        "k": k,
        "unit": reading.unit,
        "edge_url": urls.circuit_edge(run_id),
        "node_url": urls.circuit_node(run_id),
    }


def faithfulness_figure(result) -> dict[str, Any] | None:
    """The faithfulness curve over the circuit sizes (log x), its 95% interval over the prompts as a
    band, with the lines at 0 (every edge patched) and 1 (the full model)."""
    f = C.faithfulness(result)
    if not f or f.get("curve") is None:
        return None
    x = f["fractions"]
    labels = [f"top {n:,} of {f['n_edges']:,} edges ({100 * p:g}%)" for n, p in zip(f["sizes"], x)]
    n = figures.n_words(figures.prompt_count(result))
    text = [f"{label}: {v:.3f} (95% interval {lo:.3f} to {hi:.3f}, {n})" for label, v, lo, hi in
            zip(labels, f["curve"], f["ci_low"], f["ci_high"])]
    band = {"type": "scatter", "x": x + x[::-1], "y": f["ci_high"] + f["ci_low"][::-1], "fill": "toself", "mode": "lines",
            "line": {"width": 0}, "fillcolor": "rgba(33,102,172,0.15)", "hoverinfo": "skip", "name": "95% interval over prompts"}
    curve = {"type": "scatter", "mode": "lines+markers", "x": x, "y": f["curve"], "text": text, "name": "faithfulness",
             "hovertemplate": "%{text}<extra></extra>", "line": {"color": "rgb(33,102,172)"}, "marker": {"size": 7}}
    what = "patched from the corrupted run" if f["intervention"] == "patching" else "mean-ablated over the reference prompts"
    layout = {
        "title": {"text": f"Faithfulness of the top-n edge circuits<br><sup>every edge outside the circuit {what}</sup>",
                  "font": {"size": 14}},
        "xaxis": {"title": {"text": "circuit size: fraction of the graph's edges (log scale)"}, "type": "log",
                  "tickvals": [0.001, 0.01, 0.1, 1.0], "ticktext": ["0.1%", "1%", "10%", "100%"], "automargin": True},
        "yaxis": {"title": {"text": "faithfulness (0 = every edge patched, 1 = full model)"}, "automargin": True,
                  "zeroline": True},
        "shapes": [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": level, "y1": level,
                    "line": {"dash": "dot", "color": "#888", "width": 1}} for level in (0, 1)],
        "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
        "height": 360,
        "showlegend": False,
    }
    return {"data": [band, curve], "layout": layout}


def agreement_figure(stats: C.Agreement, unit: str, n: int) -> dict[str, Any]:
    """Estimate against exact edge patching, one point per verified edge (``figures.agreement_scatter``),
    each the mean over ``n`` prompts."""
    fig = figures.agreement_scatter(stats.as_dict(), n)
    fig["layout"]["title"]["text"] = "EAP estimate vs exact edge patching"
    fig["layout"]["xaxis"]["title"]["text"] = f"exact edge patching: change in {unit} (0 = no effect)"
    fig["layout"]["yaxis"]["title"]["text"] = f"estimate: change in {unit}"
    return fig


def describe_faithfulness(result) -> str:
    f = C.faithfulness(result)
    if not f:
        return ""
    empty = "the corrupted run" if f["intervention"] == "patching" else "every edge mean-ablated"
    return (f"m(empty circuit) {f['metric_empty']:.4f} ({empty}), m(full model) {f['metric_full']:.4f}, "
            f"in {analysis.metric_unit(result)}")
