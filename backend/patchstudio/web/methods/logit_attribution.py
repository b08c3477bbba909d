"""Direct logit attribution's page: every component (not only the heads) as bars, and the sum check."""

from __future__ import annotations

from typing import Any

from patchstudio import analysis
from patchstudio.analysis import Reading
from patchstudio.web import figures
from patchstudio.web.methods.base import WebMethod


def claim(spec) -> str:
    return (f"direct logit attribution of the {spec.run} run: every head, MLP and embedding read through the final "
            f"norm (its scale frozen at the {spec.run} run's) and the unembedding")


def context(service: Any, reading: Reading) -> dict[str, Any]:
    parts = analysis.logit_parts(reading.result)
    return {"parts": parts, "parts_figure": figures.logit_parts(parts, figures.prompt_count(reading.result))}


WEB = WebMethod(
    name="logit_attribution",
    label="direct logit attribution (every component)",
    fields=("run",),
    claim=claim,
    partial="methods/logit_attribution.html",
    context=context,
)
