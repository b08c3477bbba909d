"""Self-repair's readings: what the total and direct effects and TE − DE are called, which
components moved when the targets were ablated (both ways, MLPs included), and how sure each
number is (95% intervals over the prompts, ``engine.stats``). Pure.

McGrath et al. (2023), "The Hydra Effect": when a head is ablated, later components can change
their direct effect. TE − DE is the rest of the network's response: all of the targets' indirect
effects (what they wrote that later heads and MLPs read, e.g. L2H2's path through MLP2/MLP3 on the
default model) plus any reactive repair. A single ablation cannot separate the two: both are
changes of the other components' direct effects under the same intervention, so TE − DE is not
"the network's repair", and |TE| < |DE| does not by itself show that ablation understates a
target's role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from patchstudio.engine.stats import ratio_spread, spread
from patchstudio.results import PatchResult
from patchstudio.specs import HeadRef

MOVER_FLOOR = 0.05  # movers under 5% of |DE| are not listed (nor offered for a paired ablation)
RESPONSE_LABEL = "the rest of the network's response: all the targets' indirect effects plus any reactive repair"
RESPONSE_WHY = (
    "A single ablation cannot tell the two apart: the targets' ordinary indirect paths and a reaction to their "
    "absence both show up as other components' changes in direct effect."
)


def _interval(x: dict, key: str) -> tuple[float, float] | None:
    ci = (x.get("ci") or {}).get(key)
    return (float(ci[0]), float(ci[1])) if ci is not None else None


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

    per = x.get("per_prompt") or {}
    mlps = [float(v) for v in x.get("mlp_delta", [])]
    components_ci = heads_ci = None
    if "self_repair" in per:  # the other components' part, prompt by prompt (stored results before: none)
        parts = torch.tensor(per["self_repair"], dtype=torch.float64) - torch.tensor(per["ln_scale_part"], dtype=torch.float64)
        heads_part = parts - torch.tensor(per["mlp_delta"], dtype=torch.float64).sum(1)
        _, low, high = spread(torch.stack([parts, heads_part], dim=1))
        components_ci, heads_ci = (float(low[0]), float(high[0])), (float(low[1]), float(high[1]))
    mlp_ci = [tuple(map(float, c)) for c in x["mlp_delta_ci"]] if "mlp_delta_ci" in x else [None] * len(mlps)
    out = {
        "total_effect": te,
        "total_effect_ci": _interval(x, "total_effect"),
        "direct_effect": de,
        "direct_effect_ci": _interval(x, "direct_effect"),
        "response": x["self_repair"],  # TE - DE
        "response_ci": _interval(x, "self_repair"),
        "response_label": RESPONSE_LABEL,
        "response_why": RESPONSE_WHY,
        "response_word": word(x["self_repair"]),
        "components": components,
        "components_ci": components_ci,
        "components_word": word(components),
        "other_heads": components - sum(mlps),  # the non-target heads' part of it
        "other_heads_ci": heads_ci,
        "mlps": [(f"MLP{l}", v, ci) for l, (v, ci) in enumerate(zip(mlps, mlp_ci))],
        "components_compensate": word(components) == "compensation",
        "ln_scale_part": ln,
        "ln_scale_part_ci": _interval(x, "ln_scale_part"),
        "ln_word": word(ln),
        "paired_total_effect": x.get("paired_total_effect"),
        "paired_total_effect_ci": _interval(x, "paired_total_effect"),
        "compensator_total_effect": x.get("compensator_total_effect"),
        "compensator_total_effect_ci": _interval(x, "compensator_total_effect"),
        "singles_sum": None,
        "paired_excess": None,
        "paired_excess_ci": _interval(x, "paired_excess"),
        "paired_word": None,
        "n": len(result.prompts),
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
class Mover:
    """A component whose direct effect changed when the targets were ablated."""

    name: str  # "L3H1" or "MLP2"
    change: float  # its change in direct effect (logit diff), mean over the prompts
    change_ci: tuple[float, float] | None  # 95% interval over the prompts (None for results stored before)
    share: float | None  # signed share of |DE|: + offsets the targets' direct effect, − deepens it (None when DE is 0)
    share_ci: tuple[float, float] | None  # 95% interval of the share (the spread of the part and of DE)
    head: HeadRef | None  # the head, for a paired ablation (None for an MLP)

    @property
    def word(self) -> str:
        return "compensation" if (self.share or 0.0) > 0 else "amplification"


Compensator = Mover  # the name before movers went both ways


def movers(result: PatchResult, n: int = 5, floor: float = MOVER_FLOOR) -> list[Mover]:
    """Heads (not the targets) and MLPs whose direct effect moved by at least ``floor`` of |DE|, at
    most ``n`` compensating (moving against DE) and ``n`` amplifying (with DE), each list largest
    first, compensators first."""
    targets = {(t.layer, t.head) for t in result.spec.targets}
    x = result.extras or {}
    de = float(x.get("direct_effect", 0.0))
    if abs(de) < 1e-9:
        return []
    away = 1.0 if de < 0 else -1.0  # the sign of a change that offsets DE
    n_layers = len(result.values)
    cells = [(f"L{l}H{h}", ("head", l, h), HeadRef(layer=l, head=h)) for l, row in enumerate(result.values)
             for h in range(len(row)) if (l, h) not in targets]
    cells += [(f"MLP{l}", ("mlp", l, None), None) for l in range(len(x.get("mlp_delta", [])))]
    per = x.get("per_prompt") or {}
    has_spread = result.per_prompt is not None and "mlp_delta" in per and "direct_effect" in per
    if has_spread:
        heads = torch.tensor(result.per_prompt, dtype=torch.float64).reshape(len(result.per_prompt), -1)
        mlps = torch.tensor(per["mlp_delta"], dtype=torch.float64)
        changes = torch.cat([heads, mlps], dim=1)  # [prompts, heads + mlps], in ``index``'s order
        de_rows = torch.tensor(per["direct_effect"], dtype=torch.float64).reshape(-1, 1)
        _, c_low, c_high = spread(changes)
        share, s_low, s_high = ratio_spread(away * changes, (-away * de_rows).expand_as(changes))
    n_heads = len(result.values[0]) if n_layers else 0

    def index(kind: str, layer: int, head: int | None) -> int:
        return layer * n_heads + head if kind == "head" else n_layers * n_heads + layer

    out = []
    for name, (kind, layer, head), ref in cells:
        change = float(result.values[layer][head]) if kind == "head" else float(x["mlp_delta"][layer])
        i = index(kind, layer, head)
        out.append(Mover(
            name, change,
            (float(c_low[i]), float(c_high[i])) if has_spread else None,
            away * change / abs(de),
            (float(s_low[i]), float(s_high[i])) if has_spread else None,
            ref,
        ))
    shown = [m for m in out if abs(m.share) >= floor]
    shown.sort(key=lambda m: -abs(m.change))
    return [m for m in shown if m.share > 0][:n] + [m for m in shown if m.share < 0][:n]


def top_compensators(result: PatchResult, n: int = 5, floor: float = MOVER_FLOOR) -> list[Mover]:
    """The compensating movers (their direct effect moved against the targets'), largest first."""
    return [m for m in movers(result, n, floor) if m.share > 0]
