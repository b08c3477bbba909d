"""Edge patching's page: each edge's exact value, change and share of the gap, with its spread."""

from __future__ import annotations

from typing import Any

from patchstudio.analysis import Reading
from patchstudio.web.methods.base import WebMethod, direction_phrase


def claim(spec) -> str:
    edges = ", ".join(spec.edges[:3]) + (f" and {len(spec.edges) - 3} more" if len(spec.edges) > 3 else "")
    return f"exact patching of edge{'s' if len(spec.edges) != 1 else ''} {edges}, each alone ({direction_phrase(spec)})"


def context(service, reading: Reading) -> dict[str, Any]:
    result = reading.result
    share = reading.view("share")
    rows = []
    for i, name in enumerate(result.labels["edge"]):
        rows.append({"name": name, "value": result.values[i], "change": reading.view("change").values[i],
                     "share": share.values[i] if share.name == "share" else None,
                     "ci": (result.ci_low[i], result.ci_high[i]) if result.ci_low is not None else None,
                     "per_prompt": [p[i] for p in result.per_prompt] if result.per_prompt is not None else []})
    return {"edge_rows": rows, "base_run": reading.base_run, "no_effect": reading.no_effect}


WEB = WebMethod(
    name="edge_patching",
    label="edge patching (exact, chosen edges)",
    fields=("direction", "edges"),
    claim=claim,
    partial="methods/edge_patching.html",
    context=context,
    heatmap=False,
)
