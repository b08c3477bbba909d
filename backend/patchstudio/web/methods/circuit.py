"""The circuit page: the graph (drawn client-side with its top-k slider), the faithfulness curve,
the estimates against exact edge patching, and, for a model whose circuit is known, ROC AUC."""

from __future__ import annotations

from typing import Any

from patchstudio.analysis import Reading
from patchstudio.analysis import circuit as C
from patchstudio.models.tracr import TASKS, load_ground_truth
from patchstudio.web import circuit_view, figures
from patchstudio.web import url_builder as urls
from patchstudio.web.methods.base import WebMethod, direction_phrase


def claim(spec) -> str:
    how = "EAP" if spec.steps == 1 else f"EAP-IG, {spec.steps} steps"
    outside = "patched from the corrupted run" if spec.faithfulness == "patching" else "mean-ablated"
    return (f"circuit: every edge scored by {how} ({direction_phrase(spec)}), the top {spec.top_k} patched exactly, "
            f"faithfulness with the edges outside each circuit {outside}")


def context(service, reading: Reading) -> dict[str, Any]:
    """Everything from the stored result (a page never computes)."""
    result = reading.result
    stats = C.agreement(reading)
    truth = load_ground_truth(result.spec.model) if result.spec.model in TASKS else None
    f = C.faithfulness(result)
    return {
        "circuit": circuit_view.graph_data(reading, result.id),
        "faithfulness": f,
        "faithfulness_figure": circuit_view.faithfulness_figure(result),
        "faithfulness_words": circuit_view.describe_faithfulness(result),
        "agreement": stats,
        "agreement_figure": circuit_view.agreement_figure(stats, reading.unit, figures.prompt_count(result)) if stats and len(stats.names) > 1 else None,
        "auc": C.ground_truth_auc(reading, truth) if truth else None,
        "export_url": urls.circuit_export(result.id, result.spec.top_k or circuit_view.DEFAULT_K),
        "unit": reading.unit,
    }


WEB = WebMethod(
    name="circuit",
    label="circuit (edges: EAP, exact, faithfulness)",
    fields=("direction", "steps", "top_k", "faithfulness", "seed", "reference", "reference_prompts"),
    claim=claim,
    partial="methods/circuit.html",
    context=context,
    heatmap=False,
)
