"""Self-repair's readings: what the total and direct effects and the network's response are called,
and which components compensated for the ablated targets. Pure.

McGrath et al. (2023), "The Hydra Effect": when a head is ablated, later components can change
their direct effect to make up for it, so its total effect understates what it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from patchstudio.results import PatchResult
from patchstudio.specs import HeadRef

def repair_reading(result: PatchResult) -> dict[str, Any]:
    """Self-repair's numbers named by what they are. TE - DE splits exactly into the other
    components' change in direct effect and the final LayerNorm scale's part; a response of the
    opposite sign to DE offsets it (compensation), of the same sign deepens it (amplification).
    With a compensator: its total effect alone, the sum of the two single ablations and what the
    paired ablation costs beyond that sum (``paired_excess``, in the direction of the drop)."""
    x = result.extras or {}
    te, de, ln = x["total_effect"], x["direct_effect"], x["ln_scale_part"]
    components = x["self_repair"] - ln

    def word(v: float) -> str:
        if abs(v) < 1e-9 or abs(de) < 1e-9:
            return "none"
        return "compensation" if (v > 0) != (de > 0) else "amplification"

    out = {
        "total_effect": te,
        "direct_effect": de,
        "response": x["self_repair"],  # TE - DE
        "response_word": word(x["self_repair"]),
        "components": components,
        "components_word": word(components),
        "components_compensate": word(components) == "compensation",
        "ln_scale_part": ln,
        "ln_word": word(ln),
        "paired_total_effect": x.get("paired_total_effect"),
        "compensator_total_effect": x.get("compensator_total_effect"),
        "singles_sum": None,
        "paired_excess": None,
        "paired_word": None,
    }
    if x.get("compensator_total_effect") is not None:
        out["singles_sum"] = te + x["compensator_total_effect"]
        excess = x["paired_total_effect"] - out["singles_sum"]
        out["paired_excess"] = excess
        # the drop's direction is TE's: an excess in that direction means the pair costs more than both alone
        same = (excess < 0) == (te < 0)
        out["paired_word"] = "none" if abs(excess) < 1e-9 else ("more than the two alone" if same else "less than the two alone")
    return out


@dataclass(frozen=True)
class Compensator:
    """A component whose direct effect moved against the targets' when they were ablated."""

    name: str  # "L3H1" or "MLP2"
    change: float  # its change in direct effect (logit diff)
    share: float | None  # that change as a share of |the targets' direct effect| (None when DE is 0)
    head: HeadRef | None  # the head, for a paired ablation (None for an MLP)


def top_compensators(result: PatchResult, n: int = 5) -> list[Compensator]:
    """Heads and MLPs whose direct effect moved most against the targets' direct effect (rose when
    the ablation lowered the metric, fell when it raised it), largest first; only compensating ones."""
    targets = {(t.layer, t.head) for t in result.spec.targets}
    x = result.extras or {}
    de = float(x.get("direct_effect", 0.0))
    sign = 1.0 if de < 0 else -1.0  # compensation has the opposite sign to DE
    cells = [(f"L{l}H{h}", v, HeadRef(layer=l, head=h)) for l, row in enumerate(result.values)
             for h, v in enumerate(row) if (l, h) not in targets]
    cells += [(f"MLP{l}", v, None) for l, v in enumerate(x.get("mlp_delta", []))]
    ranked = sorted(cells, key=lambda c: -sign * c[1])
    return [Compensator(name, v, (abs(v) / abs(de)) if abs(de) > 1e-9 else None, head)
            for name, v, head in ranked[:n] if sign * v > 0]
