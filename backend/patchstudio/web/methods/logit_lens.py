"""The logit lens's page: a caption that says what a cell is, its unit and where white is."""

from __future__ import annotations

from typing import Any

from patchstudio.analysis import Reading
from patchstudio.web.methods.base import WebMethod

# What the lens's numbers are in, and what 0 (white) means, per metric.
UNITS = {
    "logit_diff": ("logits (logit(answer) − logit(wrong))", "no preference between the answer and the wrong token"),
    "normalized_logit_diff": ("the logit difference as a share of the clean − corrupted gap",
                              "the corrupted run's own logit difference"),
    "prob": ("probability of the answer", "probability 0"),
    "loss": ("nats (−log P(answer))", "the answer certain"),
    "kl": ("nats (KL of the clean run's own distribution at that position from the lens's)", "the clean run's own distribution"),
}


def context(service: Any, reading: Reading) -> dict[str, Any]:
    result = reading.result
    unit, zero = UNITS[result.spec.metric]
    return {"lens": {"unit": unit, "zero": zero, "own": result.values[-1][-1], "rows": len(result.values)}}


WEB = WebMethod(
    name="logit_lens",
    label="logit lens (layer × position)",
    fields=("run",),
    claim=lambda spec: f"logit lens of the {spec.run} run: each layer's residual stream read through the final norm and unembedding",
    partial="methods/logit_lens.html",
    context=context,
)
