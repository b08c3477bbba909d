"""Attribution patching's page adds its agreement with exact activation patching of the same sweep."""

from __future__ import annotations

from typing import Any

from patchstudio import analysis
from patchstudio.analysis import Reading
from patchstudio.web import companions, figures
from patchstudio.web import url_builder as urls
from patchstudio.web.methods.base import WebMethod, direction_phrase


def claim(spec) -> str:
    estimate = "linear estimate" if spec.steps == 1 else f"integrated-gradients estimate, {spec.steps} steps"
    return f"attribution patching ({estimate}; {direction_phrase(spec)})"


def context(service, reading: Reading) -> dict[str, Any]:
    """The agreement, if exact patching of the same sweep is stored; else a button that computes it
    (a page never computes on a GET)."""
    result = reading.result
    found = companions.gather(service, result, {"exact": analysis.exact_patching_spec(result.spec)})
    box = companions.panel(service, found, urls.agreement(result.id), "#agreement", "outerHTML",
                           "The agreement with exact activation patching")
    if "exact" not in found.runs:
        return {"agreement": None, "panel": box}
    exact = found.runs["exact"]
    stats = analysis.agreement(result, exact)
    return {"agreement": {**stats, "figure": figures.agreement_scatter(stats, figures.prompt_count(result)), "exact_id": exact.id}, "panel": box}


WEB = WebMethod(
    name="attribution_patching",
    label="attribution patching (estimate)",
    fields=("component", "positions", "positions_at", "direction", "steps"),
    claim=claim,
    partial="methods/attribution_patching.html",
    context=context,
)
