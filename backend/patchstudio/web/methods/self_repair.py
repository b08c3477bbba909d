"""Self-repair's page adds total vs direct effect and TE − DE with their intervals, the LayerNorm part,
and the components that moved both ways (compensators and amplifiers, MLPs included)."""

from __future__ import annotations

from typing import Any

from patchstudio import analysis
from patchstudio.analysis import Reading
from patchstudio.web import figures
from patchstudio.web.methods.base import WebMethod


def claim(spec) -> str:
    targets = " ".join(f"L{t.layer}H{t.head}" for t in spec.targets)
    return f"self-repair after {spec.ablation}-ablating {targets} (heatmap: each head's change in direct effect)"


def context(service, reading: Reading) -> dict[str, Any]:
    result = reading.result
    movers = analysis.movers(result)
    return {
        "repair_figure": figures.repair_figure(result),
        "repair": analysis.repair_reading(result),
        "compensators": [m for m in movers if m.share > 0],
        "amplifiers": [m for m in movers if m.share < 0],
        "mover_floor": analysis.MOVER_FLOOR,
    }


WEB = WebMethod(
    name="self_repair",
    label="self-repair (ablate heads)",
    fields=("targets", "compensator", "ablation", "seed", "draws", "reference", "reference_prompts"),
    claim=claim,
    partial="methods/self_repair.html",
    context=context,
)
